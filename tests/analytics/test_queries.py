"""analytics.queries: how a range is split over minute, hour and day rows, zero-filled series and
latency percentiles (exact to within one histogram bucket)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from analytics.dashboard import latency_text
from analytics.models import LATENCY_BOUNDS_US, LATENCY_INF_US
from analytics.queries import EARLIEST, LATEST, Counts, latency_histogram, percentiles, plan, usage_series
from analytics.services import latency_record_batch, usage_counts_batch
from gateway.metering import latency_bucket
from tests.factories import SubscriptionFactory

DAY_MARK = datetime(2026, 11, 1, tzinfo=UTC)
HOUR_MARK = datetime(2026, 11, 1, 3, tzinfo=UTC)
ROLLED = {"day": DAY_MARK, "hour": HOUR_MARK}


def at(day: int, hour: int = 0, minute: int = 0, month: int = 10) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def test_without_rollups_a_range_is_read_from_minute_rows():
    start, end = at(30, 10, 15), at(1, 5, 30, month=11)
    assert plan(start, end, rolled={"day": None, "hour": None}) == [("minute", start, end)]


def test_a_range_is_read_from_days_then_hours_then_minutes_below_each_mark():
    assert plan(at(30, 10, 15), at(1, 5, 30, month=11), rolled=ROLLED) == [
        ("minute", at(30, 10, 15), at(30, 11)),
        ("hour", at(30, 11), at(31)),
        ("day", at(31), DAY_MARK),
        ("hour", DAY_MARK, HOUR_MARK),
        ("minute", HOUR_MARK, at(1, 5, 30, month=11)),
    ]


def test_coarsest_limits_the_resolution_used():
    start, end = at(30, 10, 15), at(1, 5, 30, month=11)
    assert plan(start, end, coarsest="hour", rolled=ROLLED) == [
        ("minute", start, at(30, 11)),
        ("hour", at(30, 11), HOUR_MARK),
        ("minute", HOUR_MARK, end),
    ]
    assert plan(start, end, coarsest="minute", rolled=ROLLED) == [("minute", start, end)]


def test_unbounded_range_and_ranges_past_the_marks():
    assert plan(None, None, rolled=ROLLED) == [
        ("day", EARLIEST, DAY_MARK),
        ("hour", DAY_MARK, HOUR_MARK),
        ("minute", HOUR_MARK, LATEST),
    ]
    after = (at(1, 4, month=11), at(2, month=11))
    assert plan(*after, rolled=ROLLED) == [("minute", *after)]
    assert plan(at(31, 12), at(31, 12), rolled=ROLLED) == []
    # A part within one hour below the mark, not on hour boundaries: minutes only.
    assert plan(at(31, 12, 5), at(31, 12, 55), rolled=ROLLED) == [("minute", at(31, 12, 5), at(31, 12, 55))]


def test_bounds_in_another_time_zone_are_read_as_the_same_instants():
    paris = timezone(timedelta(hours=1))
    start = datetime(2026, 10, 31, 1, 0, tzinfo=paris)  # 00:00 UTC
    assert plan(start, at(1, 2, month=11), rolled=ROLLED) == [
        ("day", at(31), DAY_MARK),
        ("hour", DAY_MARK, at(1, 2, month=11)),
    ]


def test_parts_cover_any_range_exactly_and_stay_below_their_marks():
    rng = random.Random(7)
    base = at(1)
    for _ in range(2000):
        start = base + timedelta(minutes=rng.randrange(0, 60 * 24 * 40))
        end = start + timedelta(minutes=rng.randrange(0, 60 * 24 * 10))
        hour_mark = base + timedelta(hours=rng.randrange(0, 24 * 45))
        day_mark = min(hour_mark.replace(hour=0), base + timedelta(days=rng.randrange(0, 45)))
        rolled = {"day": day_mark, "hour": hour_mark}
        for coarsest in ("day", "hour", "minute"):
            parts = plan(start, end, coarsest=coarsest, rolled=rolled)
            assert [p[1] for p in parts[:1]] == ([start] if start < end else [])
            assert [p[2] for p in parts[-1:]] == ([end] if start < end else [])
            for (_, _, previous_end), (_, part_start, _) in zip(parts, parts[1:], strict=False):
                assert previous_end == part_start
            for resolution, part_start, part_end in parts:
                assert part_start < part_end
                if resolution == "day":
                    assert coarsest == "day" and part_end <= day_mark
                    assert part_start.hour == part_end.hour == 0 and part_start.minute == part_end.minute == 0
                if resolution == "hour":
                    assert coarsest in ("day", "hour") and part_end <= hour_mark
                    assert part_start.minute == part_end.minute == 0


def test_usage_series_fills_steps_without_rows_with_zeros(db):
    subscription = SubscriptionFactory()
    usage_counts_batch(
        rows=[
            (subscription.pk, at(31, 1, 10), "prices/{symbol}", "out", 4, 400, 1, 10, 0, 0, 0),
            (subscription.pk, at(31, 1, 59), "prices/{symbol}", "out", 1, 100, 0, 0, 2, 0, 0),
            (subscription.pk, at(31, 3, 0), "orders", "in", 7, 70, 0, 0, 0, 3, 1),
        ]
    )
    series = usage_series(
        subscriptions=[subscription.pk], start=at(31, 0, 30), end=at(31, 4, 30), step="hour"
    )

    assert [moment for moment, _ in series] == [at(31, hour) for hour in range(5)]
    assert [counts.as_dict() for _, counts in series] == [
        Counts().as_dict(),
        Counts(events=5, bytes=500, throttled_events=1, throttled_bytes=10, dropped_events=2).as_dict(),
        Counts().as_dict(),
        Counts(events=7, bytes=70, rejected_events=3, failed_events=1).as_dict(),
        Counts().as_dict(),
    ]
    minutes = usage_series(
        subscriptions=[subscription.pk], start=at(31, 1, 8), end=at(31, 1, 12), step="minute"
    )
    assert [(moment.minute, counts.events) for moment, counts in minutes] == [
        (8, 0),
        (9, 0),
        (10, 4),
        (11, 0),
    ]


def test_usage_series_refuses_too_many_steps():
    with pytest.raises(ValueError, match="choose a larger step"):
        usage_series(subscriptions=[1], start=at(1), end=at(31), step="minute")


def test_percentiles_are_exact_to_within_one_histogram_bucket(db):
    subscription = SubscriptionFactory()
    rng = random.Random(11)
    delays = [rng.lognormvariate(math.log(0.02), 1.2) for _ in range(5000)]
    counts: dict[int, int] = {}
    for delay in delays:
        bound = LATENCY_BOUNDS_US[latency_bucket(-delay, 0.0)]  # published at -delay, delivered at 0
        counts[bound] = counts.get(bound, 0) + 1
    latency_record_batch(
        rows=[(subscription.pk, at(31, 9), "prices/{symbol}", "out", bound, n) for bound, n in counts.items()]
    )

    histogram = latency_histogram(subscriptions=[subscription.pk])[None]
    assert histogram == counts
    reported = percentiles(histogram, (0.5, 0.9, 0.95, 0.99))
    ordered = sorted(delays)
    for quantile, upper in reported.items():
        true = ordered[math.ceil(quantile * len(ordered)) - 1]  # nearest rank
        index = LATENCY_BOUNDS_US.index(round(upper * 1_000_000))
        lower = LATENCY_BOUNDS_US[index - 1] / 1_000_000 if index else 0.0
        assert lower < true <= upper, (quantile, lower, true, upper)


def test_percentiles_of_known_histograms():
    histogram = {1000: 50, 5000: 45, 100_000: 5}  # ≤1 ms: 50 events, ≤5 ms: 45, ≤100 ms: 5
    assert percentiles(histogram) == {0.5: 0.001, 0.95: 0.005, 0.99: 0.1}
    # Ranks in the open +Inf bucket are above the last bound: infinity ("> 60 s" on pages, null in REST).
    assert percentiles({1000: 1, LATENCY_INF_US: 99}, (0.5,)) == {0.5: math.inf}
    assert latency_text(math.inf) == "> 60 s" and latency_text(0.0075) == "≤ 7.5 ms"
    assert percentiles({}, (0.5, 0.99)) == {0.5: None, 0.99: None}
