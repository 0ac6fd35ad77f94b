"""Usage records: events and bytes per subscription, channel, direction and minute.

The gateway counts in memory and flushes in batches (``analytics.services.usage_record_batch``);
billing reads the same rows through ``analytics.services.usage_for_subscription``, so what a
consumer is billed for is what their usage page shows.
"""

from __future__ import annotations

from django.db import models


class UsageRecord(models.Model):
    """Events and bytes for one subscription, channel template and direction in one minute, and
    the events (bytes) throttled there (``throttled_events``: counted, never billed)."""

    class Direction(models.TextChoices):
        OUT = "out", "Server → client"
        IN = "in", "Client → server"

    subscription = models.ForeignKey(
        "portal.Subscription", on_delete=models.CASCADE, related_name="usage_records"
    )
    bucket_start = models.DateTimeField(help_text="Start of the minute (UTC) this row counts.")
    channel = models.CharField(max_length=1000, help_text="Channel address template, not the raw path.")
    direction = models.CharField(max_length=3, choices=Direction.choices, default=Direction.OUT)
    events = models.PositiveBigIntegerField(default=0)
    bytes = models.PositiveBigIntegerField(default=0)
    throttled_events = models.PositiveBigIntegerField(
        default=0, help_text="Events the plan's throttling policy stopped: not delivered, never billed."
    )
    throttled_bytes = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "bucket_start", "channel", "direction"], name="unique_usage_bucket"
            )
        ]
        indexes = [models.Index(fields=["subscription", "bucket_start"])]
        ordering = ["-bucket_start"]

    def __str__(self) -> str:
        return (
            f"{self.subscription_id} {self.bucket_start:%Y-%m-%d %H:%M} {self.channel} {self.events} events"
        )
