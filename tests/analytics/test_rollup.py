"""analytics.rollup: minute rows rolled up into hours and days read exactly as before, on the
dashboards' queries, billing and the quota; late rows, repeated and concurrent runs, retention,
the Celery task on a real worker, and the same SQL on SQLite (the local default database)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from analytics.models import (
    LATENCY_BOUNDS_US,
    ConnectionRecord,
    HandshakeRecord,
    LatencyDaily,
    LatencyHourly,
    LatencyRecord,
    RollupDirty,
    UsageCounts,
    UsageDaily,
    UsageHourly,
    UsageRecord,
)
from analytics.queries import (
    floor,
    latency_histogram,
    marks,
    percentiles,
    usage_grouped,
    usage_series,
    usage_totals,
)
from analytics.rollup import analytics_rollup, retention_apply, rollup_days, rollup_hours
from analytics.services import latency_record_batch, usage_counts_batch, usage_for_subscription
from analytics.tasks import analytics_rollup_task
from portal.celery import app as celery_app
from portal.models import Subscription
from tests.factories import BusinessPlanFactory, SubscriptionFactory
from tests.fixtures.servers import ServerProcess, amqp_queues_delete, celery_worker_start

MINUTE = timedelta(minutes=1)
OCTOBER = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
NOVEMBER = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
FIRST = datetime(2026, 10, 30, 21, 0, tzinfo=UTC)
LAST_MINUTE_OF_OCTOBER = datetime(2026, 10, 31, 23, 59, tzinfo=UTC)
# Rolled up at 03:07: the hour mark is 03:00 (03:00 ended 2 minutes ago, within the 5-minute
# grace), the day mark 1 November; rows from 03:00 on stay minute rows.
NOW = datetime(2026, 11, 1, 3, 7, tzinfo=UTC)
HOUR_MARK = datetime(2026, 11, 1, 3, tzinfo=UTC)
DAY_MARK = NOVEMBER[0]
LATER = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)  # every row's day is rolled up by then
CHANNELS = ("prices/{symbol}", "orders")

Row = tuple  # a CountRow or LatencyRow of analytics.services


def minute_rows(subscriptions: list[int]) -> tuple[list[Row], list[Row]]:
    """Known usage and latency rows: every 7th minute from 30 October 21:00 to 1 November 03:06,
    plus the first and last minutes of 31 October and 1 November 00:00, for each subscription,
    in both channels and directions, with every count column set."""
    moments = {FIRST + MINUTE * i for i in range(0, int((NOW - FIRST) / MINUTE), 7)}
    moments |= {datetime(2026, 10, 31, tzinfo=UTC), LAST_MINUTE_OF_OCTOBER, DAY_MARK, NOW - MINUTE}
    usage: list[Row] = []
    latency: list[Row] = []
    for i, moment in enumerate(sorted(moments)):
        for j, subscription in enumerate(subscriptions):
            channel, direction = CHANNELS[(i + j) % 2], ("out", "in")[i % 3 == 0]
            events = 1 + (i * 7 + j) % 13
            counts = (events, events * 100 + i, i % 3, i % 5, j, i % 2, i % 4 // 3)
            usage.append((subscription, moment, channel, direction, *counts))
            if direction == "out":
                latency.append((subscription, moment, channel, "out", LATENCY_BOUNDS_US[i % 30], 1 + i % 4))
                latency.append((subscription, moment, channel, "out", LATENCY_BOUNDS_US[(i * 7) % 29], 2))
    return usage, latency


def expected_totals(rows: list[Row], start: datetime, end: datetime, **match: Any) -> dict[str, int]:
    """Sums of the count columns of ``rows`` in ``[start, end)``, computed here (not by SQL)."""
    totals = dict.fromkeys(UsageCounts.COUNT_FIELDS, 0)
    for row in rows:
        if start <= row[1] < end and all(
            row[{"subscription": 0, "channel": 2, "direction": 3}[k]] == v for k, v in match.items()
        ):
            for name, value in zip(UsageCounts.COUNT_FIELDS, row[4:], strict=True):
                totals[name] += value
    return totals


def write(subscriptions: list[int]) -> tuple[list[Row], list[Row]]:
    usage, latency = minute_rows(subscriptions)
    usage_counts_batch(rows=usage)
    latency_record_batch(rows=latency)
    return usage, latency


def snapshot(subscriptions: list[int]) -> dict[str, Any]:
    """What the dashboards, CSV exports and billing read, over ranges whose edges are whole hours
    (so they read the same once the minute rows are gone)."""
    hour = datetime(2026, 10, 31, 22, tzinfo=UTC)
    return {
        "all": usage_totals(subscriptions=subscriptions).as_dict(),
        "october": usage_totals(subscriptions=subscriptions, start=OCTOBER[0], end=OCTOBER[1]).as_dict(),
        "november": usage_totals(subscriptions=subscriptions, start=NOVEMBER[0], end=NOVEMBER[1]).as_dict(),
        "around midnight": usage_totals(
            subscriptions=subscriptions, start=hour, end=hour + 4 * 60 * MINUTE
        ).as_dict(),
        "out of one": usage_totals(subscriptions=subscriptions[:1], direction="out").as_dict(),
        "orders": usage_totals(subscriptions=subscriptions, channel="orders").as_dict(),
        "grouped": {
            key: counts.as_dict()
            for key, counts in usage_grouped(
                subscriptions=subscriptions, by=("subscription_id", "channel", "direction")
            ).items()
        },
        "hours": [
            (moment, counts.as_dict())
            for moment, counts in usage_series(
                subscriptions=subscriptions, start=FIRST - 60 * MINUTE, end=NOW + 60 * MINUTE, step="hour"
            )
        ],
        "days": [
            (moment, counts.as_dict())
            for moment, counts in usage_series(
                subscriptions=subscriptions, start=OCTOBER[1] - timedelta(days=3), end=LATER, step="day"
            )
        ],
        "latency": latency_histogram(subscriptions=subscriptions),
        "latency by day": latency_histogram(subscriptions=subscriptions, step="day"),
        "latency by hour": latency_histogram(
            subscriptions=subscriptions, start=hour, end=hour + 4 * 60 * MINUTE, step="hour"
        ),
        "percentiles": percentiles(latency_histogram(subscriptions=subscriptions)[None]),
    }


def minute_snapshot(subscriptions: list[int]) -> dict[str, Any]:
    """Reads whose edges fall inside hours: the same before and after a roll-up."""
    return {
        "odd range": usage_totals(
            subscriptions=subscriptions,
            start=datetime(2026, 10, 31, 23, 30, tzinfo=UTC),
            end=datetime(2026, 11, 1, 1, 45, tzinfo=UTC),
        ).as_dict(),
        "minutes": [
            (moment, counts.events)
            for moment, counts in usage_series(
                subscriptions=subscriptions,
                start=LAST_MINUTE_OF_OCTOBER - 10 * MINUTE,
                end=DAY_MARK + 10 * MINUTE,
                step="minute",
            )
        ],
        "latency": latency_histogram(
            subscriptions=subscriptions,
            start=LAST_MINUTE_OF_OCTOBER - 20 * MINUTE,
            end=DAY_MARK + 75 * MINUTE,
        ),
    }


def coarse_rows() -> dict[str, list[tuple]]:
    """Every hour and day row, all columns, in a stable order."""
    return {
        model.__name__: sorted(
            model.objects.values_list(*(f.attname for f in model._meta.concrete_fields if f.attname != "id"))
        )
        for model in (UsageHourly, UsageDaily, LatencyHourly, LatencyDaily)
    }


def hourly_sums(rows: list[Row], before: datetime) -> dict[tuple, tuple]:
    """Hour rows expected from minute ``rows`` of hours before ``before``, computed here."""
    sums: dict[tuple, list[int]] = defaultdict(lambda: [0] * 7)
    for row in rows:
        if row[1] < before:
            key = (row[0], floor(row[1], "hour"), row[2], row[3])
            sums[key] = [a + b for a, b in zip(sums[key], row[4:], strict=True)]
    return {key: tuple(values) for key, values in sums.items()}


def hourly_rows() -> dict[tuple, tuple]:
    return {
        (r[0], r[1], r[2], r[3]): tuple(r[4:])
        for r in UsageHourly.objects.values_list(
            "subscription_id", "bucket_start", "channel", "direction", *UsageCounts.COUNT_FIELDS
        )
    }


@pytest.fixture
def subscriptions(db) -> list[int]:
    return [SubscriptionFactory().pk, SubscriptionFactory().pk]


def test_rolled_up_and_retained_rows_read_exactly_like_the_minute_rows(subscriptions, settings):
    usage, latency = write(subscriptions)
    before, before_minutes = snapshot(subscriptions), minute_snapshot(subscriptions)
    assert before["october"] == expected_totals(usage, *OCTOBER)
    assert before["around midnight"]["events"] > 0 and before["latency by day"]

    run = analytics_rollup(NOW)

    assert marks() == {"hour": HOUR_MARK, "day": DAY_MARK}
    assert (run.hour.rolled_until, run.day.rolled_until, run.deleted) == (HOUR_MARK, DAY_MARK, {})
    assert hourly_rows() == hourly_sums(usage, HOUR_MARK)
    assert set(UsageDaily.objects.values_list("bucket_start", flat=True)) == {
        datetime(2026, 10, 30, tzinfo=UTC),
        datetime(2026, 10, 31, tzinfo=UTC),
    }
    assert snapshot(subscriptions) == before
    assert minute_snapshot(subscriptions) == before_minutes

    # Two days later every row's day is rolled up; with a one-day minute retention every minute
    # row goes, and the same ranges still read the same from hour and day rows.
    settings.ANALYTICS_RETENTION_MINUTE_DAYS = 1
    run = analytics_rollup(LATER)

    assert marks() == {
        "hour": datetime(2026, 11, 3, 11, tzinfo=UTC),
        "day": datetime(2026, 11, 3, tzinfo=UTC),
    }
    # (Two latency rows of one minute and bucket are one LatencyRecord row.)
    assert run.deleted == {"UsageRecord": len(usage), "LatencyRecord": len({row[:5] for row in latency})}
    assert UsageRecord.objects.count() == LatencyRecord.objects.count() == 0
    assert snapshot(subscriptions) == before


def test_billing_reads_the_same_month_before_and_after_rollup(subscriptions):
    usage, _ = write(subscriptions)
    subscription = Subscription.objects.get(pk=subscriptions[0])
    expected = expected_totals(usage, *OCTOBER, subscription=subscription.pk, direction="out")

    def billed() -> tuple[int, int]:
        totals = usage_for_subscription(subscription=subscription, start=OCTOBER[0], end=OCTOBER[1])
        return totals.events, totals.bytes

    assert billed() == (expected["events"], expected["bytes"])
    analytics_rollup(NOW)
    shown = usage_totals(subscriptions=[subscription.pk], start=OCTOBER[0], end=OCTOBER[1], direction="out")
    assert billed() == (shown.events, shown.bytes) == (expected["events"], expected["bytes"])


def test_quota_and_limits_panel_count_rolled_up_usage(db, settings, monkeypatch):
    from gateway import auth
    from portal.services.limits import subscription_limits

    plan = BusinessPlanFactory(quota_events=1_000_000, quota_action="stop", counted_directions="out")
    subscription = SubscriptionFactory(plan=plan)
    usage, _ = write([subscription.pk])
    expected = expected_totals(usage, *NOVEMBER, direction="out")
    throttled = expected_totals(usage, *NOVEMBER)
    # The gateway's quota counts the calendar month of "now": fix it to November 2026.
    monkeypatch.setattr(auth, "month_start", lambda now=None: NOVEMBER[0])

    def read() -> tuple:
        period = subscription_limits(subscription, now=LATER)["period"]
        return (
            auth.quota_usage({subscription.pk: plan}),
            (period["events"], period["bytes"], period["throttled_events"], period["throttled_bytes"]),
        )

    before = read()
    assert before == (
        {subscription.pk: (expected["events"], expected["bytes"])},
        (expected["events"], expected["bytes"], throttled["throttled_events"], throttled["throttled_bytes"]),
    )
    settings.ANALYTICS_RETENTION_MINUTE_DAYS = 1
    analytics_rollup(NOW)
    analytics_rollup(LATER)
    assert UsageRecord.objects.count() == 0
    assert read() == before


def test_late_minute_rows_reach_hours_and_days_at_the_next_run(subscriptions):
    usage, _ = write(subscriptions)
    analytics_rollup(NOW)
    october = usage_totals(subscriptions=subscriptions, start=OCTOBER[0], end=OCTOBER[1])
    october_latency = latency_histogram(subscriptions=subscriptions, start=OCTOBER[0], end=OCTOBER[1])[None]

    # A gateway retries a failed flush: rows of hours (and a day) already rolled up arrive late.
    late = [
        (subscriptions[0], LAST_MINUTE_OF_OCTOBER, "prices/{symbol}", "out", 5, 500, 0, 0, 0, 0, 0),
        (subscriptions[1], datetime(2026, 11, 1, 1, 30, tzinfo=UTC), "late", "in", 3, 30, 1, 1, 1, 1, 1),
    ]
    usage_counts_batch(rows=late)
    latency_record_batch(rows=[(subscriptions[0], LAST_MINUTE_OF_OCTOBER, "prices/{symbol}", "out", 1000, 5)])
    # Until the next run, ranges below the marks read the rolled rows (the documented lateness).
    assert usage_totals(subscriptions=subscriptions, start=OCTOBER[0], end=OCTOBER[1]) == october

    analytics_rollup(NOW + 5 * MINUTE)

    assert (
        usage_totals(subscriptions=subscriptions, start=OCTOBER[0], end=OCTOBER[1]).events
        == october.events + 5
    )
    assert hourly_rows() == hourly_sums(usage + late, HOUR_MARK)
    one_thirty = usage_series(
        subscriptions=[subscriptions[1]], start=DAY_MARK, end=HOUR_MARK, step="hour", channel="late"
    )
    assert [counts.events for _, counts in one_thirty] == [0, 3, 0]
    assert latency_histogram(subscriptions=subscriptions, start=OCTOBER[0], end=OCTOBER[1])[None] == {
        **october_latency,
        1000: october_latency.get(1000, 0) + 5,
    }
    assert snapshot(subscriptions)["all"] == expected_totals(
        usage + late, datetime.min.replace(tzinfo=UTC), LATER
    )


def _late(subscription: int, minute: datetime, events: int) -> Row:
    return (subscription, minute, "prices/{symbol}", "out", events, events * 10, 0, 0, 0, 0, 0)


def _day_and_minutes(subscription: int, hour: datetime) -> tuple[int, int, int]:
    """What billing reads for the hour's whole day, the hour read per hour, and the hour read
    per minute (minute rows only)."""
    day = floor(hour, "day")
    billed = usage_for_subscription(
        subscription=Subscription.objects.get(pk=subscription), start=day, end=day + timedelta(days=1)
    ).events
    hourly = usage_series(subscriptions=[subscription], start=hour, end=hour + 60 * MINUTE, step="hour")
    minutes = usage_series(subscriptions=[subscription], start=hour, end=hour + 60 * MINUTE, step="minute")
    return billed, sum(c.events for _, c in hourly), sum(c.events for _, c in minutes)


def test_rows_flushed_later_than_the_reroll_window_reach_hours_and_days_at_the_next_run(subscriptions):
    # Real time: the flush decides what is late by the clock.
    now = timezone.now()
    hour = floor(now - timedelta(days=2), "hour")
    subscription = subscriptions[0]
    usage_counts_batch(rows=[_late(subscription, hour + 10 * MINUTE, 100)])
    latency_record_batch(rows=[(subscription, hour + 10 * MINUTE, "prices/{symbol}", "out", 5_000, 100)])
    analytics_rollup(now)
    assert _day_and_minutes(subscription, hour) == (100, 100, 100)
    assert not RollupDirty.objects.exists()

    # A gateway whose database was down for two days flushes at last: far below the six hours
    # every run rolls again. Its hour is marked, in the flush's transaction.
    usage_counts_batch(rows=[_late(subscription, hour + 20 * MINUTE, 7)])
    latency_record_batch(rows=[(subscription, hour + 20 * MINUTE, "prices/{symbol}", "out", 50_000, 7)])
    assert list(RollupDirty.objects.values_list("resolution", "bucket_start")) == [("hour", hour)]
    # Billing (day rows) and the per-hour chart still read the rolled rows; the per-minute chart
    # already has the late events: until the next run they disagree.
    assert _day_and_minutes(subscription, hour) == (100, 100, 107)

    run = analytics_rollup(now + 5 * MINUTE)

    assert (run.hour.rerolled, run.day.rerolled) == ((hour,), (floor(hour, "day"),))
    assert _day_and_minutes(subscription, hour) == (107, 107, 107)
    day = floor(hour, "day")
    assert latency_histogram(subscriptions=[subscription], start=day, end=day + timedelta(days=1))[None] == {
        5_000: 100,
        50_000: 7,
    }
    assert UsageDaily.objects.get(subscription_id=subscription, bucket_start=day).events == 107
    assert not RollupDirty.objects.exists()
    # Rows within the re-roll window are not marked: the next run rolls them anyway.
    usage_counts_batch(rows=[_late(subscription, floor(now - timedelta(hours=2), "minute"), 1)])
    assert not RollupDirty.objects.exists()


def test_a_late_hour_past_minute_retention_is_not_rolled_again(subscriptions, settings):
    """Its other minute rows are gone: rolling the hour again would set it to the late row
    alone. The mark is dropped, the hour keeps its sum, and retention deletes the late row."""
    settings.ANALYTICS_RETENTION_MINUTE_DAYS = 1
    now = timezone.now()
    hour = floor(now - timedelta(days=3), "hour")
    subscription = subscriptions[0]
    usage_counts_batch(rows=[_late(subscription, hour + 10 * MINUTE, 100)])
    analytics_rollup(now)
    assert not UsageRecord.objects.exists()  # rolled up, then past retention

    usage_counts_batch(rows=[_late(subscription, hour + 20 * MINUTE, 7)])
    run = analytics_rollup(now + 5 * MINUTE)

    assert run.hour.rerolled == () and not RollupDirty.objects.exists()
    assert UsageHourly.objects.get(subscription_id=subscription, bucket_start=hour).events == 100
    assert _day_and_minutes(subscription, hour)[:2] == (100, 100)
    assert not UsageRecord.objects.exists()


def test_a_late_flush_racing_the_rollup_is_read_or_stays_marked(transactional_db):
    """The flush marks an hour that is already marked, and holds its transaction open while a
    roll-up starts: the roll-up waits for it, then reads its rows (an upsert that ignored the
    existing mark would let the roll-up delete the mark and miss the rows for ever)."""
    subscription = SubscriptionFactory().pk
    now = timezone.now()
    hour = floor(now - timedelta(days=2), "hour")
    usage_counts_batch(rows=[_late(subscription, hour + 1 * MINUTE, 100)])
    analytics_rollup(now)
    usage_counts_batch(rows=[_late(subscription, hour + 2 * MINUTE, 5)])  # marked, committed
    flushed, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    results: list[Any] = []

    def flush() -> None:
        try:
            with transaction.atomic():
                usage_counts_batch(rows=[_late(subscription, hour + 3 * MINUTE, 7)])
                flushed.set()
                release.wait(10)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()

    def roll() -> None:
        try:
            results.append(rollup_hours(now + 5 * MINUTE))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()

    flusher = threading.Thread(target=flush)
    flusher.start()
    assert flushed.wait(10)
    roller = threading.Thread(target=roll)
    roller.start()
    roller.join(1.0)
    waited = roller.is_alive()  # the roll-up waits for the flush's lock on the mark
    release.set()
    flusher.join(10)
    roller.join(10)

    assert errors == [] and waited
    assert results[0].rerolled == (hour,)
    assert UsageHourly.objects.get(subscription_id=subscription, bucket_start=hour).events == 112
    assert list(RollupDirty.objects.values_list("resolution", flat=True)) == ["day"]
    rollup_days(now + 5 * MINUTE)
    day = floor(hour, "day")
    assert UsageDaily.objects.get(subscription_id=subscription, bucket_start=day).events == 112
    assert not RollupDirty.objects.exists()


def test_running_the_rollup_again_changes_nothing(subscriptions):
    write(subscriptions)
    analytics_rollup(NOW)
    rows, state = coarse_rows(), marks()

    analytics_rollup(NOW)
    rollup_hours(NOW + 2 * MINUTE)
    rollup_days(NOW + 2 * MINUTE)

    assert coarse_rows() == rows
    assert marks() == state
    # An earlier clock never moves a mark back.
    rollup_hours(NOW - timedelta(hours=5))
    assert marks() == state


def test_concurrent_rollups_write_each_sum_once(transactional_db):
    subscriptions = [SubscriptionFactory().pk, SubscriptionFactory().pk]
    usage, _ = write(subscriptions)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait()
            rollup_hours(NOW)
            rollup_days(NOW)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert marks() == {"hour": HOUR_MARK, "day": DAY_MARK}
    assert hourly_rows() == hourly_sums(usage, HOUR_MARK)
    october = UsageDaily.objects.filter(bucket_start__lt=OCTOBER[1]).values_list("events", flat=True)
    assert sum(october) == expected_totals(usage, *OCTOBER)["events"]


def test_retention_keeps_rows_not_yet_rolled_up_and_deletes_old_ones_in_batches(subscriptions, settings):
    usage, latency = write(subscriptions)
    analytics_rollup(NOW)
    settings.ANALYTICS_RETENTION_MINUTE_DAYS = 1
    settings.ANALYTICS_RETENTION_HOUR_DAYS = 1
    settings.ANALYTICS_RETENTION_DAY_DAYS = 0
    subscription = Subscription.objects.get(pk=subscriptions[0])
    for days_ago in (91, 89):
        at = NOW + timedelta(days=60) - timedelta(days=days_ago)
        ConnectionRecord.objects.create(
            subscription=subscription,
            application=subscription.application,
            api=subscription.api,
            version="1.0.0",
            protocol="websocket",
            opened_at=at,
            closed_at=at,
            duration_seconds=0,
        )
        HandshakeRecord.objects.create(at=at, outcome="accepted", protocol="websocket")

    # Sixty days on, without a roll-up since: minute rows go only below the hour mark less the
    # six hours rolled again (21:00), hour rows only below the day re-roll window (31 October).
    re_roll, october_31 = HOUR_MARK - timedelta(hours=6), datetime(2026, 10, 31, tzinfo=UTC)
    old_hours = {
        model: model.objects.filter(bucket_start__lt=october_31).count()
        for model in (UsageHourly, LatencyHourly)
    }
    days = {model: model.objects.count() for model in (UsageDaily, LatencyDaily)}

    deleted = retention_apply(NOW + timedelta(days=60), batch_size=7)

    assert deleted == {
        "UsageRecord": sum(1 for row in usage if row[1] < re_roll),
        "LatencyRecord": len({row[:5] for row in latency if row[1] < re_roll}),
        "UsageHourly": old_hours[UsageHourly],
        "LatencyHourly": old_hours[LatencyHourly],
        "ConnectionRecord": 1,
        "HandshakeRecord": 1,
    }
    assert old_hours[UsageHourly] > 7 and old_hours[LatencyHourly] > 7  # several batches
    assert UsageRecord.objects.filter(bucket_start__lt=re_roll).count() == 0
    assert UsageRecord.objects.count() == sum(1 for row in usage if row[1] >= re_roll)
    assert UsageHourly.objects.filter(bucket_start__gte=october_31).count() > 0
    assert {model: model.objects.count() for model in (UsageDaily, LatencyDaily)} == days
    assert ConnectionRecord.objects.count() == HandshakeRecord.objects.count() == 1
    # Whole days and the hours still kept read as before.
    assert usage_totals(
        subscriptions=subscriptions, start=OCTOBER[0], end=OCTOBER[1]
    ).as_dict() == expected_totals(usage, *OCTOBER)
    # Day rows are deleted only when a day retention is set.
    settings.ANALYTICS_RETENTION_DAY_DAYS = 30
    deleted = retention_apply(NOW + timedelta(days=60))
    assert (deleted["UsageDaily"], deleted["LatencyDaily"]) == (days[UsageDaily], days[LatencyDaily])


def test_beat_runs_the_rollup_task_every_few_minutes():
    entry = settings.CELERY_BEAT_SCHEDULE["analytics-rollup"]
    assert entry["task"] == analytics_rollup_task.name == "analytics.tasks.analytics_rollup_task"
    assert entry["schedule"] == settings.ANALYTICS_ROLLUP_SCHEDULE_SECONDS == 300.0


@pytest.fixture(scope="module")
def rollup_worker(django_db_setup, tmp_path_factory) -> Iterator[ServerProcess]:
    queue = f"eventgate-rollup-tasks-{uuid.uuid4().hex[:8]}"
    worker = celery_worker_start(tmp_path_factory.mktemp("rollup-worker") / "worker.log", queue=queue)
    saved_queue = celery_app.conf.task_default_queue
    celery_app.conf.task_default_queue = queue
    try:
        yield worker
    finally:
        celery_app.conf.task_default_queue = saved_queue
        worker.stop()
        amqp_queues_delete(queue)


@pytest.mark.e2e
def test_rollup_task_on_a_real_worker_advances_the_marks(rollup_worker, transactional_db):
    subscription = SubscriptionFactory().pk
    hour_mark = floor(datetime.now(UTC) - timedelta(seconds=settings.ANALYTICS_ROLLUP_GRACE_SECONDS), "hour")
    recent, older = hour_mark - timedelta(minutes=110), hour_mark - timedelta(hours=26, minutes=-5)
    usage_counts_batch(
        rows=[
            (subscription, recent, "prices/{symbol}", "out", 12, 1200, 0, 0, 0, 0, 0),
            (subscription, older, "prices/{symbol}", "out", 30, 3000, 0, 0, 0, 0, 0),
        ]
    )

    analytics_rollup_task.delay()

    deadline = time.monotonic() + 30
    while "analytics_rollup_task" not in rollup_worker.log() or " succeeded in " not in rollup_worker.log():
        assert time.monotonic() < deadline, f"no roll-up within 30 s:\n{rollup_worker.log()}"
        time.sleep(0.2)
    rolled = marks()
    assert rolled["hour"] >= hour_mark and rolled["day"] == floor(rolled["hour"], "day")
    assert set(UsageHourly.objects.values_list("bucket_start", "events")) == {
        (floor(recent, "hour"), 12),
        (floor(older, "hour"), 30),
    }
    # The older row's day always ended before the hour mark; the recent one's only after 01:50.
    days = {(floor(older, "day"), 30)}
    if floor(recent, "day") < rolled["day"]:
        days.add((floor(recent, "day"), 12))
    assert set(UsageDaily.objects.values_list("bucket_start", "events")) == days


SQLITE_SCRIPT = """
import json, os, django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from analytics.models import UsageRecord, UsageHourly, UsageDaily, LatencyHourly
from analytics.rollup import analytics_rollup
from tests.analytics.test_rollup import LATER, NOW, hourly_rows, hourly_sums, minute_snapshot, snapshot, write
from tests.factories import SubscriptionFactory
subscriptions = [SubscriptionFactory().pk, SubscriptionFactory().pk]
usage, _ = write(subscriptions)
before, before_minutes = snapshot(subscriptions), minute_snapshot(subscriptions)
first = analytics_rollup(NOW)
same = snapshot(subscriptions) == before and minute_snapshot(subscriptions) == before_minutes
exact = hourly_rows() == hourly_sums(usage, first.hour.rolled_until)
second = analytics_rollup(LATER)
print(json.dumps({
    "marks": [str(first.hour.rolled_until), str(first.day.rolled_until), str(second.day.rolled_until)],
    "same_after_rollup": same,
    "hour_rows_exact": exact,
    "same_after_retention": snapshot(subscriptions) == before,
    "minute_rows_left": UsageRecord.objects.count(),
    "days": UsageDaily.objects.count(),
    "october_events": before["october"]["events"],
}))
"""


@pytest.mark.e2e  # a second Python process, on its own SQLite file
def test_the_same_rollup_runs_on_sqlite(tmp_path, subscriptions):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="portal.settings",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        ANALYTICS_RETENTION_MINUTE_DAYS="1",
    )
    done = subprocess.run(
        [sys.executable, "-c", SQLITE_SCRIPT],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])

    usage, _ = minute_rows([1, 2])
    assert result == {
        "marks": ["2026-11-01 03:00:00+00:00", "2026-11-01 00:00:00+00:00", "2026-11-03 00:00:00+00:00"],
        "same_after_rollup": True,
        "hour_rows_exact": True,
        "same_after_retention": True,
        "minute_rows_left": 0,
        "days": result["days"],
        "october_events": expected_totals(usage, *OCTOBER)["events"],
    }
    assert result["days"] > 0
