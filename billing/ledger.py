"""The usage ledger: fixed usage windows closed into one ``LedgerEntry`` per subscription.

Usage windows are whole UTC hours (``WINDOW``). Celery beat (``ledger_close_task``) closes every
window that ended at least ``grace_period()`` ago (``BILLING_GRACE_SECONDS``, time for gateway
processes to flush), oldest first and contiguously: the *frontier* is the end of the newest
closed window. Closing a window reads the analytics numbers the consumer sees
(``analytics.services.usage_by_subscription``) and writes, in one transaction, the
``UsageWindow`` row and one entry (revision 0) per subscription that used the window. The unique
``UsageWindow.start`` is the claim: a second run, a concurrent worker or a retry after a crash at
any point writes nothing twice (the crashed transaction rolled back whole). Windows are closed a
day per transaction.

Usage that reaches analytics after its window closed is found by ``ledger_reconcile`` (cheaply:
per-subscription totals first, per hour only for subscriptions that differ) and becomes an
*adjustment* entry (revision 1, 2, …) with its reason: never lost, never silently rewritten. An
admin can re-run one window (``window_rerun``) the same way.

Subscriptions without usage in a window get no entry; the window row records that it is closed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Max, Min, Sum
from django.utils import timezone

from analytics.services import usage_by_subscription
from billing.models import Invoice, LedgerEntry, UsageWindow
from portal.models import BusinessPlan, Subscription

logger = logging.getLogger(__name__)

WINDOW = timedelta(hours=1)
# One run closes at most this many windows (a month of hours), so a long outage of beat catches
# up over a few runs instead of one unbounded one.
MAX_WINDOWS_PER_RUN = 24 * 31
# Windows closed per transaction: a day, or fewer when they hold many entries.
WINDOWS_PER_TRANSACTION = 24
ENTRIES_PER_TRANSACTION = 10_000
DEFAULT_RECONCILE_DAYS = 35
LATE_USAGE_REASON = "Late usage: reached analytics after the window closed."
# pg_advisory_xact_lock key serializing ledger_reconcile runs ("eg-recon" in ASCII).
RECONCILE_LOCK_KEY = int.from_bytes(b"eg-recon", "big") & 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True)
class WindowUsage:
    """A subscription's usage in one window: events and bytes delivered (direction ``out``) and
    sent by the client (direction ``in``)."""

    events: int = 0
    bytes: int = 0
    in_events: int = 0
    in_bytes: int = 0

    def __sub__(self, other: WindowUsage) -> WindowUsage:
        return WindowUsage(
            self.events - other.events,
            self.bytes - other.bytes,
            self.in_events - other.in_events,
            self.in_bytes - other.in_bytes,
        )

    def __bool__(self) -> bool:
        return any((self.events, self.bytes, self.in_events, self.in_bytes))

    def counted(self, counted_directions: str) -> tuple[int, int]:
        """``(events, bytes)`` of the directions a plan's quotas count
        (``BusinessPlan.counted_directions``: "both", "out" or "in")."""
        directions = BusinessPlan(counted_directions=counted_directions).directions_counted
        events = (self.events if "out" in directions else 0) + (self.in_events if "in" in directions else 0)
        size = (self.bytes if "out" in directions else 0) + (self.in_bytes if "in" in directions else 0)
        return events, size


def grace_period() -> timedelta:
    """How long after a window (or billing period) ends it stays open for late gateway flushes
    (``BILLING_GRACE_SECONDS``, seconds; default one hour)."""
    return timedelta(seconds=getattr(settings, "BILLING_GRACE_SECONDS", 3600))


def window_floor(moment: datetime) -> datetime:
    """The start of the usage window (UTC hour) containing ``moment`` (aware)."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def window_ceil(moment: datetime) -> datetime:
    """``moment`` if it starts a window, else the start of the next window."""
    floor = window_floor(moment)
    return floor if floor == moment.astimezone(UTC) else floor + WINDOW


def frontier() -> datetime | None:
    """The end of the newest closed window (everything before it is closed), or None when the
    ledger is empty."""
    return UsageWindow.objects.aggregate(end=Max("end"))["end"]


def first_window_start() -> datetime | None:
    """Where an empty ledger starts closing: after the newest period already invoiced without a
    ledger (invoices predating it), else at the first subscription's window; None without
    subscriptions."""
    invoiced = Invoice.objects.aggregate(end=Max("period_end"))["end"]
    if invoiced is not None:
        return window_floor(invoiced)
    created = Subscription.objects.aggregate(created=Min("created"))["created"]
    return None if created is None else window_floor(created)


def closable_until(now: datetime) -> datetime:
    """The end of the newest window that may be closed at ``now``: windows end on the hour and
    close ``grace_period()`` after they end."""
    return window_floor(now - grace_period())


def _usage_per_window(
    *, start: datetime, end: datetime, subscription_ids: list[int] | None = None, step: str | None = "hour"
) -> dict[tuple[int, datetime | None], WindowUsage]:
    """``{(subscription id, window start): WindowUsage}`` for ``[start, end)`` (whole windows),
    for every subscription with usage (or the given ones); with ``step=None`` one total per
    subscription (window start None), read from the coarsest rows analytics has."""
    raw = usage_by_subscription(start=start, end=end, subscriptions=subscription_ids, step=step)
    per_window: dict[tuple[int, datetime | None], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for (subscription_id, bucket, direction), totals in raw.items():
        sums = per_window[(subscription_id, bucket)]
        offset = 0 if direction == "out" else 2
        sums[offset] += totals.events
        sums[offset + 1] += totals.bytes
    return {key: WindowUsage(*sums) for key, sums in per_window.items()}


def _plans_now(subscription_ids: set[int]) -> dict[int, tuple[int, str]]:
    """``{subscription id: (plan id, counted_directions)}`` of the subscriptions that still exist."""
    rows = Subscription.objects.filter(pk__in=subscription_ids).values_list(
        "pk", "plan_id", "plan__counted_directions"
    )
    return {pk: (plan_id, counted) for pk, plan_id, counted in rows}


def _entry(
    subscription_id: int, start: datetime, usage: WindowUsage, plan: tuple[int, str], **fields: Any
) -> LedgerEntry:
    """An unsaved entry of ``usage`` in the window at ``start``, at ``plan`` (id, counted directions)."""
    counted_events, counted_bytes = usage.counted(plan[1])
    return LedgerEntry(
        subscription_id=subscription_id,
        window_start=start,
        window_end=start + WINDOW,
        plan_id=plan[0],
        events=usage.events,
        bytes=usage.bytes,
        in_events=usage.in_events,
        in_bytes=usage.in_bytes,
        counted_events=counted_events,
        counted_bytes=counted_bytes,
        **fields,
    )


def ledger_close_windows(
    *, now: datetime | None = None, until: datetime | None = None, begin: datetime | None = None
) -> int:
    """Close every usage window that ended ``grace_period()`` before ``now`` (default: the
    time now), oldest first, at most ``MAX_WINDOWS_PER_RUN`` per call; ``until`` (an aware
    datetime on a window boundary) closes up to it instead, grace or not (operators' re-runs,
    tests and demos). An empty ledger starts at ``first_window_start()`` or at ``begin`` (the
    start of a billing period being invoiced), whichever is earlier. Returns the number of
    windows this call closed.

    Exactly once: a window's row and its entries are written in one transaction (a day of
    windows per transaction, ``_close_batch``), and the unique window start makes a concurrent or
    repeated close write nothing (``UsageWindow``). Windows close in time order, so a crash
    leaves a contiguous closed prefix and the next run continues after it.
    """
    now = now or timezone.now()
    start = frontier()
    if start is None:
        candidates = [moment for moment in (first_window_start(), begin) if moment is not None]
        if not candidates:
            return 0
        start = window_floor(min(candidates))
    end = until if until is not None else closable_until(now)
    end = min(end, start + MAX_WINDOWS_PER_RUN * WINDOW)
    if start >= end:
        return 0
    usage = _usage_per_window(start=start, end=end)
    plans = _plans_now({subscription_id for subscription_id, _ in usage})
    by_window: dict[datetime, list[tuple[int, WindowUsage, tuple[int, str]]]] = defaultdict(list)
    for (subscription_id, window_start), window_usage in usage.items():
        if subscription_id in plans:  # not deleted meanwhile
            by_window[window_start].append((subscription_id, window_usage, plans[subscription_id]))

    closed = 0
    batch: list[datetime] = []
    batch_entries = 0
    window_start = start
    while window_start < end:
        batch.append(window_start)
        batch_entries += len(by_window.get(window_start, ()))
        if len(batch) >= WINDOWS_PER_TRANSACTION or batch_entries >= ENTRIES_PER_TRANSACTION:
            closed += _close_batch(batch, by_window)
            batch, batch_entries = [], 0
        window_start += WINDOW
    closed += _close_batch(batch, by_window)
    if closed:
        logger.info("Ledger: closed %d usage windows %s – %s", closed, start, end)
    return closed


def _close_batch(
    starts: list[datetime], by_window: dict[datetime, list[tuple[int, WindowUsage, tuple[int, str]]]]
) -> int:
    """Close consecutive windows (``starts``, in time order) in one transaction: insert their
    ``UsageWindow`` rows with ``ON CONFLICT DO NOTHING`` (PostgreSQL; SQLite ≥ 3.35), then the
    entries of exactly the windows this call inserted. A window a concurrent run closed first
    waits for that run's commit and is skipped, entries and all. Returns how many windows this
    call closed. Batches commit in time order, so the frontier never passes an unclosed window."""
    if not starts:
        return 0
    table = connection.ops.quote_name(UsageWindow._meta.db_table)
    names = ("start", "end", "closed_at", "subscriptions")
    columns = ", ".join(connection.ops.quote_name(name) for name in names)
    now = timezone.now()
    values, params = [], []
    for start in starts:
        values.append("(%s, %s, %s, %s)")
        params += [start, start + WINDOW, now, len(by_window.get(start, ()))]
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} ({columns}) VALUES {', '.join(values)} "  # noqa: S608 - model names
                f"ON CONFLICT ({connection.ops.quote_name('start')}) DO NOTHING RETURNING id",
                params,
            )
            inserted_ids = [row[0] for row in cursor.fetchall()]
        inserted = UsageWindow.objects.filter(pk__in=inserted_ids).values_list("start", flat=True)
        LedgerEntry.objects.bulk_create(
            [
                _entry(subscription_id, start, usage, plan, revision=0, kind=LedgerEntry.Kind.USAGE)
                for start in sorted(inserted)
                for subscription_id, usage, plan in sorted(by_window.get(start, ()), key=lambda row: row[0])
            ],
            batch_size=2_000,
        )
    return len(inserted_ids)


def _ledger_sums(
    *, start: datetime, end: datetime, subscription_ids: list[int] | None = None, per_window: bool
) -> dict[Any, WindowUsage]:
    """Entries (all revisions) in ``[start, end)`` summed per subscription (and window)."""
    entries = LedgerEntry.objects.filter(window_start__gte=start, window_start__lt=end)
    if subscription_ids is not None:
        entries = entries.filter(subscription_id__in=subscription_ids)
    columns = ["subscription_id", "window_start"] if per_window else ["subscription_id"]
    rows = entries.values(*columns).annotate(
        e=Sum("events"), b=Sum("bytes"), ie=Sum("in_events"), ib=Sum("in_bytes")
    )
    result = {}
    for row in rows.order_by():
        key = (row["subscription_id"], row["window_start"]) if per_window else row["subscription_id"]
        result[key] = WindowUsage(row["e"] or 0, row["b"] or 0, row["ie"] or 0, row["ib"] or 0)
    return result


def ledger_reconcile(
    *,
    now: datetime | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    subscription_ids: list[int] | None = None,
    by: Any = None,
    reason: str = LATE_USAGE_REASON,
) -> list[LedgerEntry]:
    """Turn usage that reached analytics after its window closed into adjustment entries.

    Compares analytics with the ledger over the closed windows in ``[start, end)`` (default: from
    ``BILLING_RECONCILE_DAYS`` days before now to the frontier): per subscription first, then per
    window only for the subscriptions that differ. Each difference becomes one entry with the
    next revision of its (subscription, window), ``kind`` adjustment, ``reason`` and ``by`` (the
    admin who asked, or None for the beat job). Windows before the ledger's first one (usage
    invoiced before the ledger existed) are never compared. Safe to run twice or concurrently:
    runs are serialized (``_reconcile_lock``), so the second finds no difference left. Returns
    the entries written.
    """
    now = now or timezone.now()
    with transaction.atomic():
        _reconcile_lock()
        return _reconcile(
            now=now, start=start, end=end, subscription_ids=subscription_ids, by=by, reason=reason
        )


def _reconcile_lock() -> None:
    """Inside a transaction, wait until no other reconcile is running and hold that until
    commit: a transaction-level advisory lock on PostgreSQL, the database's write lock on SQLite
    (a write statement that changes nothing). Without it, two runs could both read the ledger
    before either wrote, and both add the same difference (at different revisions)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [RECONCILE_LOCK_KEY])
        else:
            table = connection.ops.quote_name(UsageWindow._meta.db_table)
            cursor.execute(f"UPDATE {table} SET subscriptions = subscriptions WHERE id < 0")  # noqa: S608


def _reconcile(
    *,
    now: datetime,
    start: datetime | None,
    end: datetime | None,
    subscription_ids: list[int] | None,
    by: Any,
    reason: str,
) -> list[LedgerEntry]:
    closed_end = frontier()
    first = UsageWindow.objects.aggregate(start=Min("start"))["start"]
    if closed_end is None or first is None:
        return []
    end = min(end or closed_end, closed_end)
    days = getattr(settings, "BILLING_RECONCILE_DAYS", DEFAULT_RECONCILE_DAYS)
    # Looked back from now, not from the frontier (which closing a period early moves ahead).
    start = max(window_floor(start or (min(now, end) - timedelta(days=days))), first)
    if start >= end:
        return []
    analytics_totals = {
        subscription_id: usage
        for (subscription_id, _none), usage in _usage_per_window(
            start=start, end=end, subscription_ids=subscription_ids, step=None
        ).items()
    }
    ledger_totals = _ledger_sums(start=start, end=end, subscription_ids=subscription_ids, per_window=False)
    differing = sorted(
        sid
        for sid in set(analytics_totals) | set(ledger_totals)
        if analytics_totals.get(sid, WindowUsage()) - ledger_totals.get(sid, WindowUsage())
    )
    if not differing:
        return []
    analytics_windows = _usage_per_window(start=start, end=end, subscription_ids=differing)
    ledger_windows = _ledger_sums(start=start, end=end, subscription_ids=differing, per_window=True)
    # Per (subscription, window): the top revision so far and the plan its usage was billed at
    # (the window's entries' plan; the subscription's plan now for a window it had no entry in).
    revisions: dict[tuple[int, datetime], int] = {}
    entry_plans: dict[tuple[int, datetime], tuple[int, str]] = {}
    for subscription_id, window_start, revision, plan_id, counted in (
        LedgerEntry.objects.filter(
            subscription_id__in=differing, window_start__gte=start, window_start__lt=end
        )
        .values_list("subscription_id", "window_start", "revision", "plan_id", "plan__counted_directions")
        .order_by("revision")
    ):
        key = (subscription_id, window_start)
        revisions[key] = revision
        if plan_id is not None:
            entry_plans[key] = (plan_id, counted)
    plans = _plans_now(set(differing))
    adjustments = []
    for key in sorted(set(analytics_windows) | set(ledger_windows)):
        difference = analytics_windows.get(key, WindowUsage()) - ledger_windows.get(key, WindowUsage())
        plan = entry_plans.get(key) or plans.get(key[0])
        if not difference or plan is None:
            continue
        subscription_id, window_start = key
        adjustments.append(
            _entry(
                subscription_id,
                window_start,
                difference,
                plan,
                revision=revisions.get(key, 0) + 1,
                kind=LedgerEntry.Kind.ADJUSTMENT,
                reason=reason[:300],
                created_by=by,
                created=now,
            )
        )
    try:
        with transaction.atomic():
            written = LedgerEntry.objects.bulk_create(adjustments)
    except IntegrityError:
        # A concurrent reconcile wrote these revisions first; the next run sees what is left.
        logger.info("Ledger: adjustments written by a concurrent run; nothing to add")
        return []
    if written:
        logger.info("Ledger: %d adjustment entries for late usage", len(written))
    return written


def window_rerun(*, start: datetime, by: Any, reason: str = "") -> list[LedgerEntry]:
    """Re-read one usage window (``start``: its first instant, aware) from analytics and record
    any difference with the ledger as adjustment entries by ``by`` (an admin), with ``reason``.
    A window not closed yet is closed first (if it ended ``grace_period()`` ago).

    Raises ``ValueError`` naming the problem for a start that is not on a window boundary, in
    the future, or whose window is still in its grace period.
    """
    start = start.astimezone(UTC)
    if start > timezone.now():
        raise ValueError(
            f"The window {start:%Y-%m-%d %H:%M} UTC is in the future: only past windows can be re-run."
        )
    if start != window_floor(start):
        raise ValueError(f"A usage window starts on the hour (UTC); {start:%Y-%m-%d %H:%M:%S} does not.")
    end = start + WINDOW
    now = timezone.now()
    if end > closable_until(now):
        opens = end + grace_period()
        raise ValueError(
            f"The window {start:%Y-%m-%d %H:%M} UTC is still open for late usage until "
            f"{opens:%Y-%m-%d %H:%M} UTC; it can be re-run after that."
        )
    first = UsageWindow.objects.aggregate(start=Min("start"))["start"]
    if first is not None and start < first:
        raise ValueError(
            f"The window {start:%Y-%m-%d %H:%M} UTC is older than the ledger's first window "
            f"({first:%Y-%m-%d %H:%M} UTC): its usage was invoiced before the ledger existed."
        )
    if not UsageWindow.objects.filter(start=start).exists():
        ledger_close_windows(now=now, until=end)
    text = f"Window re-run by {getattr(by, 'email', None) or 'an admin'}" + (f": {reason}" if reason else ".")
    return ledger_reconcile(now=now, start=start, end=end, by=by, reason=text)
