"""Analytics writes: the gateway's (and the webhook dispatcher's) batched flushes.

Everything the gateway counts per event lives in process memory and arrives here in batches
(``gateway.metering``): usage counts per minute, latency histogram buckets per minute, finished
connections and handshakes. Reads go through ``analytics.queries``.

Minute rows that arrive late (a flush retried after a database outage), for an hour the
roll-up's re-roll window may already have left behind, mark that hour dirty (``RollupDirty``) in
the same transaction, so the next roll-up brings them into the hour and day rows
(``analytics.rollup``, "Late minute rows").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from analytics.models import (
    ConnectionRecord,
    HandshakeRecord,
    LatencyRecord,
    RollupDirty,
    UsageCounts,
    UsageRecord,
)
from analytics.queries import floor
from analytics.rollup import reroll
from portal.models import Subscription

# (subscription id, minute bucket start (aware UTC), channel template, direction "out"/"in", events, bytes)
UsageRow = tuple[int, datetime, str, str, int, int]
# (subscription id, minute, channel template, direction, events, bytes, throttled events,
#  throttled bytes, dropped events, rejected events, failed events): UsageCounts.COUNT_FIELDS order.
CountRow = tuple[int, datetime, str, str, int, int, int, int, int, int, int]
# (subscription id, minute, channel template, direction, bucket upper bound in µs, events)
LatencyRow = tuple[int, datetime, str, str, int, int]


@dataclass(frozen=True)
class UsageTotals:
    """Events and bytes summed over a time range."""

    events: int = 0
    bytes: int = 0


def _live_rows(rows: Sequence[tuple]) -> list[tuple]:
    """The rows whose subscription (first item) still exists: one query."""
    live = set(Subscription.objects.filter(pk__in={row[0] for row in rows}).values_list("pk", flat=True))
    return [row for row in rows if row[0] in live]


def _mark_late_hours(rows: Sequence[tuple]) -> int:
    """Mark dirty (``RollupDirty``, in the caller's transaction) the hours of ``rows`` (minute
    in the second item) older than ``ANALYTICS_REROLL_HOURS`` less one hour: a roll-up that ran
    since may already have left them behind. Returns how many hours."""
    now = timezone.now()
    horizon = now - reroll() + timedelta(hours=1)
    return RollupDirty.mark(
        resolution="hour", buckets={floor(row[1], "hour") for row in rows if row[1] < horizon}, at=now
    )


def usage_counts_batch(*, rows: Iterable[CountRow]) -> int:
    """Add a batch of per-minute counts (``CountRow``: the columns of
    ``UsageCounts.COUNT_FIELDS``) to ``UsageRecord``, creating rows as needed.

    One ``INSERT ... ON CONFLICT DO UPDATE SET col = col + excluded.col`` per row in one
    transaction (PostgreSQL and SQLite ≥ 3.24), so concurrent flushes from several gateway
    processes add up instead of overwriting each other. Rows of all zeros and rows of
    subscriptions deleted meanwhile are skipped. Rows older than ``ANALYTICS_REROLL_HOURS``
    less one hour mark their hour for the roll-up (``_mark_late_hours``), in the same
    transaction. Returns the number of rows written.
    """
    rows = [row for row in rows if any(row[4:])]
    if not rows:
        return 0
    # In key order: two processes flushing the same keys lock them in the same order (no deadlock).
    rows = sorted(_live_rows(rows), key=lambda row: row[:4])
    table = UsageRecord._meta.db_table
    fields = UsageCounts.COUNT_FIELDS
    sql = (
        f"INSERT INTO {table} (subscription_id, bucket_start, channel, direction, {', '.join(fields)}) "
        f"VALUES (%s, %s, %s, %s, {', '.join(['%s'] * len(fields))}) "
        "ON CONFLICT (subscription_id, bucket_start, channel, direction) DO UPDATE SET "
        + ", ".join(f"{field} = {table}.{field} + excluded.{field}" for field in fields)
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(sql, rows)
        _mark_late_hours(rows)
    return len(rows)


def usage_record_batch(*, rows: Iterable[UsageRow]) -> int:
    """``usage_counts_batch`` for delivered events and bytes only (``UsageRow``)."""
    return usage_counts_batch(rows=[(*row, 0, 0, 0, 0, 0) for row in rows])


def throttled_record_batch(*, rows: Iterable[UsageRow]) -> int:
    """``usage_counts_batch`` for *throttled* events and bytes only (``UsageRow`` shape: events
    and bytes the business plan's throttling policy stopped). They never add to ``events``/
    ``bytes``, which is what billing reads: throttled events are never billed."""
    return usage_counts_batch(rows=[(*row[:4], 0, 0, row[4], row[5], 0, 0, 0) for row in rows])


def latency_record_batch(*, rows: Iterable[LatencyRow]) -> int:
    """Add a batch of latency histogram counts (``LatencyRow``) to ``LatencyRecord`` (same
    upsert-and-add, and the same marking of late hours, as ``usage_counts_batch``). Returns the
    number of rows written."""
    rows = [row for row in rows if row[5]]
    if not rows:
        return 0
    rows = sorted(_live_rows(rows), key=lambda row: row[:5])  # key order: see usage_counts_batch
    table = LatencyRecord._meta.db_table
    sql = (
        f"INSERT INTO {table} (subscription_id, bucket_start, channel, direction, le_us, count) "
        "VALUES (%s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (subscription_id, bucket_start, channel, direction, le_us) DO UPDATE SET "
        f"count = {table}.count + excluded.count"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(sql, rows)
        _mark_late_hours(rows)
    return len(rows)


def connection_record_batch(*, records: Iterable[ConnectionRecord]) -> int:
    """Store finished connections (unsaved ``ConnectionRecord`` instances) in one
    ``bulk_create``; those of subscriptions deleted meanwhile are skipped. Returns how many."""
    records = list(records)
    if not records:
        return 0
    live = set(
        Subscription.objects.filter(pk__in={r.subscription_id for r in records}).values_list("pk", flat=True)
    )
    records = [record for record in records if record.subscription_id in live]
    ConnectionRecord.objects.bulk_create(records)
    return len(records)


def handshake_record_batch(*, records: Iterable[HandshakeRecord]) -> int:
    """Store handshakes (unsaved ``HandshakeRecord`` instances) in one ``bulk_create``; a
    reference to a subscription, application or API deleted meanwhile is cleared (the
    handshake itself is kept). Returns how many."""
    from portal.models import API, Application

    records = list(records)
    if not records:
        return 0
    for field, model in (("subscription_id", Subscription), ("application_id", Application), ("api_id", API)):
        ids = {getattr(r, field) for r in records} - {None}
        live = set(model.objects.filter(pk__in=ids).values_list("pk", flat=True)) if ids else set()
        for record in records:
            if getattr(record, field) is not None and getattr(record, field) not in live:
                setattr(record, field, None)
    HandshakeRecord.objects.bulk_create(records)
    return len(records)


def usage_for_subscription(
    *,
    subscription: Subscription,
    start: datetime | None = None,
    end: datetime | None = None,
    direction: str = "out",
) -> UsageTotals:
    """Total delivered events and bytes of ``subscription`` in ``[start, end)``, one direction,
    from ``analytics.queries.usage_totals`` (the rows the dashboards read)."""
    from analytics.queries import usage_totals

    totals = usage_totals(subscriptions=[subscription.pk], start=start, end=end, direction=direction)
    return UsageTotals(events=totals.events, bytes=totals.bytes)


# (subscription id, bucket start or None, direction) -> delivered (events, bytes)
UsageByKey = dict[tuple[int, datetime | None, str], UsageTotals]


def usage_by_subscription(
    *,
    start: datetime,
    end: datetime,
    subscriptions: Iterable[int] | None = None,
    step: str | None = None,
) -> UsageByKey:
    """Usage in ``[start, end)`` of every subscription (or of ``subscriptions``, ids) that has
    any, per direction and, with ``step="hour"``, per hour: ``{(subscription id, hour start or
    None, "out"/"in"): UsageTotals}``. The same rows and roll-up plan as every other reader
    (``analytics.queries.usage_grouped``), in one query per plan part; billing's ledger closes
    and reconciles its usage windows with it."""
    from analytics.queries import usage_grouped

    grouped = usage_grouped(
        subscriptions=None if subscriptions is None else list(subscriptions),
        start=start,
        end=end,
        by=("subscription_id", "direction"),
        step=step,
    )
    result: UsageByKey = {}
    for key, counts in grouped.items():
        if step is None:
            subscription_id, direction = key
            bucket = None
        else:
            bucket, subscription_id, direction = key
        if counts.events or counts.bytes:
            result[(subscription_id, bucket, direction)] = UsageTotals(
                events=counts.events, bytes=counts.bytes
            )
    return result
