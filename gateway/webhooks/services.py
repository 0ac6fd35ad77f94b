"""Webhook services: register, verify, deliver, redeliver, delete; metering and upkeep.

The rules are in ``docs/webhooks.md``; in short, after W3C WebSub (Recommendation, 2018):

- registration (§5.1 subscriber request): a callback URL, a secret and a concrete channel
  address under one of the application's active subscriptions, checked like a WebSocket
  handshake (``gateway.auth.channel_match``);
- intent verification (§5.3): ``GET callback?hub.mode=subscribe&hub.topic=…&hub.challenge=…
  &hub.lease_seconds=…``; active only if the answer is 2xx with the challenge as its body;
- content distribution (§7): each event's frame POSTed with ``X-Hub-Signature: sha256=<HMAC-SHA256
  of the raw body with the subscriber's secret>`` and ``Link`` headers (``rel="hub"``,
  ``rel="self"``); non-2xx answers and errors retry with exponential backoff, then dead-letter.

The subscription's business plan limits webhooks as it limits connections: at most
``max_webhook_subscriptions`` webhooks per subscription (``webhook_limit_refusal``), and each
delivery is counted in the same throttling counters as WebSocket and SSE events
(``delivery_throttle``); a throttled delivery is not sent, and the next POST says how many were
(``Eventgate-Throttled``).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import math
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Greatest
from django.utils import timezone

from analytics.models import LATENCY_BOUNDS_US
from analytics.services import (
    CountRow,
    LatencyRow,
    UsageRow,
    latency_record_batch,
    throttled_record_batch,
    usage_counts_batch,
    usage_record_batch,
)
from analytics.webhooks import WebhookRow, webhook_record_batch
from gateway.auth import channel_match, quota_refusals
from gateway.metering import latency_bucket
from gateway.models import WebhookDelivery, WebhookSubscription
from gateway.publishing import address_normalize, routing_key
from gateway.throttling import Policy, limit_reason, webhook_take
from gateway.webhooks.addresses import (
    CallbackRefused,
    CallbackResponse,
    callback_request,
    callback_resolve,
)
from portal.models import API, APIVersion, Channel, Subscription

log = logging.getLogger(__name__)

# WebSub §5.1: hub.secret "MUST be less than 200 bytes in length". Shorter than 16 characters is
# too easy to guess for an HMAC key.
SECRET_MIN_CHARACTERS = 16
SECRET_MAX_BYTES = 199
MAX_WEBHOOKS_PER_SUBSCRIPTION = 20
USER_AGENT = "Eventgate-Webhooks/1.0"
# Headers telling a callback that events were throttled since its last successful delivery.
THROTTLED_HEADER = "Eventgate-Throttled"
THROTTLED_LIMIT_HEADER = "Eventgate-Throttled-Limit"
# Part of the callback's answer shown when verification fails.
_PREVIEW_CHARACTERS = 60


# --- URLs and signature ---------------------------------------------------------------------


def webhook_hub_url() -> str:
    """The hub's URL (WebSub §7 ``Link: <…>; rel="hub"``): the webhook REST endpoint."""
    return f"{settings.EVENTGATE_PUBLIC_URL.rstrip('/')}/api/v1/webhooks/"


def webhook_topic_url(webhook: WebhookSubscription) -> str:
    """The topic URL (WebSub ``hub.topic`` and ``Link: <…>; rel="self"``): the channel's
    Server-Sent Events URL, ``<public URL>/sse/<api>/<version>/<address>``, which carries the
    same events."""
    api_slug = webhook.subscription.api.slug
    version = webhook.api_version.version
    return (
        f"{settings.EVENTGATE_PUBLIC_URL.rstrip('/')}/sse/{quote(api_slug)}/{quote(version)}/"
        f"{quote(webhook.address, safe='/')}"
    )


def webhook_signature(*, secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature`` value of ``body``: ``sha256=`` + hex HMAC-SHA256 keyed with the
    UTF-8 ``secret`` (WebSub §7 Authenticated Content Distribution)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- registration -----------------------------------------------------------------------------


def _secret_errors(secret: str) -> list[str]:
    if not secret:
        return ["Give a secret: every delivery is signed with it."]
    if len(secret) < SECRET_MIN_CHARACTERS:
        return [f"The secret must be at least {SECRET_MIN_CHARACTERS} characters long."]
    if len(secret.encode()) > SECRET_MAX_BYTES:
        size = len(secret.encode())
        return [f"The secret must be less than 200 bytes (UTF-8) long (WebSub §5.1); it has {size}."]
    if any(ord(char) < 32 or ord(char) == 127 for char in secret):
        return ["The secret must not contain control characters."]
    return []


def _webhook_version(subscription: Subscription, version: str | None) -> APIVersion:
    api = subscription.api
    if not version:
        latest = api.latest_version()
        if latest is None:
            raise ValidationError({"version": f"{api.name} has no published version."})
        return latest
    if "\x00" in version:
        raise ValidationError({"version": "The version contains a NUL character."})
    api_version = api.versions.filter(version=version, status__in=APIVersion.LIVE_STATUSES).first()
    if api_version is None:
        live = ", ".join(
            api.versions.filter(status__in=APIVersion.LIVE_STATUSES).values_list("version", flat=True)
        )
        raise ValidationError(
            {"version": f"{api.name} has no published version {version!r} (published: {live or 'none'})."}
        )
    return api_version


def _webhook_channel(api_version: APIVersion, address: str) -> tuple[str, str, Channel]:
    """``(normalised address, routing key, channel)`` or ``ValidationError`` on ``channel``."""
    api = api_version.api
    address = address_normalize(address.strip())
    if not address:
        raise ValidationError({"channel": "Give a concrete channel address, e.g. prices/ACME."})
    if "\x00" in address or any(char in address for char in "{}"):
        raise ValidationError(
            {"channel": "Fill in the channel's parameters: give a concrete address such as prices/ACME."}
        )
    try:
        key = routing_key(api=api.slug, version=api_version.version, address=address)
    except ValueError:
        raise ValidationError(
            {"channel": "The channel address is too long (routing keys hold 255 bytes)."}
        ) from None
    channels = list(api_version.channels.prefetch_related("operations"))
    try:
        channel = channel_match(channels, address)
    except TimeoutError:
        raise ValidationError(
            {"channel": "The channel address took too long to match against the API's channels."}
        ) from None
    if channel is None:
        receivable = ", ".join(c.address for c in channels if c.can_receive) or "none"
        raise ValidationError(
            {
                "channel": f"{address!r} is not a channel you can receive events from in {api.name} "
                f"{api_version.version}: no channel matches it with valid parameter values "
                f"(receivable channels: {receivable})."
            }
        )
    return address, key, channel


def webhook_limit(subscription: Subscription) -> int:
    """How many webhooks ``subscription`` may have (not deleted): its business plan's
    ``max_webhook_subscriptions``, at most ``MAX_WEBHOOKS_PER_SUBSCRIPTION`` (the installation's
    cap, also for plans without a limit)."""
    limit = subscription.plan.max_webhook_subscriptions
    return MAX_WEBHOOKS_PER_SUBSCRIPTION if limit is None else min(limit, MAX_WEBHOOKS_PER_SUBSCRIPTION)


def webhook_limit_refusal(subscription: Subscription, count: int) -> str | None:
    """Why ``subscription``, which has ``count`` webhooks that are not deleted (pending, active
    or failed: a failed one can be verified again), may not register another, or None.

    The plan's ``max_webhook_subscriptions`` (``portal.models.BusinessPlan``; docs/webhooks.md),
    e.g. ``"Plan 'Free' allows 2 webhooks per subscription, and the subscription to Ticker has
    2 already: delete one to register another."``, or the installation's
    ``MAX_WEBHOOKS_PER_SUBSCRIPTION``.
    """
    limit = webhook_limit(subscription)
    if count < limit:
        return None
    plan = subscription.plan
    api = subscription.api
    if plan.max_webhook_subscriptions is not None and plan.max_webhook_subscriptions <= limit:
        noun = "webhook" if limit == 1 else "webhooks"
        return (
            f"Plan {plan.name!r} allows {limit:,} {noun} per subscription, and the subscription "
            f"to {api.name} has {count:,} already: delete one to register another."
        )
    return (
        f"The subscription to {api.name} has {MAX_WEBHOOKS_PER_SUBSCRIPTION} webhooks already; "
        "delete one first."
    )


def webhook_register(
    *, subscription: Subscription, address: str, callback_url: str, secret: str, version: str | None = None
) -> WebhookSubscription:
    """Register a webhook (WebSub §5.1) and queue its intent verification (§5.3).

    ``address`` is a concrete channel address (``prices/ACME``) of ``version`` (default: the
    API's newest published or deprecated version); it must match a channel with a receive
    operation and valid parameter values, as a WebSocket handshake would. ``secret``: at least
    16 characters, under 200 bytes. ``callback_url``: see ``gateway.webhooks.addresses``
    (resolved here, so this may wait for DNS). Returns the webhook in state ``pending``; the
    verification task runs once the transaction commits.

    Raises ``ValidationError`` with field errors on ``subscription`` (not active, API not
    served, too many webhooks: ``webhook_limit_refusal``), ``version``, ``channel``,
    ``callback_url`` (policy, duplicate) and ``secret``; several fields at once where they are
    independent. The duplicate and limit checks and the insert run in one transaction holding
    the subscription's row lock (``SELECT … FOR UPDATE``), so concurrent registrations cannot
    exceed the limit together.
    """
    api = subscription.api
    if subscription.status != Subscription.Status.ACTIVE:
        raise ValidationError(
            {
                "subscription": f"The subscription to {api.name} is "
                f"{subscription.get_status_display().lower()}: webhooks need an active subscription."
            }
        )
    if api.status not in API.CONNECTABLE_STATUSES:
        raise ValidationError({"subscription": f"{api.name} is {api.get_status_display().lower()}."})
    errors: dict[str, list[str]] = {}
    api_version = None
    try:
        api_version = _webhook_version(subscription, version)
        address, key, channel = _webhook_channel(api_version, address)
    except ValidationError as error:
        errors.update(error.message_dict)
    if secret_errors := _secret_errors(secret):
        errors["secret"] = secret_errors
    callback_url = callback_url.strip()
    try:
        callback_resolve(callback_url)
    except CallbackRefused as refused:
        errors["callback_url"] = [str(refused)]
    if errors:
        raise ValidationError(errors)
    assert api_version is not None
    with transaction.atomic():
        # The subscription's row is the lock of its webhook count: of two registrations at once,
        # the second waits here until the first commits, then counts its webhook.
        locked = (
            Subscription.objects.select_for_update(of=("self",))
            .select_related("plan", "api")
            .get(pk=subscription.pk)
        )
        existing = WebhookSubscription.objects.visible().filter(subscription=locked)
        duplicate = existing.filter(
            address=address, callback_url=callback_url, api_version=api_version
        ).first()
        if duplicate is not None:
            raise ValidationError(
                {
                    "callback_url": f"This callback is already registered for {address} "
                    f"(webhook {duplicate.pk})."
                }
            )
        if refusal := webhook_limit_refusal(locked, existing.count()):
            raise ValidationError({"subscription": refusal})
        webhook = WebhookSubscription.objects.create(
            subscription=subscription,
            api_version=api_version,
            channel=channel,
            address=address,
            routing_key=key,
            callback_url=callback_url,
            secret=secret,
            lease_seconds=settings.WEBHOOK_LEASE_SECONDS,
            verification_requested_at=timezone.now(),
        )
        _enqueue_verification(webhook.pk)
    log.info(
        "Webhook %s registered for %s %s (subscription %s)", webhook.pk, api.slug, address, subscription.pk
    )
    return webhook


def webhook_verify_again(*, webhook: WebhookSubscription) -> WebhookSubscription:
    """Queue intent verification again (after a failure, or to re-check an active callback).

    A failed webhook goes back to ``pending`` until the answer comes; an active one stays active
    (and keeps receiving) meanwhile. Raises ``ValidationError`` for a deleted webhook.
    """
    if webhook.status == WebhookSubscription.Status.DELETED:
        raise ValidationError("This webhook is deleted; register a new one.")
    with transaction.atomic():
        webhooks = WebhookSubscription.objects.filter(pk=webhook.pk)
        webhooks.update(verification_requested_at=timezone.now())
        webhooks.filter(status=WebhookSubscription.Status.FAILED).update(
            status=WebhookSubscription.Status.PENDING, status_reason=""
        )
        _enqueue_verification(webhook.pk)
    webhook.refresh_from_db()
    return webhook


def webhook_delete(*, webhook: WebhookSubscription) -> WebhookSubscription:
    """Delete a webhook: no more deliveries (queued ones are cancelled before sending), the
    secret is erased, the delivery log is kept. Deleting twice is harmless."""
    now = timezone.now()
    with transaction.atomic():
        WebhookSubscription.objects.filter(pk=webhook.pk).exclude(
            status=WebhookSubscription.Status.DELETED
        ).update(status=WebhookSubscription.Status.DELETED, secret="", deleted_at=now, lease_expires_at=None)
        webhook.deliveries.filter(status__in=WebhookDelivery.CLAIMABLE).update(
            status=WebhookDelivery.Status.CANCELLED,
            last_error="the webhook was deleted",
            next_attempt_at=None,
        )
    webhook.refresh_from_db()
    log.info("Webhook %s deleted", webhook.pk)
    return webhook


def _enqueue_verification(webhook_id: int) -> None:
    from gateway.tasks import webhook_verify_task

    transaction.on_commit(lambda: webhook_verify_task.delay(webhook_id))


def _enqueue_delivery(delivery_id: uuid.UUID | str) -> None:
    from gateway.tasks import webhook_deliver_task

    webhook_deliver_task.delay(str(delivery_id))


# --- intent verification (WebSub §5.3) ---------------------------------------------------------


def _preview(body: bytes) -> str:
    text = body[: _PREVIEW_CHARACTERS * 4].decode("utf-8", "replace")
    return repr(text[:_PREVIEW_CHARACTERS] + ("…" if len(text) > _PREVIEW_CHARACTERS else ""))


def _verification_failure(response: CallbackResponse, challenge: str) -> str | None:
    """Why ``response`` does not confirm intent, or None if it does (2xx, body == challenge)."""
    if 300 <= response.status < 400:
        return (
            f"The callback answered a redirect (HTTP {response.status}); Eventgate does not follow "
            "redirects: register the final URL."
        )
    if not 200 <= response.status < 300:
        return f"The callback answered HTTP {response.status} {response.reason} to the verification request."
    if response.body != challenge.encode():
        return (
            f"The callback answered HTTP {response.status}, but its body was {_preview(response.body)} "
            "instead of the hub.challenge value: answer with exactly the challenge, nothing else."
        )
    return None


def webhook_verify(*, webhook_id: int) -> WebhookSubscription | None:
    """Verify intent once (WebSub §5.3): ``GET`` the callback with ``hub.mode=subscribe``,
    ``hub.topic``, a fresh random ``hub.challenge`` and ``hub.lease_seconds`` added to its query.

    2xx with a body equal to the challenge: ``active``, the lease starts (``lease_expires_at``).
    Anything else (refused address, DNS, connection error, timeout after ``WEBHOOK_TIMEOUT``
    seconds, redirect, non-2xx, another body): ``failed`` with the reason in ``status_reason``.
    Returns the webhook, or None if it does not exist or was deleted meanwhile.
    """
    webhook = (
        WebhookSubscription.objects.select_related("subscription__api", "api_version")
        .visible()
        .filter(pk=webhook_id)
        .first()
    )
    if webhook is None:
        return None
    challenge = secrets.token_urlsafe(32)
    timeout = settings.WEBHOOK_TIMEOUT
    query = urlencode(
        {
            "hub.mode": "subscribe",
            "hub.topic": webhook_topic_url(webhook),
            "hub.challenge": challenge,
            "hub.lease_seconds": str(webhook.lease_seconds),
        }
    )
    reason: str | None
    try:
        target = callback_resolve(webhook.callback_url)
        path = target.path + ("&" if "?" in target.path else "?") + query
        headers = {"User-Agent": USER_AGENT, "Accept": "text/plain, */*"}
        response = callback_request(
            target, method="GET", path=path, headers=headers, body=None, timeout=timeout
        )
    except CallbackRefused as refused:
        reason = str(refused)
    except TimeoutError:
        reason = f"The callback did not answer within {timeout:g} seconds."
    except (OSError, http.client.HTTPException) as exc:
        reason = f"The callback could not be reached: {exc or type(exc).__name__}."
    else:
        reason = _verification_failure(response, challenge)
    now = timezone.now()
    still_there = WebhookSubscription.objects.visible().filter(pk=webhook.pk)
    if reason is None:
        still_there.update(
            status=WebhookSubscription.Status.ACTIVE,
            status_reason="",
            verified_at=now,
            lease_expires_at=now + timedelta(seconds=webhook.lease_seconds),
        )
        log.info("Webhook %s verified", webhook.pk)
    else:
        still_there.update(
            status=WebhookSubscription.Status.FAILED, status_reason=reason, lease_expires_at=None
        )
        log.info("Webhook %s failed verification: %s", webhook.pk, reason)
    return still_there.first()


# --- delivery (WebSub §7) -----------------------------------------------------------------------


def delivery_refusal(webhook: WebhookSubscription, *, quota: bool = True) -> str | None:
    """Why events must not be delivered to ``webhook`` now, or None.

    ``deliverable()``'s rule (webhook active, subscription active, owner active, API and version
    served) and, with ``quota``, the subscription's business plan quota: once the plan's
    ``quota_events`` or ``quota_bytes`` for this calendar month is used up, events are not
    delivered, as WebSocket and SSE handshakes are refused with 4429 (the gateway's own rule,
    ``gateway.auth.quota_refusals``; one query when the plan has a quota).

    ``webhook`` needs ``subscription__api``, ``subscription__plan``,
    ``subscription__application__owner`` and ``api_version`` loaded (``select_related``) to
    avoid extra queries.
    """
    subscription = webhook.subscription
    api = subscription.api
    if webhook.status != WebhookSubscription.Status.ACTIVE:
        return f"the webhook is {webhook.get_status_display().lower()}"
    if subscription.status != Subscription.Status.ACTIVE:
        return f"the subscription is {subscription.get_status_display().lower()}"
    if not subscription.application.owner.is_active:
        return "the application's owner account is deactivated"
    if api.status not in API.CONNECTABLE_STATUSES:
        return f"{api.name} is {api.get_status_display().lower()}"
    if webhook.api_version.status not in APIVersion.LIVE_STATUSES:
        return f"version {webhook.api_version.version} is {webhook.api_version.get_status_display().lower()}"
    if quota:
        return quota_refusal(subscription)
    return None


def quota_refusal(subscription: Subscription) -> str | None:
    """Why ``subscription``'s events quota (or bytes quota) stops deliveries this calendar month
    (UTC), e.g. ``"the events quota of plan 'Free' is used up this month (3 events)"``, or None.

    The gateway's rule (``gateway.auth.quota_refusals``, the 4429 of WebSocket and SSE
    handshakes): usage is what was metered (both directions) since the month started.
    """
    refused = quota_refusals({subscription.pk: subscription.plan}).get(subscription.pk)
    return None if refused is None else _quota_text(refused.reason)


def _quota_text(reason: str) -> str:
    # "events quota of plan 'Free' used up this month (3 events)" -> a sentence for the log
    return f"the {reason.replace(' used up ', ' is used up ', 1)}"


_DELIVERY_RELATED = (
    "webhook__subscription__api",
    "webhook__subscription__plan",
    "webhook__subscription__application__owner",
    "webhook__api_version",
)


def _header_text(value: str) -> str:
    """``value`` as an HTTP header value: printable ASCII kept, anything else percent-encoded."""
    if value.isascii() and value.isprintable():
        return value
    return quote(value, safe="")


def delivery_headers(*, delivery: WebhookDelivery, body: bytes, attempt: int) -> dict[str, str]:
    """The headers of one delivery POST (WebSub §7, plus Eventgate's ids). While the webhook's
    ``throttled_count`` is above 0 (events of it throttled since its last successful delivery),
    ``Eventgate-Throttled: <that count>`` and ``Eventgate-Throttled-Limit: <kind of the latest
    limit>`` too (docs/webhooks.md, *Throttling*)."""
    webhook = delivery.webhook
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Hub-Signature": webhook_signature(secret=webhook.secret, body=body),
        "X-Eventgate-Event-Id": _header_text(delivery.event_id),
        "X-Eventgate-Delivery-Id": str(delivery.pk),
        "X-Eventgate-Attempt": str(attempt),
        "Link": f'<{webhook_hub_url()}>; rel="hub", <{webhook_topic_url(webhook)}>; rel="self"',
    }
    if webhook.throttled_count > 0:
        headers[THROTTLED_HEADER] = str(webhook.throttled_count)
        headers[THROTTLED_LIMIT_HEADER] = webhook.throttled_limit or "rate"
    return headers


def delivery_throttle(delivery: WebhookDelivery) -> tuple[Policy, str] | None:
    """Count ``delivery`` against its subscription's throttling policy (the business plan), in
    the same Redis counters as the subscription's WebSocket and SSE events
    (``gateway.throttling.webhook_take``: one event and ``delivery.size`` bytes, direction
    "out"); returns None when it may be sent, else ``(policy, kind of the limit reached)``.

    A delivery counts once, at its first attempt (``attempts == 0``): retries of a failed
    attempt do not take again. A worker that dies mid-first-attempt makes it count twice (the
    sweep's re-claim), stopping the subscription at most one event early. Plans whose limits do
    not count "out" events, or that only have quotas under ``quota_action`` "overage", never
    throttle. ``limit_notice`` "close" is treated as "notify": a webhook has no connection.
    """
    if delivery.attempts:
        return None
    policy = Policy.from_plan(delivery.webhook.subscription.plan)
    kind = webhook_take(policy, delivery.webhook.subscription_id, delivery.size)
    return None if kind is None else (policy, kind)


def _throttled_store(
    delivery: WebhookDelivery, claimed: QuerySet[WebhookDelivery], policy: Policy, kind: str
) -> None:
    """Finish the claimed ``delivery`` as ``throttled`` (final, unsent, the reason in
    ``last_error``), add it to the webhook's ``throttled_count`` and to the subscription's
    throttled usage of this minute (``analytics.services.throttled_record_batch``: 1 event and
    its bytes, channel template, direction "out"; never billed). Once, with the claim."""
    webhook = delivery.webhook
    now = timezone.now()
    with transaction.atomic():
        if not claimed.update(
            status=WebhookDelivery.Status.THROTTLED,
            last_error=limit_reason(policy, kind)[:500],
            next_attempt_at=None,
        ):
            return
        WebhookSubscription.objects.filter(pk=webhook.pk).update(
            throttled_count=F("throttled_count") + 1, throttled_limit=kind
        )
        template = Channel.objects.filter(pk=webhook.channel_id).values_list("address", flat=True).get()
        minute = now.replace(second=0, microsecond=0)
        throttled_record_batch(rows=[(webhook.subscription_id, minute, template, "out", 1, delivery.size)])
    log.info(
        "Webhook delivery %s throttled (%s limit of subscription %s)",
        delivery.pk,
        kind,
        webhook.subscription_id,
    )


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """One delivery attempt: the callback's status code or the error, and the latency."""

    status_code: int | None
    error: str
    latency_ms: int | None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _attempt(delivery: WebhookDelivery, attempt: int) -> AttemptResult:
    timeout = settings.WEBHOOK_TIMEOUT
    body = delivery.body.encode()
    try:
        target = callback_resolve(delivery.webhook.callback_url)
        response = callback_request(
            target,
            method="POST",
            path=target.path,
            headers=delivery_headers(delivery=delivery, body=body, attempt=attempt),
            body=body,
            timeout=timeout,
        )
    except CallbackRefused as refused:
        return AttemptResult(None, str(refused)[:500], None)
    except TimeoutError:
        return AttemptResult(None, f"timed out after {timeout:g} s", None)
    except (OSError, http.client.HTTPException) as exc:
        return AttemptResult(None, f"connection failed: {exc or type(exc).__name__}"[:500], None)
    return AttemptResult(response.status, "", response.latency_ms)


def webhook_deliver(*, delivery_id: str) -> float | None:
    """Make one attempt of delivery ``delivery_id``; return seconds until the next, or None.

    Claims the delivery first (``pending``/``retrying`` → ``sending`` with a conditional
    ``UPDATE``), so a task run twice sends once. Checks access and the plan's quota before
    sending (``delivery_refusal``): if access ended or the quota is used up, the delivery is
    ``cancelled`` unsent (final: never retried, never metered; ``last_error`` says why). Then
    the plan's throttling policy (``delivery_throttle``, first attempt only): over a limit, it
    is ``throttled`` unsent (final; ``_throttled_store``). 2xx: ``delivered`` (and the webhook's
    reported ``throttled_count`` is cleared). Otherwise, while attempts remain
    (``max_attempts``), ``retrying`` after ``WEBHOOK_RETRY_BASE_DELAY * 2 ** (attempt - 1)``
    seconds (the return value; the caller schedules the retry); else ``dead`` (a dead letter).
    Each attempt's outcome is counted in analytics in the transaction that stores it on the
    delivery (``_attempt_finish``: ``WebhookRecord``, delivery latency, dead letters as failed
    events), so once however often the task runs.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=settings.WEBHOOK_TIMEOUT + 60)
    claimable = Q(status__in=WebhookDelivery.CLAIMABLE) | Q(
        status=WebhookDelivery.Status.SENDING, claimed_at__lt=stale
    )
    if not WebhookDelivery.objects.filter(claimable, pk=delivery_id).update(
        status=WebhookDelivery.Status.SENDING, claimed_at=now
    ):
        return None
    delivery = WebhookDelivery.objects.select_related(*_DELIVERY_RELATED, "webhook__channel").get(
        pk=delivery_id
    )
    claimed = WebhookDelivery.objects.filter(
        pk=delivery.pk, status=WebhookDelivery.Status.SENDING, claimed_at=now
    )
    refusal = delivery_refusal(delivery.webhook)
    if refusal is not None:
        claimed.update(
            status=WebhookDelivery.Status.CANCELLED, last_error=refusal[:500], next_attempt_at=None
        )
        return None
    throttled = delivery_throttle(delivery)
    if throttled is not None:
        _throttled_store(delivery, claimed, *throttled)
        return None
    attempt = delivery.attempts + 1
    result = _attempt(delivery, attempt)
    done = timezone.now()
    fields = {
        "attempts": F("attempts") + 1,
        "last_attempt_at": done,
        "last_status_code": result.status_code,
        "last_error": result.error,
        "last_latency_ms": result.latency_ms,
    }
    if result.succeeded:
        _attempt_finish(
            delivery,
            claimed,
            attempt,
            result,
            done,
            status=WebhookDelivery.Status.DELIVERED,
            delivered_at=done,
            next_attempt_at=None,
            **fields,
        )
        if reported := delivery.webhook.throttled_count:
            # Told (Eventgate-Throttled): those are reported. Events throttled meanwhile stay.
            WebhookSubscription.objects.filter(pk=delivery.webhook_id).update(
                throttled_count=Greatest(F("throttled_count") - reported, 0)
            )
        return None
    if attempt >= delivery.max_attempts:
        _attempt_finish(
            delivery,
            claimed,
            attempt,
            result,
            done,
            status=WebhookDelivery.Status.DEAD,
            next_attempt_at=None,
            **fields,
        )
        log.info(
            "Webhook delivery %s is a dead letter after %d attempts (%s)",
            delivery.pk,
            attempt,
            result.error or result.status_code,
        )
        return None
    delivery.attempts = attempt
    delay = delivery.retry_delay(settings.WEBHOOK_RETRY_BASE_DELAY)
    if not _attempt_finish(
        delivery,
        claimed,
        attempt,
        result,
        done,
        status=WebhookDelivery.Status.RETRYING,
        next_attempt_at=done + delay,
        **fields,
    ):
        return None  # the claim was taken over: the worker holding it now schedules what follows
    return delay.total_seconds()


def _attempt_finish(
    delivery: WebhookDelivery,
    claimed: QuerySet[WebhookDelivery],
    attempt: int,
    result: AttemptResult,
    done: datetime,
    **update: Any,
) -> bool:
    """Store the outcome of attempt number ``attempt`` on the claimed ``delivery`` (``update``:
    the new ``status`` and fields) and, in the same transaction and only if the claim still
    held, count it in analytics; returns whether it was stored.

    Why here and not in the dispatcher's periodic batch: the delivery row keeps only its *last*
    attempt (status code, latency), so per-attempt outcomes exist only now, and the worker
    writes the row once per attempt anyway. Tying the counts to the row's transition (``UPDATE
    ... WHERE status = 'sending' AND claimed_at = <our claim>``, one row or none) makes them
    exactly once: a task run twice finds nothing to claim, and a worker whose claim was taken
    over (an attempt past ``WEBHOOK_TIMEOUT`` + 60 s, re-claimed by the sweep) updates no row
    and counts nothing. Written (``_attempt_rows``): one ``WebhookRecord`` row; for a 2xx, one
    publish → delivered latency bucket (``LatencyRecord``, direction ``out``); for a dead
    letter, 1 ``UsageRecord.failed_events``. Delivered events and bytes stay with the
    dispatcher's batch (``webhook_usage_flush``), as before.
    """
    with transaction.atomic():
        if not claimed.update(**update):
            return False
        record, latency, failed = _attempt_rows(delivery, attempt, result, done, update["status"])
        webhook_record_batch(rows=[record])
        if latency is not None:
            latency_record_batch(rows=[latency])
        if failed is not None:
            usage_counts_batch(rows=[failed])
    return True


def _attempt_rows(
    delivery: WebhookDelivery, attempt: int, result: AttemptResult, done: datetime, status: str
) -> tuple[WebhookRow, LatencyRow | None, CountRow | None]:
    """The analytics rows of one finished attempt: ``(WebhookRow, LatencyRow or None, CountRow
    or None)`` (see ``_attempt_finish``), all in the minute ``done`` falls in, on the channel
    template."""
    webhook = delivery.webhook
    template = webhook.channel.address
    minute = done.astimezone(UTC).replace(second=0, microsecond=0)
    code = result.status_code
    status_class = code // 100 if code is not None and 200 <= code < 600 else 0
    delivered = status == WebhookDelivery.Status.DELIVERED
    dead = status == WebhookDelivery.Status.DEAD
    # Answers outside 200-599 (1xx as a final answer, nonsense) count as errors, like no answer.
    record: WebhookRow = (
        webhook.subscription_id,
        webhook.pk,
        minute,
        template,
        1,  # attempts
        int(delivered),
        int(attempt > 1),  # retries
        int(dead),
        int(status_class == 2),
        int(status_class == 3),
        int(status_class == 4),
        int(status_class == 5),
        int(status_class == 0),  # errors
        (result.latency_ms or 0) if status_class else 0,  # attempt_ms_total
    )
    latency: LatencyRow | None = None
    if delivered and (bound := _latency_bound_us(delivery.body, done)) is not None:
        latency = (webhook.subscription_id, minute, template, "out", bound, 1)
    failed: CountRow | None = None
    if dead:
        failed = (webhook.subscription_id, minute, template, "out", 0, 0, 0, 0, 0, 0, 1)
    return record, latency, failed


_PUBLISHED_AT = ',"published_at":'
_JSON = json.JSONDecoder()


def _latency_bound_us(frame: str, done: datetime) -> int | None:
    """The upper bound (µs, ``LATENCY_BOUNDS_US``) of the latency histogram bucket of an event
    whose ``frame`` (the delivery body) says it was published at ``published_at`` (Unix
    seconds) and which was delivered at ``done``; None when the frame has no usable timestamp
    (``null``: the publisher sent no ``eg-published-at``). A timestamp in the future (the
    publisher's clock ahead) falls in the first bucket, as for WebSocket deliveries.

    The frame starts ``{"id":<JSON string>,"channel":<JSON string>,"published_at":`` (built by
    ``gateway.bridge.frame_build``); a ``"`` inside a JSON string is escaped, so the first
    ``,"published_at":`` is that field, never text inside the id, channel or payload.
    """
    index = frame.find(_PUBLISHED_AT)
    if index < 0:
        return None
    try:
        value, _ = _JSON.raw_decode(frame, index + len(_PUBLISHED_AT))
    except ValueError:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    bucket = latency_bucket(value, done.timestamp())  # the rule WebSocket and SSE deliveries follow
    return LATENCY_BOUNDS_US[bucket] if bucket >= 0 else None


def delivery_redeliver(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a finished delivery's stored body again, as a new delivery of one attempt.

    The new delivery has its own id (``X-Eventgate-Delivery-Id``), the same event id and body,
    and ``redelivery_of`` pointing at ``delivery``; its signature uses the webhook's secret.
    Raises ``ValidationError`` while ``delivery`` is still queued or retrying, or when events
    cannot be delivered to the webhook now (``delivery_refusal``).
    """
    if not delivery.can_redeliver:
        raise ValidationError(
            f"This delivery is {delivery.get_status_display().lower()}: redeliver it once it has finished."
        )
    webhook = WebhookSubscription.objects.select_related(
        "subscription__api", "subscription__plan", "subscription__application__owner", "api_version"
    ).get(pk=delivery.webhook_id)
    refusal = delivery_refusal(webhook)
    if refusal is not None:
        raise ValidationError(f"Cannot redeliver: {refusal}.")
    with transaction.atomic():
        again = WebhookDelivery.objects.create(
            webhook=webhook,
            event_id=delivery.event_id,
            body=delivery.body,
            size=delivery.size,
            max_attempts=1,
            redelivery_of=delivery,
            next_attempt_at=timezone.now(),
        )
        transaction.on_commit(lambda: _enqueue_delivery(again.pk))
    return again


# --- the dispatcher's side ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookRoute:
    """The deliverable webhooks of one routing key, and the concrete address their frames name."""

    address: str
    webhook_ids: tuple[int, ...]


def webhook_routes() -> dict[str, WebhookRoute]:
    """Routing key → ``WebhookRoute`` of every deliverable webhook (one query)."""
    grouped: dict[str, tuple[str, list[int]]] = {}
    for key, webhook_id, address in (
        WebhookSubscription.objects.deliverable().order_by("pk").values_list("routing_key", "pk", "address")
    ):
        grouped.setdefault(key, (address, []))[1].append(webhook_id)
    return {key: WebhookRoute(address, tuple(ids)) for key, (address, ids) in grouped.items()}


@dataclass(frozen=True, slots=True)
class EventForWebhooks:
    """One event from RabbitMQ: its id, the frame to POST, the webhooks it goes to."""

    event_id: str
    frame: str
    webhook_ids: tuple[int, ...]


def webhook_deliveries_create(*, events: Iterable[EventForWebhooks]) -> int:
    """Store one delivery per (event, webhook) and queue a delivery task for each, after commit.

    One ``INSERT`` for the whole batch; an (event, webhook) pair stored before (RabbitMQ
    redelivered an event the dispatcher had not acknowledged) is skipped
    (``one_delivery_per_event_and_webhook``). A webhook whose subscription's plan quota is used
    up this month (``quota_refusal``) gets its deliveries stored as ``cancelled`` with the reason,
    and no task: they are never sent, retried or metered. Returns the number of deliveries
    created (queued or not).
    """
    events = list(events)
    now = timezone.now()
    max_attempts = max(1, settings.WEBHOOK_MAX_ATTEMPTS)
    refusals = _quota_refusals_by_webhook({webhook_id for e in events for webhook_id in e.webhook_ids})
    rows = []
    for event in events:
        size = len(event.frame.encode())
        rows.extend(
            WebhookDelivery(
                id=uuid.uuid4(),
                webhook_id=webhook_id,
                event_id=event.event_id,
                body=event.frame,
                size=size,
                max_attempts=max_attempts,
                created=now,
                **(
                    {"status": WebhookDelivery.Status.CANCELLED, "last_error": refusals[webhook_id][:500]}
                    if webhook_id in refusals
                    else {"next_attempt_at": now}
                ),
            )
            for webhook_id in event.webhook_ids
        )
    if not rows:
        return 0
    with transaction.atomic():
        WebhookDelivery.objects.bulk_create(rows, ignore_conflicts=True)
        created = list(
            WebhookDelivery.objects.filter(pk__in=[row.pk for row in rows]).values_list("pk", "status")
        )
        queued = [pk for pk, status in created if status == WebhookDelivery.Status.PENDING]
        transaction.on_commit(lambda: [_enqueue_delivery(pk) for pk in queued])
    return len(created)


def _quota_refusals_by_webhook(webhook_ids: set[int]) -> dict[int, str]:
    """Webhook id → why its subscription's plan quota stops deliveries (``quota_refusal``), for
    those of ``webhook_ids`` over quota; at most 2 queries."""
    if not webhook_ids:
        return {}
    webhooks = list(
        WebhookSubscription.objects.filter(pk__in=webhook_ids)
        .select_related("subscription__plan")
        .only("pk", "subscription__id", "subscription__plan")
    )
    refused = quota_refusals({w.subscription.pk: w.subscription.plan for w in webhooks})
    return {
        w.pk: _quota_text(refused[w.subscription.pk].reason) for w in webhooks if w.subscription.pk in refused
    }


def webhook_usage_flush(*, limit: int = 10_000) -> int:
    """Add delivered, not yet metered deliveries to usage; returns how many were metered.

    Each counts as 1 event and its body's bytes, keyed like WebSocket deliveries: (subscription,
    channel template, direction ``out``, minute of ``delivered_at``) through
    ``analytics.services.usage_record_batch``. The rows are locked (``SKIP LOCKED``, so several
    dispatchers never count one twice), summed, written and marked ``metered`` in one
    transaction: a crash counts them later, never twice.
    """
    with transaction.atomic():
        unmetered = (
            WebhookDelivery.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(status=WebhookDelivery.Status.DELIVERED, metered=False)
            .order_by("delivered_at")
            .values_list(
                "pk", "webhook__subscription_id", "webhook__channel__address", "delivered_at", "size"
            )[:limit]
        )
        counts: dict[tuple[int, str, int], list[int]] = {}
        ids = []
        for pk, subscription_id, template, delivered_at, size in unmetered:
            ids.append(pk)
            entry = counts.setdefault(
                (subscription_id, template, int(delivered_at.timestamp()) // 60), [0, 0]
            )
            entry[0] += 1
            entry[1] += size
        if not ids:
            return 0
        rows: list[UsageRow] = [
            (subscription_id, datetime.fromtimestamp(minute * 60, UTC), template, "out", events, size)
            for (subscription_id, template, minute), (events, size) in counts.items()
        ]
        usage_record_batch(rows=rows)
        WebhookDelivery.objects.filter(pk__in=ids).update(metered=True)
    return len(ids)


def webhook_deliveries_sweep(*, grace_seconds: float = 300.0) -> int:
    """Queue again deliveries whose task was lost; returns how many.

    Lost means: queued or retrying with ``next_attempt_at`` over ``grace_seconds`` ago (the task
    never ran: Celery or RabbitMQ lost it, or enqueueing failed after commit), or ``sending``
    for longer than ``WEBHOOK_TIMEOUT`` plus ``grace_seconds`` (the worker died mid-attempt;
    that attempt is not counted). The delivery task's claim makes a duplicate harmless.
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=grace_seconds)
    stuck_sending = now - timedelta(seconds=settings.WEBHOOK_TIMEOUT + grace_seconds)
    lost = list(
        WebhookDelivery.objects.filter(
            Q(status__in=WebhookDelivery.CLAIMABLE, next_attempt_at__lt=cutoff)
            | Q(status=WebhookDelivery.Status.SENDING, claimed_at__lt=stuck_sending)
        ).values_list("pk", flat=True)[:1000]
    )
    if not lost:
        return 0
    WebhookDelivery.objects.filter(pk__in=lost).update(
        status=WebhookDelivery.Status.RETRYING, next_attempt_at=now
    )
    for pk in lost:
        _enqueue_delivery(pk)
    log.warning("Queued %d webhook deliveries again whose task was lost", len(lost))
    return len(lost)


def webhook_leases_renew() -> int:
    """Verify again active webhooks whose lease ended (WebSub §5.3 leases; here the hub renews).

    Each is claimed by moving its ``lease_expires_at`` an hour on (so the next poll does not
    queue it twice); verification then renews the lease or marks it failed. Returns how many.
    """
    now = timezone.now()
    due = list(
        WebhookSubscription.objects.filter(
            status=WebhookSubscription.Status.ACTIVE, lease_expires_at__lte=now
        ).values_list("pk", flat=True)[:100]
    )
    renewed = 0
    for pk in due:
        claimed = WebhookSubscription.objects.filter(
            pk=pk, status=WebhookSubscription.Status.ACTIVE, lease_expires_at__lte=now
        ).update(lease_expires_at=now + timedelta(hours=1), verification_requested_at=now)
        if claimed:
            with transaction.atomic():
                _enqueue_verification(pk)
            renewed += 1
    return renewed


def webhook_deliveries_prune() -> int:
    """Delete finished deliveries older than ``WEBHOOK_DELIVERY_RETENTION_DAYS`` (metered ones
    only, so usage is never lost); returns how many, at most 10,000 per call."""
    cutoff = timezone.now() - timedelta(days=settings.WEBHOOK_DELIVERY_RETENTION_DAYS)
    old = list(
        WebhookDelivery.objects.filter(created__lt=cutoff, status__in=WebhookDelivery.FINAL)
        .exclude(status=WebhookDelivery.Status.DELIVERED, metered=False)
        .values_list("pk", flat=True)[:10_000]
    )
    if old:
        WebhookDelivery.objects.filter(pk__in=old).delete()
    return len(old)
