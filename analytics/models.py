"""Analytics storage: usage counts per subscription, channel, direction and time bucket, latency
histograms, the connection log and the handshake log.

The gateway counts in memory and flushes in batches (``analytics.services``). Usage is kept at
three resolutions: per minute (``UsageRecord``, what the gateway writes), per hour
(``UsageHourly``) and per day (``UsageDaily``), the latter two rolled up by Celery
(``analytics.tasks``) and each kept for its own retention (``ANALYTICS_RETENTION_*``). Every
reader — dashboards, CSV, REST, throttling's quota seeding, billing — goes through
``analytics.queries``, which picks the coarsest complete rows for each part of a time range, so
what a consumer is billed for is what their dashboard shows for the same period.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.db import models

# Upper bounds (seconds) of the publish → deliver latency histogram's buckets, after which one
# open bucket (+Inf) follows. A 1-1.5-2-3-5-7.5 series: percentiles are exact to within one
# bucket (at worst a factor of 1.5 between a bucket's bounds). Stored as microseconds
# (``LatencyRecord.le_us``) so the rows stay integers; the +Inf bucket is ``LATENCY_INF_US``.
LATENCY_BOUNDS_SECONDS: tuple[float, ...] = (
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0,
)  # fmt: skip
LATENCY_INF_US = 2**62
LATENCY_BOUNDS_US: tuple[int, ...] = (
    *(round(bound * 1_000_000) for bound in LATENCY_BOUNDS_SECONDS),
    LATENCY_INF_US,
)


class Direction(models.TextChoices):
    """Which way an event went, seen from the subscriber (AsyncAPI 3 ``receive``/``send``)."""

    OUT = "out", "Server → client"
    IN = "in", "Client → server"


class UsageCounts(models.Model):
    """Counts for one subscription, channel template and direction in one time bucket.

    ``events``/``bytes`` are what was delivered (out) or accepted and published (in): what
    quotas count and billing charges. The others were *not* delivered and are never billed:
    ``throttled_*`` stopped by the business plan's throttling policy; ``dropped_events`` skipped
    for a slow consumer (full outbox); ``rejected_events`` refused by the gateway (too large, not
    valid for the channel's message schema, outside the credential's scopes); ``failed_events``
    the gateway could not hand on (send or broker publish failed, a webhook delivery gave up).
    """

    Direction = Direction

    subscription = models.ForeignKey("portal.Subscription", on_delete=models.CASCADE, related_name="+")
    bucket_start = models.DateTimeField(help_text="Start (UTC) of the minute, hour or day this row counts.")
    channel = models.CharField(max_length=1000, help_text="Channel address template, not the raw path.")
    direction = models.CharField(max_length=3, choices=Direction.choices, default=Direction.OUT)
    events = models.PositiveBigIntegerField(default=0)
    bytes = models.PositiveBigIntegerField(default=0)
    throttled_events = models.PositiveBigIntegerField(
        default=0, help_text="Events the plan's throttling policy stopped: not delivered, never billed."
    )
    throttled_bytes = models.PositiveBigIntegerField(default=0)
    dropped_events = models.PositiveBigIntegerField(
        default=0, help_text="Events skipped for a slow consumer (outbox full): not delivered, never billed."
    )
    rejected_events = models.PositiveBigIntegerField(
        default=0, help_text="Events refused for size, schema or scope: not delivered, never billed."
    )
    failed_events = models.PositiveBigIntegerField(
        default=0, help_text="Events the gateway could not hand on (send, publish or webhook failed)."
    )

    # The count columns, in the order the gateway's flush rows carry them (analytics.services).
    COUNT_FIELDS = (
        "events",
        "bytes",
        "throttled_events",
        "throttled_bytes",
        "dropped_events",
        "rejected_events",
        "failed_events",
    )

    class Meta:
        abstract = True
        ordering = ["-bucket_start"]

    def __str__(self) -> str:
        return (
            f"{self.subscription_id} {self.bucket_start:%Y-%m-%d %H:%M} {self.channel} {self.direction} "
            f"{self.events} events"
        )


class UsageRecord(UsageCounts):
    """Per-minute usage, as the gateway flushes it (kept ``ANALYTICS_RETENTION_MINUTE_DAYS``)."""

    subscription = models.ForeignKey(
        "portal.Subscription", on_delete=models.CASCADE, related_name="usage_records"
    )

    class Meta(UsageCounts.Meta):
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "bucket_start", "channel", "direction"], name="unique_usage_bucket"
            )
        ]
        indexes = [
            models.Index(fields=["subscription", "bucket_start"]),
            models.Index(fields=["bucket_start"]),
        ]


class UsageHourly(UsageCounts):
    """Per-hour sums of ``UsageRecord`` (rolled up by ``analytics.tasks``; kept
    ``ANALYTICS_RETENTION_HOUR_DAYS``)."""

    class Meta(UsageCounts.Meta):
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "bucket_start", "channel", "direction"], name="unique_usage_hour"
            )
        ]
        indexes = [
            models.Index(fields=["subscription", "bucket_start"]),
            models.Index(fields=["bucket_start"]),
        ]


class UsageDaily(UsageCounts):
    """Per-day (UTC) sums of ``UsageHourly`` (rolled up by ``analytics.tasks``; kept
    ``ANALYTICS_RETENTION_DAY_DAYS``, by default for ever: billing periods are whole days)."""

    class Meta(UsageCounts.Meta):
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "bucket_start", "channel", "direction"], name="unique_usage_day"
            )
        ]
        indexes = [
            models.Index(fields=["subscription", "bucket_start"]),
            models.Index(fields=["bucket_start"]),
        ]


class LatencyCounts(models.Model):
    """One bucket of the publish → deliver latency histogram: ``count`` events of one
    subscription, channel template and direction in one time bucket took at most ``le_us``
    microseconds (and more than the previous bound of ``LATENCY_BOUNDS_US``). Latency is measured
    from the ``eg-published-at`` timestamp each event carries to the moment the gateway handed
    the event to the client's socket (WebSocket, SSE) or the webhook answered 2xx."""

    Direction = Direction

    subscription = models.ForeignKey("portal.Subscription", on_delete=models.CASCADE, related_name="+")
    bucket_start = models.DateTimeField()
    channel = models.CharField(max_length=1000)
    direction = models.CharField(max_length=3, choices=Direction.choices, default=Direction.OUT)
    le_us = models.PositiveBigIntegerField(help_text="Bucket's upper bound in microseconds (2**62: +Inf).")
    count = models.PositiveBigIntegerField(default=0)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.subscription_id} {self.bucket_start:%Y-%m-%d %H:%M} ≤{self.le_us} µs: {self.count}"


class LatencyRecord(LatencyCounts):  # noqa: DJ008 - __str__ inherited
    """Per-minute latency histogram buckets, as the gateway flushes them."""

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "bucket_start", "channel", "direction", "le_us"],
                name="unique_latency_minute",
            )
        ]
        indexes = [
            models.Index(fields=["subscription", "bucket_start"]),
            models.Index(fields=["bucket_start"]),
        ]


class LatencyHourly(LatencyCounts):  # noqa: DJ008 - __str__ inherited
    """Per-hour sums of ``LatencyRecord``."""

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "bucket_start", "channel", "direction", "le_us"],
                name="unique_latency_hour",
            )
        ]
        indexes = [
            models.Index(fields=["subscription", "bucket_start"]),
            models.Index(fields=["bucket_start"]),
        ]


class LatencyDaily(LatencyCounts):  # noqa: DJ008 - __str__ inherited
    """Per-day sums of ``LatencyHourly``."""

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "bucket_start", "channel", "direction", "le_us"],
                name="unique_latency_day",
            )
        ]
        indexes = [
            models.Index(fields=["subscription", "bucket_start"]),
            models.Index(fields=["bucket_start"]),
        ]


class RollupState(models.Model):
    """How far a roll-up has gone: every hour (day) that starts before ``rolled_until`` has its
    ``UsageHourly`` (``UsageDaily``) rows. ``analytics.queries`` reads coarser rows only below
    this mark."""

    resolution = models.CharField(max_length=8, primary_key=True)  # "hour" or "day"
    rolled_until = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.resolution} rolled up until {self.rolled_until:%Y-%m-%d %H:%M}"


class RollupDirty(models.Model):
    """An hour (``resolution="hour"``) or day (``"day"``) whose coarser rows must be rolled up
    again because finer rows arrived after its re-roll window had passed (``analytics.rollup``,
    "Late minute rows"). A gateway's flush marks the hours of its late minute rows, in the
    transaction that writes them (``analytics.services``); the hour roll-up re-rolls each marked
    hour and marks its day; the day roll-up re-rolls each marked day. Each deletes the marks it
    handled, in its own transaction."""

    resolution = models.CharField(max_length=8)  # "hour" or "day"
    bucket_start = models.DateTimeField(help_text="Start (UTC) of the hour or day to roll up again.")
    marked_at = models.DateTimeField(help_text="When it was last marked.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["resolution", "bucket_start"], name="unique_rollup_dirty")
        ]

    def __str__(self) -> str:
        return f"{self.resolution} {self.bucket_start:%Y-%m-%d %H:%M} to roll up again"

    @classmethod
    def mark(cls, *, resolution: str, buckets: Iterable[datetime], at: datetime) -> int:
        """Mark ``buckets`` (starts of hours or days, UTC) of ``resolution`` dirty, in the
        caller's transaction; returns how many. An existing mark is *updated* (``marked_at``),
        not skipped: the update locks its row until the caller commits, so a roll-up that is
        about to delete that mark waits and then reads the caller's rows (an insert that did
        nothing on conflict would take no lock, and the roll-up could delete the mark while
        missing the rows). Buckets are written in time order, so concurrent flushes lock the
        rows in the same order."""
        rows = [
            cls(resolution=resolution, bucket_start=bucket, marked_at=at) for bucket in sorted(set(buckets))
        ]
        if rows:
            cls.objects.bulk_create(
                rows,
                update_conflicts=True,
                unique_fields=["resolution", "bucket_start"],
                update_fields=["marked_at"],
            )
        return len(rows)


class ConnectionRecord(models.Model):
    """One WebSocket or SSE connection's life, written (in a batch) when it ends: who, where
    from, for how long, and what went through it. Connections open now are in
    ``analytics.live`` (each gateway process's snapshot), not here; a gateway process that is
    killed loses the records of the connections it had open (docs/analytics.md)."""

    class Protocol(models.TextChoices):
        WEBSOCKET = "websocket", "WebSocket"
        SSE = "sse", "Server-Sent Events"

    subscription = models.ForeignKey(
        "portal.Subscription", on_delete=models.CASCADE, related_name="connection_records"
    )
    application = models.ForeignKey("portal.Application", on_delete=models.CASCADE, related_name="+")
    api = models.ForeignKey("portal.API", on_delete=models.CASCADE, related_name="+")
    version = models.CharField(max_length=64)
    protocol = models.CharField(max_length=16, choices=Protocol.choices)
    channels = models.CharField(
        max_length=1000,
        blank=True,
        help_text="Channel templates served, comma-separated (multiplexed: several).",
    )
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    opened_at = models.DateTimeField()
    closed_at = models.DateTimeField()
    duration_seconds = models.FloatField()
    close_code = models.PositiveIntegerField(
        null=True, blank=True, help_text="WebSocket close code (RFC 6455 §7.4); empty when the client left."
    )
    close_reason = models.CharField(max_length=200, blank=True)
    events_out = models.PositiveBigIntegerField(default=0)
    bytes_out = models.PositiveBigIntegerField(default=0)
    events_in = models.PositiveBigIntegerField(default=0)
    bytes_in = models.PositiveBigIntegerField(default=0)
    throttled_events = models.PositiveBigIntegerField(default=0)
    dropped_events = models.PositiveBigIntegerField(default=0)
    process = models.CharField(max_length=128, blank=True, help_text="Gateway process (host:pid).")

    class Meta:
        ordering = ["-closed_at"]
        indexes = [
            models.Index(fields=["subscription", "closed_at"]),
            models.Index(fields=["api", "closed_at"]),
            models.Index(fields=["closed_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.protocol} connection of {self.subscription_id} ({self.duration_seconds:.1f} s)"


class HandshakeRecord(models.Model):
    """One WebSocket or SSE handshake and its outcome: ``accepted`` or the refusal's reason
    (``invalid_token``, ``forbidden``, ``quota_exhausted``, ...). Refusals before the
    credential was known have no application or subscription."""

    ACCEPTED = "accepted"

    at = models.DateTimeField()
    outcome = models.CharField(max_length=40)
    code = models.PositiveIntegerField(
        null=True, blank=True, help_text="HTTP status (SSE) or WebSocket close code of a refusal."
    )
    detail = models.CharField(max_length=300, blank=True)
    protocol = models.CharField(max_length=16, choices=ConnectionRecord.Protocol.choices)
    application = models.ForeignKey(
        "portal.Application", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    subscription = models.ForeignKey(
        "portal.Subscription", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    api = models.ForeignKey("portal.API", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    version = models.CharField(max_length=64, blank=True)
    channel = models.CharField(
        max_length=1000, blank=True, help_text="Channel template; empty when no channel matched."
    )
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    process = models.CharField(max_length=128, blank=True)

    class Meta:
        ordering = ["-at"]
        indexes = [
            models.Index(fields=["api", "at"]),
            models.Index(fields=["application", "at"]),
            models.Index(fields=["at"]),
        ]

    def __str__(self) -> str:
        return f"{self.protocol} handshake {self.outcome} at {self.at:%Y-%m-%d %H:%M:%S}"


class WebhookRecord(models.Model):
    """Webhook delivery attempts of one webhook (``webhook_id``) of one subscription, channel
    template and minute: how many attempts were made, how they ended, and how long they took.

    Written by the Celery worker in the transaction that records each attempt's outcome on the
    delivery (``analytics.webhooks.webhook_record_batch``), so each attempt counts exactly once.
    ``attempts`` = ``status_2xx + status_3xx + status_4xx + status_5xx + errors`` (every attempt
    gets a status class or an error: no answer, timeout, connection refused, callback address
    refused); ``retries`` the attempts after a delivery's first; ``delivered`` the deliveries
    that ended 2xx, ``dead`` those that became dead letters (after ``WEBHOOK_MAX_ATTEMPTS``).
    ``attempt_ms_total`` sums the HTTP round trips (request sent → response headers, in
    milliseconds) of the attempts that got an answer: divided by the 2xx-5xx counts it is their
    mean. The publish → delivered latency of delivered events is in ``LatencyRecord`` (direction
    ``out``), with WebSocket and SSE deliveries. ``webhook_id`` is the gateway's
    ``WebhookSubscription`` id, a plain integer: analytics never depends on the gateway.
    """

    subscription = models.ForeignKey(
        "portal.Subscription", on_delete=models.CASCADE, related_name="webhook_records"
    )
    webhook_id = models.PositiveBigIntegerField(help_text="The gateway's WebhookSubscription id.")
    bucket_start = models.DateTimeField(help_text="Start (UTC) of the minute the attempts finished in.")
    channel = models.CharField(max_length=1000, help_text="Channel address template, not the raw address.")
    attempts = models.PositiveBigIntegerField(default=0)
    delivered = models.PositiveBigIntegerField(default=0, help_text="Deliveries that ended with a 2xx.")
    retries = models.PositiveBigIntegerField(default=0, help_text="Attempts after a delivery's first.")
    dead = models.PositiveBigIntegerField(default=0, help_text="Deliveries that became dead letters.")
    status_2xx = models.PositiveBigIntegerField(default=0)
    status_3xx = models.PositiveBigIntegerField(default=0, help_text="Redirects: never followed, failed.")
    status_4xx = models.PositiveBigIntegerField(default=0)
    status_5xx = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(
        default=0, help_text="Attempts without an answer: timeout, connection error, refused address."
    )
    attempt_ms_total = models.PositiveBigIntegerField(
        default=0, help_text="Sum of the answered attempts' round trips, in milliseconds."
    )

    # The count columns, in the order ``analytics.webhooks.WebhookRow`` carries them.
    COUNT_FIELDS = (
        "attempts",
        "delivered",
        "retries",
        "dead",
        "status_2xx",
        "status_3xx",
        "status_4xx",
        "status_5xx",
        "errors",
        "attempt_ms_total",
    )

    class Meta:
        ordering = ["-bucket_start"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "webhook_id", "bucket_start", "channel"], name="unique_webhook_bucket"
            )
        ]
        indexes = [
            models.Index(fields=["subscription", "bucket_start"]),
            models.Index(fields=["bucket_start"]),
        ]

    def __str__(self) -> str:
        return (
            f"webhook {self.webhook_id} {self.bucket_start:%Y-%m-%d %H:%M} {self.channel}: "
            f"{self.attempts} attempts, {self.delivered} delivered, {self.dead} dead"
        )
