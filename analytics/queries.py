"""Analytics reads: usage totals, series and latency percentiles over any time range.

Usage is stored per minute (``UsageRecord``), per hour (``UsageHourly``) and per day
(``UsageDaily``); roll-ups (``analytics.tasks``) record how far they have gone in
``RollupState``. ``plan`` splits a range ``[start, end)`` into parts, each read from the coarsest
rows that are complete there: whole days below the day mark from ``UsageDaily``, whole hours
below the hour mark from ``UsageHourly``, the rest from ``UsageRecord``. A roll-up's rows are
exact sums of the finer rows, so every reader sees the same numbers whatever the split: the
dashboards, CSV and REST exports, the quota shown on the limits panel, throttling's quota
seeding and billing all call these functions.

Who may see what is decided by the caller, which passes the subscriptions in scope
(``subscriptions``: ids, or a ``Subscription`` queryset used as a subquery).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import F, Model, QuerySet, Sum
from django.db.models.functions import Trunc

from analytics.models import (
    LATENCY_BOUNDS_US,
    LATENCY_INF_US,
    LatencyDaily,
    LatencyHourly,
    LatencyRecord,
    RollupState,
    UsageCounts,
    UsageDaily,
    UsageHourly,
    UsageRecord,
)

RESOLUTIONS = ("minute", "hour", "day")
STEP = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
USAGE_MODELS: dict[str, type[UsageCounts]] = {"minute": UsageRecord, "hour": UsageHourly, "day": UsageDaily}
LATENCY_MODELS: dict[str, type[Model]] = {"minute": LatencyRecord, "hour": LatencyHourly, "day": LatencyDaily}
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)

Subscriptions = Iterable[int] | QuerySet | None


@dataclass
class Counts:
    """Summed usage counts (``UsageCounts.COUNT_FIELDS``): events and bytes delivered (billed)
    and the events not delivered, by reason."""

    events: int = 0
    bytes: int = 0
    throttled_events: int = 0
    throttled_bytes: int = 0
    dropped_events: int = 0
    rejected_events: int = 0
    failed_events: int = 0

    def add(self, row: dict[str, Any]) -> None:
        """Add the count columns of a ``values()`` row (missing or NULL ones count 0)."""
        for name in UsageCounts.COUNT_FIELDS:
            setattr(self, name, getattr(self, name) + (row.get(name) or 0))

    @property
    def errors(self) -> int:
        """Events not delivered for any reason (throttled, dropped, rejected, failed)."""
        return self.throttled_events + self.dropped_events + self.rejected_events + self.failed_events

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def floor(moment: datetime, resolution: str) -> datetime:
    """``moment`` rounded down to the start of its minute, hour or day (UTC)."""
    moment = moment.astimezone(UTC).replace(second=0, microsecond=0)
    if resolution in ("hour", "day"):
        moment = moment.replace(minute=0)
    if resolution == "day":
        moment = moment.replace(hour=0)
    return moment


def ceil(moment: datetime, resolution: str) -> datetime:
    """``moment`` rounded up to a minute, hour or day boundary (unchanged if on one)."""
    down = floor(moment, resolution)
    return down if down == moment else down + STEP[resolution]


def marks() -> dict[str, datetime | None]:
    """How far the hour and day roll-ups have gone (``RollupState``): one query."""
    found = dict(RollupState.objects.values_list("resolution", "rolled_until"))
    return {"hour": found.get("hour"), "day": found.get("day")}


def plan(
    start: datetime | None, end: datetime | None, *, coarsest: str = "day", rolled: dict | None = None
) -> list[tuple[str, datetime, datetime]]:
    """Split ``[start, end)`` into ``(resolution, part start, part end)`` parts, each to be read
    from the coarsest complete rows no coarser than ``coarsest`` (see the module docstring).
    Parts are in time order and cover the range exactly; None means unbounded."""
    start = (start or EARLIEST).astimezone(UTC)
    end = (end or LATEST).astimezone(UTC)
    rolled = marks() if rolled is None else rolled
    levels = [
        (resolution, rolled.get(resolution))
        for resolution in ("day", "hour")
        if RESOLUTIONS.index(resolution) <= RESOLUTIONS.index(coarsest)
    ]

    def split(a: datetime, b: datetime, levels: list) -> list[tuple[str, datetime, datetime]]:
        if a >= b:
            return []
        if not levels:
            return [("minute", a, b)]
        (resolution, until), rest = levels[0], levels[1:]
        lo = ceil(a, resolution)
        hi = min(floor(b, resolution), until) if until is not None else lo
        if lo >= hi:
            return split(a, b, rest)
        return [*split(a, lo, rest), (resolution, lo, hi), *split(hi, b, rest)]

    return split(start, end, levels)


def _reusable(subscriptions: Subscriptions) -> Subscriptions:
    """``subscriptions`` as something every part of a plan can read again (a one-shot iterable
    would be used up by the first part)."""
    if subscriptions is None or isinstance(subscriptions, QuerySet):
        return subscriptions
    return list(subscriptions)


def _filtered(
    model: type[Model],
    part_start: datetime,
    part_end: datetime,
    *,
    subscriptions: Subscriptions,
    direction: str | None,
    channel: str | None,
) -> QuerySet:
    rows = model.objects.filter(bucket_start__gte=part_start, bucket_start__lt=part_end)
    if subscriptions is not None:
        rows = rows.filter(
            subscription_id__in=subscriptions if isinstance(subscriptions, QuerySet) else list(subscriptions)
        )
    if direction is not None:
        rows = rows.filter(direction=direction)
    if channel is not None:
        rows = rows.filter(channel=channel)
    return rows


def usage_grouped(
    *,
    subscriptions: Subscriptions,
    start: datetime | None = None,
    end: datetime | None = None,
    by: Sequence[str] = (),
    step: str | None = None,
    direction: str | None = None,
    channel: str | None = None,
) -> dict[tuple, Counts]:
    """Usage of ``subscriptions`` in ``[start, end)`` summed per group: keys are tuples of the
    ``by`` columns (``subscription_id``, ``channel``, ``direction``), preceded by the bucket
    start rounded down to ``step`` (``minute``, ``hour``, ``day``) when a step is given.
    Only groups with rows appear. Raises ``ValueError`` for an unknown column or step."""
    subscriptions = _reusable(subscriptions)
    for column in by:
        if column not in ("subscription_id", "channel", "direction"):
            raise ValueError(f"cannot group usage by {column!r}")
    if step is not None and step not in RESOLUTIONS:
        raise ValueError(f"step must be one of {RESOLUTIONS}, not {step!r}")
    result: dict[tuple, Counts] = {}
    for resolution, part_start, part_end in plan(start, end, coarsest=step or "day"):
        rows = _filtered(
            USAGE_MODELS[resolution],
            part_start,
            part_end,
            subscriptions=subscriptions,
            direction=direction,
            channel=channel,
        )
        columns = list(by)
        if step is not None:
            rows = rows.annotate(
                step_start=Trunc("bucket_start", step, tzinfo=UTC)
                if step != resolution
                else F("bucket_start")
            )
            columns = ["step_start", *columns]
        values = rows.values(*columns) if columns else rows
        sums = {name: Sum(name) for name in UsageCounts.COUNT_FIELDS}
        aggregated = values.annotate(**sums).order_by() if columns else [values.aggregate(**sums)]
        for row in aggregated:
            key = tuple(row[column] for column in columns)
            result.setdefault(key, Counts()).add(row)
    return result


def usage_totals(
    *,
    subscriptions: Subscriptions,
    start: datetime | None = None,
    end: datetime | None = None,
    direction: str | None = None,
    channel: str | None = None,
) -> Counts:
    """All usage counts of ``subscriptions`` in ``[start, end)`` (bucket starts), optionally of
    one direction (``out``/``in``) or channel template. What billing charges for a period is
    ``events``/``bytes`` of this."""
    grouped = usage_grouped(
        subscriptions=subscriptions, start=start, end=end, direction=direction, channel=channel
    )
    return grouped.get((), Counts())


def usage_series(
    *,
    subscriptions: Subscriptions,
    start: datetime,
    end: datetime,
    step: str,
    direction: str | None = None,
    channel: str | None = None,
) -> list[tuple[datetime, Counts]]:
    """Usage per ``step`` from ``floor(start)`` to ``end``, oldest first, empty steps as zeros
    (a chart's x axis). Raises ``ValueError`` for an unknown step or more than 10,000 steps."""
    first = floor(start, step)
    count = int((end - first) / STEP[step]) + (0 if ceil(end, step) == end else 1)
    if count > 10_000:
        raise ValueError(
            f"{count:,} {step}s between {start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M}: choose a larger step"
        )
    grouped = usage_grouped(
        subscriptions=subscriptions, start=first, end=end, step=step, direction=direction, channel=channel
    )
    return [
        (moment, grouped.get((moment,), Counts()))
        for moment in (first + STEP[step] * i for i in range(max(count, 0)))
    ]


def latency_histogram(
    *,
    subscriptions: Subscriptions,
    start: datetime | None = None,
    end: datetime | None = None,
    direction: str | None = "out",
    channel: str | None = None,
    step: str | None = None,
) -> dict[Any, dict[int, int]]:
    """Publish → deliver latency histogram of ``subscriptions`` in ``[start, end)``: bucket
    upper bound in µs (``LATENCY_BOUNDS_US``) → events. Keyed by ``None`` for the whole range,
    or by the step's start when ``step`` is given."""
    subscriptions = _reusable(subscriptions)
    result: dict[Any, dict[int, int]] = {}
    for resolution, part_start, part_end in plan(start, end, coarsest=step or "day"):
        rows = _filtered(
            LATENCY_MODELS[resolution],
            part_start,
            part_end,
            subscriptions=subscriptions,
            direction=direction,
            channel=channel,
        )
        if step is not None:
            rows = rows.annotate(
                step_start=Trunc("bucket_start", step, tzinfo=UTC)
                if step != resolution
                else F("bucket_start")
            )
            rows = rows.values("step_start", "le_us")
        else:
            rows = rows.values("le_us")
        for row in rows.annotate(total=Sum("count")).order_by():
            buckets = result.setdefault(row.get("step_start"), {})
            buckets[row["le_us"]] = buckets.get(row["le_us"], 0) + row["total"]
    return result


def percentiles(
    histogram: dict[int, int], quantiles: Sequence[float] = (0.5, 0.95, 0.99)
) -> dict[float, float | None]:
    """Each quantile of a latency histogram (µs bound → events) as the upper bound, in seconds,
    of the bucket holding that rank (the Prometheus ``histogram_quantile`` convention without
    interpolation: the true value is at most this and above the previous bound). A rank in the
    open +Inf bucket is ``math.inf`` (above the last bound, 60 s). None when the histogram is
    empty."""
    total = sum(histogram.values())
    result: dict[float, float | None] = {}
    for quantile in quantiles:
        if not total:
            result[quantile] = None
            continue
        rank = quantile * total
        seen = 0
        for bound in LATENCY_BOUNDS_US:
            seen += histogram.get(bound, 0)
            if seen >= rank:
                result[quantile] = math.inf if bound == LATENCY_INF_US else bound / 1_000_000
                break
    return result


def bucket_bounds(le_us: int) -> tuple[float, float | None]:
    """The (lower, upper) bounds in seconds of the histogram bucket ``le_us`` (upper None: +Inf)."""
    index = LATENCY_BOUNDS_US.index(le_us)
    lower = LATENCY_BOUNDS_US[index - 1] / 1_000_000 if index else 0.0
    return lower, (None if le_us == LATENCY_INF_US else le_us / 1_000_000)
