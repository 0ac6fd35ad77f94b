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
rows that a re-roll still reads. The bound: a minute row written at most ``ANALYTICS_REROLL_HOURS``
hours after its minute ends (less one roll-up interval, ``ANALYTICS_ROLLUP_SCHEDULE_SECONDS``)
reaches its hour and day rows at the next run; until that run, readers of ranges below the mark
miss it (at most one interval). A row later than that stays in the minute rows only, which
readers of whole hours below the mark no longer look at (a gateway whose database was
unreachable for longer than ``ANALYTICS_REROLL_HOURS``). ``ANALYTICS_ROLLUP_GRACE_SECONDS``
(default 300 s, well above ``GATEWAY_FLUSH_INTERVAL``) keeps a healthy gateway's last flush of an
hour ahead of that hour's first roll-up.

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
    RollupState,
    UsageCounts,
    UsageDaily,
    UsageHourly,
    UsageRecord,
    WebhookRecord,
)
from analytics.queries import floor, marks

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
    for buckets in ``[start, end)`` (``usage_rows``, ``latency_rows``), and the mark before and
    after (``rolled_until``; unchanged when nothing new was complete). For days before the first
    hour roll-up there is nothing to go on: ``start``/``end``/``previous_mark`` are None."""

    resolution: str
    start: datetime | None
    end: datetime | None
    usage_rows: int
    latency_rows: int
    previous_mark: datetime | None
    rolled_until: datetime | None


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


def _rollup(resolution: str, target: datetime, earliest: type[Model]) -> RollupResult:
    """Roll ``resolution`` up to ``target`` (see the module docstring): in one transaction, lock
    the mark, set the rows of ``[floor(mark − re-roll window), max(mark, target))``, advance the
    mark to ``target`` if it is ahead. A missing mark starts at ``earliest``'s first row (or at
    ``target`` when that table is empty)."""
    with transaction.atomic():
        first = earliest.objects.aggregate(first=Min("bucket_start"))["first"]
        mark = _locked_mark(
            resolution, min(floor(first, resolution), target) if first is not None else target
        )
        start = floor(mark - reroll(), resolution)
        end = max(mark, target)
        usage_rows, latency_rows = _roll(resolution, start, end)
        if target > mark:
            RollupState.objects.filter(resolution=resolution, rolled_until__lt=target).update(
                rolled_until=target, updated_at=timezone.now()
            )
    return RollupResult(resolution, start, end, usage_rows, latency_rows, mark, max(mark, target))


def rollup_hours(now: datetime | None = None) -> RollupResult:
    """Roll minute rows up into ``UsageHourly``/``LatencyHourly`` for every whole hour (UTC)
    that ended at least ``ANALYTICS_ROLLUP_GRACE_SECONDS`` before ``now`` (default: now), again
    for the ``ANALYTICS_REROLL_HOURS`` hours below the hour mark (late rows), and move the hour
    mark to the end of the last such hour. Safe to run twice or concurrently. Raises
    ``NotSupportedError`` on a database other than PostgreSQL or SQLite."""
    now = now or timezone.now()
    return _rollup("hour", floor(now - grace(), "hour"), UsageRecord)


def rollup_days(now: datetime | None = None) -> RollupResult:
    """Roll hour rows up into ``UsageDaily``/``LatencyDaily`` for every whole day (UTC) below the
    hour mark, again for every day holding one of the ``ANALYTICS_REROLL_HOURS`` hours below
    the day mark, and move the day mark to the last such day's end. Does nothing before the
    first ``rollup_hours``. ``now`` is unused (the hour mark decides); accepted for symmetry."""
    hour_mark = marks()["hour"]
    if hour_mark is None:
        return RollupResult("day", None, None, 0, 0, None, marks()["day"])
    return _rollup("day", floor(hour_mark, "day"), UsageHourly)


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
