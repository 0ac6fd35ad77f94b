from __future__ import annotations

from datetime import UTC, datetime, timedelta

from analytics.services import usage_for_subscription, usage_record_batch
from tests.factories import SubscriptionFactory

MINUTE = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def test_flushes_from_two_gateway_processes_add_up(db):
    subscription = SubscriptionFactory()
    usage_record_batch(rows=[(subscription.pk, MINUTE, "prices/{symbol}", "out", 10, 1000)])
    usage_record_batch(rows=[(subscription.pk, MINUTE, "prices/{symbol}", "out", 5, 600)])
    totals = usage_for_subscription(subscription=subscription)
    assert (totals.events, totals.bytes) == (15, 1600)


def test_usage_totals_respect_the_period_and_direction(db):
    subscription = SubscriptionFactory()
    usage_record_batch(
        rows=[
            (subscription.pk, MINUTE, "prices/{symbol}", "out", 3, 300),
            (subscription.pk, MINUTE + timedelta(days=40), "prices/{symbol}", "out", 7, 700),
            (subscription.pk, MINUTE, "orders", "in", 2, 20),
        ]
    )
    totals = usage_for_subscription(subscription=subscription, start=MINUTE, end=MINUTE + timedelta(days=30))
    assert (totals.events, totals.bytes) == (3, 300)
