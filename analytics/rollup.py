"""Roll-ups of per-minute usage and latency into hours and days, and the retention of each
resolution (run by ``analytics.tasks.analytics_rollup_task`` on Celery beat).

How it works
------------
``rollup_hours`` writes ``UsageHourly``/``LatencyHourly`` rows as exact sums of the
``UsageRecord``/``LatencyRecord`` (minute) rows of every whole hour that ended at least
``ANALYTICS_ROLLUP_GRACE_SECONDS`` ago; ``rollup_days`` writes ``UsageDaily``/``LatencyDaily``
from the hour rows of every whole day (UTC) whose hours are all rolled. Each is one
``INSERT ... SELECT ... GROUP BY ... ON CONFLICT (...) DO UPDATE SET col = excluded.col`` per
table: the coarse row is *set* to the sum, never added to, so running a roll-up again (or two at
once) changes nothing. The statements run on PostgreSQL and SQLite (≥ 3.24); only the bucket
truncation differs (``date_trunc`` or ``strftime``).

How far each roll-up has gone is ``RollupState.rolled_until`` (the hour mark, the day mark);
``analytics.queries`` reads hour (day) rows only below that mark and minute (hour) rows from
there on, so a reader never sees an hour both ways or not at all. A roll-up writes its rows and
moves its mark forward in one transaction, after locking its ``RollupState`` row (``SELECT ...
FOR UPDATE``): concurrent runs take turns, each later one reads everything the earlier one
committed, and a mark never moves back (the update is conditional: ``WHERE rolled_until <
new``).

Late minute rows
----------------
A gateway whose flush failed keeps its counts and retries at the next flush
(``gateway.metering``), so minute rows can arrive after their hour was rolled. Every run
therefore rolls again the ``ANALYTICS_REROLL_HOURS`` hours below the mark (the hour roll-up from
the minute rows, the day roll-up every day holding such an hour), and retention never deletes
rows that a re-roll still reads. ``ANALYTICS_ROLLUP_GRACE_SECONDS`` (default 300 s, well above
``GATEWAY_FLUSH_INTERVAL``) keeps a healthy gateway's last flush of an hour ahead of that hour's
first roll-up.

Rows later than that window would be left behind for ever (a gateway whose database was
unreachable for longer than ``ANALYTICS_REROLL_HOURS``), so the flush marks them: a minute row
older than ``ANALYTICS_REROLL_HOURS`` less one hour marks its hour dirty (``RollupDirty``,
``analytics.services``) in the transaction that writes it. Each hour roll-up, besides its
window, re-rolls every marked hour below its end, marks each such hour's day, and deletes the
hour marks it handled; each day roll-up re-rolls every marked day below its end and deletes those
marks. So every minute row, however late, reaches its hour and day rows at the next run (until
then, readers of whole hours below the mark miss it: at most one roll-up interval). The one
exception: a row whose hour is older than the minute retention (``ANALYTICS_RETENTION_MINUTE_DAYS``)
is not rolled up — the hour's other minute rows may be gone, and a re-roll would set the hour
to less than it had — and retention deletes it; likewise a marked day older than the hour
retention.

The marks are safe under concurrency: a roll-up locks the marks it will handle (``SELECT ... FOR
UPDATE``) *before* it reads the finer rows, and a flush *updates* a mark that exists (``ON
CONFLICT DO UPDATE``, which locks it) rather than ignoring it. A flush that marked an hour before
the roll-up's lock makes the roll-up wait for its commit, so the roll-up then reads its rows; a
flush that marks after the lock either creates a new mark or waits until the roll-up deleted the
old one and creates it again: the hour is rolled again at the next run.

Retention
---------
``retention_apply`` deletes, in batches, minute rows older than
``ANALYTICS_RETENTION_MINUTE_DAYS``, hour rows older than ``ANALYTICS_RETENTION_HOUR_DAYS``, day
rows older than ``ANALYTICS_RETENTION_DAY_DAYS`` and connection and handshake log entries older
than ``ANALYTICS_RETENTION_LOG_DAYS`` (0 keeps a kind for ever). Minute rows go only below the
hour mark less the re-roll window, hour rows only below the day re-roll window, so a deleted row
is always already summed in a coarser one that readers use: whole hours (days) read the same
before and after. A range whose edges fall inside an hour (a day) older than the minute (hour)
retention reads those partial hours (days) as empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import NotSupportedError, connection, transaction
from django.db.models import Min, Model
from django.utils import timezone

from analytics.models import (
    ConnectionRecord,
    HandshakeRecord,
    LatencyDaily,
    LatencyHourly,
    LatencyRecord,
    RollupDirty,
    RollupState,
    UsageCounts,
    UsageDaily,
    UsageHourly,
    UsageRecord,
    WebhookRecord,
)
from analytics.queries import STEP, floor, marks

DEFAULT_GRACE_SECONDS = 300
DEFAULT_REROLL_HOURS = 6
DEFAULT_RETENTION_DAYS = {"minute": 40, "hour": 400, "day": 0, "log": 90}
RETENTION_BATCH = 10_000  # rows per DELETE

# Each resolution rolled up: the usage and latency tables it writes, and those it reads.
USAGE_SOURCES: dict[str, tuple[type[Model], type[Model]]] = {
    "hour": (UsageRecord, UsageHourly),
    "day": (UsageHourly, UsageDaily),
}
LATENCY_SOURCES: dict[str, tuple[type[Model], type[Model]]] = {
    "hour": (LatencyRecord, LatencyHourly),
    "day": (LatencyHourly, LatencyDaily),
}


@dataclass(frozen=True)
class RollupResult:
    """What one roll-up run did: ``resolution`` ("hour" or "day") rows written (inserted or set)
    for buckets in ``[start, end)`` and the marked ones below it (``usage_rows``,
    ``latency_rows``), and the mark before and after (``rolled_until``; unchanged when nothing
    new was complete). ``rerolled``: the marked (``RollupDirty``) buckets rolled again below
    ``start``, oldest first. For days before the first hour roll-up there is nothing to go on:
    ``start``/``end``/``previous_mark`` are None."""

    resolution: str
    start: datetime | None
    end: datetime | None
    usage_rows: int
    latency_rows: int
    previous_mark: datetime | None
    rolled_until: datetime | None
    rerolled: tuple[datetime, ...] = ()


def grace() -> timedelta:
    """How long after an hour ends before it is rolled up (``ANALYTICS_ROLLUP_GRACE_SECONDS``)."""
    return timedelta(seconds=getattr(settings, "ANALYTICS_ROLLUP_GRACE_SECONDS", DEFAULT_GRACE_SECONDS))


def reroll() -> timedelta:
    """How far below its mark each run rolls up again (``ANALYTICS_REROLL_HOURS``), for late rows."""
    return timedelta(hours=getattr(settings, "ANALYTICS_REROLL_HOURS", DEFAULT_REROLL_HOURS))


def retention_days(kind: str) -> int:
    """Days rows of ``kind`` ("minute", "hour", "day", "log") are kept; 0 means for ever."""
    return int(getattr(settings, f"ANALYTICS_RETENTION_{kind.upper()}_DAYS", DEFAULT_RETENTION_DAYS[kind]))


def _truncated(column: str, resolution: str) -> str:
    """SQL for ``column`` (a UTC datetime) rounded down to its hour or day, in the database's
    own datetime representation (PostgreSQL ``timestamptz``; SQLite text, as Django stores it)."""
    if connection.vendor == "postgresql":
        return f"date_trunc('{resolution}', {column} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    if connection.vendor == "sqlite":
        # "%%": Django's cursor takes a single "%" for a placeholder. Django stores UTC datetimes
        # as "YYYY-MM-DD HH:MM:SS[.ffffff]", which strftime reads and writes back in that form.
        pattern = "%%Y-%%m-%%d %%H:00:00" if resolution == "hour" else "%%Y-%%m-%%d 00:00:00"
        return f"strftime('{pattern}', {column})"
    raise NotSupportedError(f"analytics roll-ups support PostgreSQL and SQLite, not {connection.vendor}")


def _upsert_sql(
    source: type[Model], target: type[Model], resolution: str, keys: list[str], sums: list[str]
) -> str:
    """``INSERT INTO target SELECT <keys>, SUM(...) FROM source WHERE bucket_start in [%s, %s)
    GROUP BY <keys> ON CONFLICT (<keys>) DO UPDATE SET col = excluded.col``."""
    bucket = _truncated("bucket_start", resolution)
    selected = [bucket if key == "bucket_start" else key for key in keys]
    columns = [*keys, *sums]
    return (
        f"INSERT INTO {target._meta.db_table} ({', '.join(columns)}) "
        f"SELECT {', '.join(selected)}, {', '.join(f'SUM({name})' for name in sums)} "
        f"FROM {source._meta.db_table} WHERE bucket_start >= %s AND bucket_start < %s "
        f"GROUP BY {', '.join(selected)} "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
        + ", ".join(f"{name} = excluded.{name}" for name in sums)
    )


def _roll(resolution: str, start: datetime, end: datetime) -> tuple[int, int]:
    """Set the ``resolution`` rows of buckets in ``[start, end)`` to the sums of the finer rows:
    two statements (usage, latency). Returns the rows written (usage, latency)."""
    bounds = [connection.ops.adapt_datetimefield_value(moment) for moment in (start, end)]
    keys = ["subscription_id", "bucket_start", "channel", "direction"]
    written = []
    for sources, extra_keys, sums in (
        (USAGE_SOURCES, [], list(UsageCounts.COUNT_FIELDS)),
        (LATENCY_SOURCES, ["le_us"], ["count"]),
    ):
        source, target = sources[resolution]
        with connection.cursor() as cursor:
            cursor.execute(_upsert_sql(source, target, resolution, [*keys, *extra_keys], sums), bounds)
            written.append(max(cursor.rowcount, 0))
    return written[0], written[1]


def _locked_mark(resolution: str, initial: datetime) -> datetime:
    """The ``RollupState`` mark of ``resolution``, created at ``initial`` if missing, with its
    row locked until the transaction ends (PostgreSQL; SQLite's write lock serializes anyway)."""
    RollupState.objects.bulk_create(
        [RollupState(resolution=resolution, rolled_until=initial)], ignore_conflicts=True
    )
    return RollupState.objects.select_for_update().get(resolution=resolution).rolled_until


def _source_horizon(resolution: str, now: datetime) -> datetime | None:
    """The oldest ``resolution`` bucket whose finer rows retention has certainly kept whole at
    ``now`` (minute rows for an hour, hour rows for a day); None when they are kept for ever."""
    days = retention_days("minute" if resolution == "hour" else "hour")
    return floor(now - timedelta(days=days), resolution) if days else None


def _runs(buckets: list[datetime], step: timedelta) -> list[tuple[datetime, datetime]]:
    """Sorted bucket starts as ``[start, end)`` runs of consecutive buckets (one roll each)."""
    runs: list[tuple[datetime, datetime]] = []
    for bucket in buckets:
        if runs and runs[-1][1] == bucket:
            runs[-1] = (runs[-1][0], bucket + step)
        else:
            runs.append((bucket, bucket + step))
    return runs


def _claim_marked(resolution: str, end: datetime) -> list[tuple[int, datetime]]:
    """The ``RollupDirty`` marks of ``resolution`` below ``end`` as ``(pk, bucket start)``,
    oldest first, locked until the transaction ends (module docstring: taken before the finer
    rows are read)."""
    marked = RollupDirty.objects.select_for_update().filter(resolution=resolution, bucket_start__lt=end)
    return list(marked.order_by("bucket_start").values_list("pk", "bucket_start"))


def _reroll_marked(
    resolution: str, marked: list[tuple[int, datetime]], start: datetime, now: datetime
) -> tuple[list[datetime], int, int]:
    """Roll again the ``marked`` buckets below ``start`` (those from ``start`` on are in the
    window) that retention left whole, mark the days of the hours handled (hour roll-up), and
    delete the ``marked`` rows. Returns (buckets rolled again, usage rows, latency rows)."""
    horizon = _source_horizon(resolution, now)
    kept = [bucket for _, bucket in marked if horizon is None or bucket >= horizon]
    rerolled = [bucket for bucket in kept if bucket < start]
    usage_rows = latency_rows = 0
    for run_start, run_end in _runs(rerolled, STEP[resolution]):
        usage, latency = _roll(resolution, run_start, run_end)
        usage_rows, latency_rows = usage_rows + usage, latency_rows + latency
    if resolution == "hour":
        RollupDirty.mark(resolution="day", buckets={floor(bucket, "day") for bucket in kept}, at=now)
    RollupDirty.objects.filter(pk__in=[pk for pk, _ in marked]).delete()
    return rerolled, usage_rows, latency_rows


def _rollup(resolution: str, target: datetime, earliest: type[Model], now: datetime) -> RollupResult:
    """Roll ``resolution`` up to ``target`` (see the module docstring): in one transaction, lock
    the mark and the ``RollupDirty`` marks below the window's end, set the rows of
    ``[floor(mark − re-roll window), max(mark, target))`` and of the marked buckets below it,
    advance the mark to ``target`` if it is ahead. A missing mark starts at ``earliest``'s first
    row (or at ``target`` when that table is empty). ``now`` decides which marked buckets are
    past retention."""
    with transaction.atomic():
        first = earliest.objects.aggregate(first=Min("bucket_start"))["first"]
        mark = _locked_mark(
            resolution, min(floor(first, resolution), target) if first is not None else target
        )
        start = floor(mark - reroll(), resolution)
        end = max(mark, target)
        marked = _claim_marked(resolution, end)
        usage_rows, latency_rows = _roll(resolution, start, end)
        rerolled, usage_extra, latency_extra = _reroll_marked(resolution, marked, start, now)
        if target > mark:
            RollupState.objects.filter(resolution=resolution, rolled_until__lt=target).update(
                rolled_until=target, updated_at=timezone.now()
            )
    return RollupResult(
        resolution,
        start,
        end,
        usage_rows + usage_extra,
        latency_rows + latency_extra,
        mark,
        max(mark, target),
        tuple(rerolled),
    )


def rollup_hours(now: datetime | None = None) -> RollupResult:
    """Roll minute rows up into ``UsageHourly``/``LatencyHourly`` for every whole hour (UTC)
    that ended at least ``ANALYTICS_ROLLUP_GRACE_SECONDS`` before ``now`` (default: now), again
    for the ``ANALYTICS_REROLL_HOURS`` hours below the hour mark and for every hour marked dirty
    by a late flush (``RollupDirty``; their days are marked for ``rollup_days``), and move the
    hour mark to the end of the last such hour. Safe to run twice or concurrently. Raises
    ``NotSupportedError`` on a database other than PostgreSQL or SQLite."""
    now = now or timezone.now()
    return _rollup("hour", floor(now - grace(), "hour"), UsageRecord, now)


def rollup_days(now: datetime | None = None) -> RollupResult:
    """Roll hour rows up into ``UsageDaily``/``LatencyDaily`` for every whole day (UTC) below the
    hour mark, again for every day holding one of the ``ANALYTICS_REROLL_HOURS`` hours below
    the day mark and for every day ``rollup_hours`` marked dirty (``RollupDirty``), and move the
    day mark to the last such day's end. Does nothing before the first ``rollup_hours``. The
    hour mark decides how far; ``now`` (default: now) only which marked days are past the hour
    rows' retention."""
    now = now or timezone.now()
    hour_mark = marks()["hour"]
    if hour_mark is None:
        return RollupResult("day", None, None, 0, 0, None, marks()["day"])
    return _rollup("day", floor(hour_mark, "day"), UsageHourly, now)


def _delete_before(model: type[Model], field: str, cutoff: datetime, batch_size: int) -> int:
    """Delete ``model`` rows whose ``field`` is before ``cutoff``, ``batch_size`` rows per
    statement (each its own transaction, so locks stay short). Returns how many."""
    deleted = 0
    while True:
        pks = list(
            model.objects.filter(**{f"{field}__lt": cutoff})
            .order_by()
            .values_list("pk", flat=True)[:batch_size]
        )
        if not pks:
            return deleted
        deleted += model.objects.filter(pk__in=pks).delete()[0]


def retention_apply(now: datetime | None = None, *, batch_size: int = RETENTION_BATCH) -> dict[str, int]:
    """Delete analytics rows past their retention (module docstring), ``batch_size`` rows at a
    time. Minute rows go only below the hour mark less ``ANALYTICS_REROLL_HOURS`` (none before
    the first roll-up), hour rows only below the day mark's re-roll window. Returns model name
    → rows deleted (only the kinds that had rows past their cutoff)."""
    now = now or timezone.now()
    rolled = marks()
    cutoffs: list[tuple[tuple[type[Model], ...], str, datetime]] = []
    if retention_days("minute") and rolled["hour"] is not None:
        cutoff = min(floor(now - timedelta(days=retention_days("minute")), "hour"), rolled["hour"] - reroll())
        cutoffs.append(((UsageRecord, LatencyRecord), "bucket_start", cutoff))
    if retention_days("hour") and rolled["day"] is not None:
        cutoff = min(
            floor(now - timedelta(days=retention_days("hour")), "day"), floor(rolled["day"] - reroll(), "day")
        )
        cutoffs.append(((UsageHourly, LatencyHourly), "bucket_start", cutoff))
    if retention_days("day"):
        cutoffs.append(
            (
                (UsageDaily, LatencyDaily),
                "bucket_start",
                floor(now - timedelta(days=retention_days("day")), "day"),
            )
        )
    if retention_days("log"):
        log_cutoff = now - timedelta(days=retention_days("log"))
        cutoffs.append(((ConnectionRecord,), "closed_at", log_cutoff))
        cutoffs.append(((HandshakeRecord,), "at", log_cutoff))
        # Webhook metrics are per minute and never rolled up: kept as long as the logs.
        cutoffs.append(((WebhookRecord,), "bucket_start", log_cutoff))
    deleted: dict[str, int] = {}
    for models, field, cutoff in cutoffs:
        for model in models:
            count = _delete_before(model, field, cutoff, batch_size)
            if count:
                deleted[model.__name__] = count
    return deleted


@dataclass(frozen=True)
class RollupRun:
    """One scheduled pass (``analytics_rollup``): the hour and day roll-ups and the rows retention
    deleted (model name → rows)."""

    hour: RollupResult
    day: RollupResult
    deleted: dict[str, int]


def analytics_rollup(now: datetime | None = None) -> RollupRun:
    """One scheduled pass: ``rollup_hours``, then ``rollup_days``, then ``retention_apply``, all
    at the same ``now`` (default: now)."""
    now = now or timezone.now()
    hours = rollup_hours(now)
    days = rollup_days(now)
    return RollupRun(hour=hours, day=days, deleted=retention_apply(now))
