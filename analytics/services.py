"""Analytics services: the gateway's batched flush in, usage totals out.

Billing reads usage only through ``usage_for_subscription`` so invoices and the consumer's usage
page are computed from the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction
from django.db.models import Sum

from analytics.models import UsageRecord
from portal.models import Subscription

# (subscription id, minute bucket start (aware UTC), channel template, direction "out"/"in", events, bytes)
UsageRow = tuple[int, datetime, str, str, int, int]


@dataclass(frozen=True)
class UsageTotals:
    """Events and bytes summed over a time range."""

    events: int = 0
    bytes: int = 0


def usage_record_batch(*, rows: Iterable[UsageRow]) -> int:
    """Add a batch of usage counts to the per-minute usage rows, creating rows as needed.

    One ``INSERT ... ON CONFLICT DO UPDATE`` per row inside one transaction (PostgreSQL and
    SQLite ≥ 3.24 both accept it), so concurrent flushes from several gateway processes add up
    instead of overwriting each other. Rows for subscriptions deleted meanwhile are skipped.
    Returns the number of rows written.
    """
    rows = [row for row in rows if row[4] or row[5]]
    if not rows:
        return 0
    table = UsageRecord._meta.db_table
    sql = (
        f"INSERT INTO {table} (subscription_id, bucket_start, channel, direction, events, bytes, "
        "throttled_events, throttled_bytes) VALUES (%s, %s, %s, %s, %s, %s, 0, 0) "
        "ON CONFLICT (subscription_id, bucket_start, channel, direction) DO UPDATE SET "
        f"events = {table}.events + excluded.events, bytes = {table}.bytes + excluded.bytes"
    )
    live = set(Subscription.objects.filter(pk__in={row[0] for row in rows}).values_list("pk", flat=True))
    rows = [row for row in rows if row[0] in live]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(sql, rows)
    return len(rows)


def throttled_record_batch(*, rows: Iterable[UsageRow]) -> int:
    """Add a batch of *throttled* counts (same row shape as ``usage_record_batch``: events and
    bytes the business plan's throttling policy stopped) to the per-minute usage rows' columns
    ``throttled_events`` and ``throttled_bytes``. They never add to ``events``/``bytes``, which
    is what billing reads: throttled events are never billed. Concurrent flushes add up; rows
    of deleted subscriptions are skipped. Returns the number of rows written."""
    rows = [row for row in rows if row[4] or row[5]]
    if not rows:
        return 0
    table = UsageRecord._meta.db_table
    sql = (
        f"INSERT INTO {table} (subscription_id, bucket_start, channel, direction, events, bytes, "
        "throttled_events, throttled_bytes) VALUES (%s, %s, %s, %s, 0, 0, %s, %s) "
        "ON CONFLICT (subscription_id, bucket_start, channel, direction) DO UPDATE SET "
        f"throttled_events = {table}.throttled_events + excluded.throttled_events, "
        f"throttled_bytes = {table}.throttled_bytes + excluded.throttled_bytes"
    )
    live = set(Subscription.objects.filter(pk__in={row[0] for row in rows}).values_list("pk", flat=True))
    rows = [row for row in rows if row[0] in live]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(sql, rows)
    return len(rows)


def usage_for_subscription(
    *,
    subscription: Subscription,
    start: datetime | None = None,
    end: datetime | None = None,
    direction: str = "out",
) -> UsageTotals:
    """Total events and bytes of ``subscription`` in ``[start, end)`` (bucket starts), one direction."""
    records = UsageRecord.objects.filter(subscription=subscription, direction=direction)
    if start is not None:
        records = records.filter(bucket_start__gte=start)
    if end is not None:
        records = records.filter(bucket_start__lt=end)
    totals = records.aggregate(events=Sum("events"), bytes=Sum("bytes"))
    return UsageTotals(events=totals["events"] or 0, bytes=totals["bytes"] or 0)
