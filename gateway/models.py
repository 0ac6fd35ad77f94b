"""Webhook subscriptions and their deliveries (WebSub-style push of channel events).

A ``WebhookSubscription`` is a consumer's callback URL and secret for one concrete channel
address, under one of their application's subscriptions (W3C WebSub §5.1). It becomes active
only after intent verification (§5.3). Every event on its channel becomes one
``WebhookDelivery``: the frame WebSocket clients get, POSTed to the callback and signed with
the subscriber's secret (§7, ``X-Hub-Signature``). See ``docs/webhooks.md``.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from urllib.parse import urlsplit

from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from portal.models import API, APIVersion, Channel, Subscription


class WebhookSubscriptionQuerySet(models.QuerySet["WebhookSubscription"]):
    def visible(self) -> WebhookSubscriptionQuerySet:
        """Those not deleted (what lists show)."""
        return self.exclude(status=WebhookSubscription.Status.DELETED)

    def owned_by(self, user: object) -> WebhookSubscriptionQuerySet:
        """Webhooks of ``user``'s applications."""
        return self.filter(subscription__application__owner=user)

    def deliverable(self) -> WebhookSubscriptionQuerySet:
        """Webhooks events are delivered to: verified (active), under an active subscription of
        an active user, to a live version of a connectable API (the same rule as a WebSocket
        handshake; ``API.CONNECTABLE_STATUSES``, ``APIVersion.LIVE_STATUSES``)."""
        return self.filter(
            status=WebhookSubscription.Status.ACTIVE,
            subscription__status=Subscription.Status.ACTIVE,
            subscription__application__owner__is_active=True,
            subscription__api__status__in=API.CONNECTABLE_STATUSES,
            api_version__status__in=APIVersion.LIVE_STATUSES,
        )


class WebhookSubscription(models.Model):
    """A callback URL registered for one concrete channel address of a subscribed API.

    States: ``pending`` (intent verification queued or running) → ``active`` (verified: events
    are delivered) or ``failed`` (``status_reason`` says why; the consumer can verify again);
    ``deleted`` by the consumer (final; the secret is erased, the delivery log kept).
    A subscription has at most its plan's ``max_webhook_subscriptions`` webhooks that are not
    deleted (``gateway.webhooks.services.webhook_register``). ``throttled_count`` events of this
    webhook were throttled by the plan (``throttled_limit`` the latest kind) since its last
    successful delivery: the next delivery POST reports them (``Eventgate-Throttled``).
    ``secret`` is the subscriber's HMAC key (WebSub §5.1 ``hub.secret``, under 200 bytes): kept
    because signing needs it, never shown again, logged or serialized.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending verification"
        ACTIVE = "active", "Active"
        FAILED = "failed", "Verification failed"
        DELETED = "deleted", "Deleted"

    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="webhooks")
    api_version = models.ForeignKey(APIVersion, on_delete=models.CASCADE, related_name="+")
    channel = models.ForeignKey(
        Channel, on_delete=models.CASCADE, related_name="+", help_text="The matched channel template."
    )
    address = models.CharField(max_length=1000, help_text="Concrete channel address, e.g. prices/ACME.")
    routing_key = models.CharField(max_length=255, db_index=True)
    callback_url = models.CharField(max_length=2000)
    secret = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    status_reason = models.TextField(blank=True, help_text="Why verification failed, shown to the consumer.")
    lease_seconds = models.PositiveIntegerField(help_text="hub.lease_seconds sent at verification.")
    lease_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="When Eventgate verifies the callback again (lease renewal)."
    )
    created = models.DateTimeField(default=timezone.now)
    verification_requested_at = models.DateTimeField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    throttled_count = models.PositiveIntegerField(
        default=0,
        help_text="Events throttled since the last successful delivery; sent (Eventgate-Throttled) with "
        "the next delivery POST and cleared once one succeeds.",
    )
    throttled_limit = models.CharField(
        max_length=16,
        blank=True,
        help_text="The limit that throttled the latest of them (rate, burst, quota, bytes, unavailable).",
    )

    objects = WebhookSubscriptionQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        verbose_name = "webhook subscription"

    def __str__(self) -> str:
        return f"{self.address} → {self.callback_url}"

    def __repr__(self) -> str:  # never the secret
        return f"<WebhookSubscription {self.pk} {self.status} {self.address}>"

    def get_absolute_url(self) -> str:
        return reverse("portal:webhook_detail", args=[self.subscription.application_id, self.pk])

    @property
    def status_color(self) -> str:
        """Bootstrap colour of the status badge."""
        return {"active": "success", "pending": "warning", "failed": "danger"}.get(self.status, "secondary")

    @property
    def callback_host(self) -> str:
        """``host[:port]`` of the callback URL, for lists."""
        return urlsplit(self.callback_url).netloc


class WebhookDeliveryQuerySet(models.QuerySet["WebhookDelivery"]):
    def dead_letters(self) -> WebhookDeliveryQuerySet:
        return self.filter(status=WebhookDelivery.Status.DEAD)


class WebhookDelivery(models.Model):
    """One event (or a redelivery of one) POSTed to one webhook subscription's callback.

    ``id`` (a UUID) is the delivery id sent in ``X-Eventgate-Delivery``; ``body`` is the exact
    JSON frame sent (and signed), ``size`` its length in bytes. States: ``pending`` (task queued)
    → ``sending`` (an attempt in flight) → ``delivered`` (2xx), or ``retrying`` (non-2xx or
    error; the next attempt at ``next_attempt_at``) and, after ``max_attempts``, ``dead``
    (a dead letter); ``cancelled`` when access ended before it could be sent (subscription no
    longer active, API blocked or retired, webhook deleted, quota used up); ``throttled`` when
    the plan's rate limit or quota stopped it (``gateway.throttling.webhook_take``): never sent,
    never retried, counted as throttled (``UsageRecord.throttled_events``), never metered or
    billed. ``metered`` is set once the delivered event was added to usage
    (``gateway.webhooks.services.webhook_usage_flush``).
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Queued"
        SENDING = "sending", "Sending"
        RETRYING = "retrying", "Retry scheduled"
        DELIVERED = "delivered", "Delivered"
        DEAD = "dead", "Dead letter"
        CANCELLED = "cancelled", "Not sent"
        THROTTLED = "throttled", "Throttled"

    # States a delivery task may claim for an attempt.
    CLAIMABLE = (Status.PENDING, Status.RETRYING)
    FINAL = (Status.DELIVERED, Status.DEAD, Status.CANCELLED, Status.THROTTLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    webhook = models.ForeignKey(WebhookSubscription, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.CharField(max_length=255)
    body = models.TextField()
    size = models.PositiveIntegerField(help_text="Bytes of the body (UTF-8).")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField()
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    last_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    redelivery_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="redeliveries"
    )
    metered = models.BooleanField(default=False)

    objects = WebhookDeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            # An event redelivered by RabbitMQ (dispatcher crash before its ack) is stored once.
            models.UniqueConstraint(
                fields=["webhook", "event_id"],
                condition=Q(redelivery_of__isnull=True),
                name="one_delivery_per_event_and_webhook",
            )
        ]
        indexes = [
            models.Index(fields=["webhook", "-created"], name="webhook_delivery_log"),
            models.Index(
                fields=["delivered_at"],
                condition=Q(status="delivered", metered=False),
                name="webhook_delivery_unmetered",
            ),
            models.Index(
                fields=["status", "next_attempt_at"],
                condition=Q(status__in=["pending", "sending", "retrying"]),
                name="webhook_delivery_open",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_id} → webhook {self.webhook_id} ({self.status})"

    @property
    def outcome(self) -> str:
        """The last attempt in a few words: ``HTTP 500``, the error, or ``—``."""
        if self.last_error:
            return self.last_error
        if self.last_status_code is not None:
            return f"HTTP {self.last_status_code}"
        return "—"

    @property
    def status_color(self) -> str:
        """Bootstrap colour of the status badge."""
        return {
            "delivered": "success",
            "pending": "info",
            "sending": "info",
            "retrying": "warning",
            "throttled": "warning",
            "dead": "danger",
        }.get(self.status, "secondary")

    @property
    def can_redeliver(self) -> bool:
        return self.status in self.FINAL

    def retry_delay(self, base_seconds: float) -> timedelta:
        """Exponential backoff after attempt number ``self.attempts`` (1-based):
        ``base_seconds * 2 ** (attempts - 1)``."""
        return timedelta(seconds=base_seconds * 2 ** max(self.attempts - 1, 0))
