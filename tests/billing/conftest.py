"""Billing fixtures: a metered plan, bob subscribed to it, usage recorded through analytics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from analytics.services import usage_record_batch
from portal.celery import app as celery_app
from portal.models import BusinessPlan, Subscription
from tests.factories import ApplicationFactory, BusinessPlanFactory, SubscriptionFactory

OCTOBER = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
NOVEMBER = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))

RecordUsage = Callable[..., None]


@pytest.fixture
def metered_plan(ticker_api) -> BusinessPlan:
    """$49.00 a month with 10,000 events included, then $1.50 per started 1,000 events."""
    return BusinessPlanFactory(
        api=ticker_api,
        name="Metered",
        flat_fee_minor=4900,
        included_events=10_000,
        price_per_1000_events_minor=150,
    )


@pytest.fixture
def free_plan(ticker_api) -> BusinessPlan:
    return ticker_api.plans.get(name="Free")


@pytest.fixture
def bob_subscription(bob, metered_plan) -> Subscription:
    application = ApplicationFactory(owner=bob, name="Trading bot")
    return SubscriptionFactory(
        application=application, plan=metered_plan, created=datetime(2026, 9, 15, tzinfo=UTC)
    )


@pytest.fixture
def record_usage() -> RecordUsage:
    """``record_usage(subscription, minute, events, bytes)`` — the gateway's batched flush path."""

    def record(
        subscription: Subscription, minute: datetime, events: int, size: int = 0, direction: str = "out"
    ) -> None:
        usage_record_batch(rows=[(subscription.pk, minute, "prices/{symbol}", direction, events, size)])

    return record


@pytest.fixture
def celery_eager() -> Iterator[None]:
    """Run Celery tasks inline (``.delay`` executes at once and re-raises errors)."""
    conf = celery_app.conf
    saved = conf.task_always_eager, conf.task_eager_propagates
    conf.task_always_eager, conf.task_eager_propagates = True, True
    yield
    conf.task_always_eager, conf.task_eager_propagates = saved
