"""Quotas follow the business plan's billing period (``BusinessPlan.billing_period``): a monthly
plan's quota starts again on the 1st of each month (UTC), a yearly plan's counts the whole
calendar year, usage of earlier months included (docs/throttling.md, "The policy").

The period's usage comes from analytics (``gateway.auth.quota_usage``) at the handshake, which
seeds the Redis quota counters the gateway takes its leases from; the end-to-end tests run a
real gateway process, real RabbitMQ and Redis, like tests/gateway/test_throttling.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from websockets.asyncio.client import connect

from analytics.models import UsageRecord
from gateway.auth import month_start, quota_refusals, quota_usage
from gateway.publishing import EventPublisher
from gateway.throttling import billing_period, period_end
from portal.models import Subscription
from portal.services.limits import subscription_limits
from tests.factories import BusinessPlanFactory, SubscriptionFactory
from tests.gateway.test_live_control import _closed_within_deadline
from tests.gateway.test_throttling import (
    handshake_refusal,
    plan_set,
    publish,
    read_until_silence,
    ws_url,
)

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
MARCH = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)
LAST_DECEMBER = datetime(2025, 12, 31, 23, 59, tzinfo=UTC)


def _use(subscription: Subscription, at: datetime, events: int, direction: str = "out") -> None:
    """Record ``events`` delivered to ``subscription`` in the minute starting ``at`` (analytics)."""
    UsageRecord.objects.create(
        subscription=subscription,
        bucket_start=at,
        channel="prices/{symbol}",
        direction=direction,
        events=events,
        bytes=events * 100,
    )


# --- the period's usage, from analytics --------------------------------------------------------


def test_a_yearly_quota_counts_earlier_months_and_a_monthly_one_only_this_month(db):
    yearly = SubscriptionFactory(plan=BusinessPlanFactory(quota_events=320, billing_period="year"))
    monthly = SubscriptionFactory(plan=BusinessPlanFactory(quota_events=320, billing_period="month"))
    for subscription in (yearly, monthly):
        _use(subscription, LAST_DECEMBER, 1000)  # last year: counts for neither
        _use(subscription, MARCH, 300)
        _use(subscription, NOW - timedelta(days=1), 20)
    plans = {yearly.pk: yearly.plan, monthly.pk: monthly.plan}

    used = quota_usage(plans, now=NOW)
    assert used == {yearly.pk: (320, 32_000), monthly.pk: (20, 2_000)}
    refusals = quota_refusals(plans, used=used)
    assert list(refusals) == [yearly.pk]
    assert refusals[yearly.pk].reason == (
        f"events quota of plan {yearly.plan.name!r} used up this year (320 events)"
    )


def test_the_limits_panel_shows_the_year_so_far_for_a_yearly_plan(db):
    subscription = SubscriptionFactory(plan=BusinessPlanFactory(quota_events=1000, billing_period="year"))
    _use(subscription, MARCH, 300)
    _use(subscription, NOW - timedelta(days=1), 20)
    period = subscription_limits(subscription, now=NOW)["period"]
    assert period["billing_period"] == "year"
    assert (period["start"], period["end"]) == (
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert (period["events"], period["events_remaining"]) == (320, 680)

    monthly = SubscriptionFactory(plan=BusinessPlanFactory(quota_events=1000))
    _use(monthly, MARCH, 300)
    _use(monthly, NOW - timedelta(days=1), 20)
    period = subscription_limits(monthly, now=NOW)["period"]
    assert (period["start"], period["end"]) == (
        datetime(2026, 11, 1, tzinfo=UTC),
        datetime(2026, 12, 1, tzinfo=UTC),
    )
    assert (period["events"], period["events_remaining"]) == (20, 980)


def test_quota_counters_are_keyed_by_the_plans_period():
    now = NOW.timestamp()
    assert (billing_period(now), billing_period(now, "year")) == ("2026-11", "2026")
    assert period_end("2026-12") == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert period_end("2026") == datetime(2027, 1, 1, tzinfo=UTC).timestamp()


# --- end to end on a gateway process -----------------------------------------------------------


def _year_start() -> datetime:
    return month_start().replace(month=1)


@pytest.mark.e2e
def test_a_yearly_plans_quota_counts_usage_of_earlier_months_of_the_year(
    gateway_server, stream_api, bob_subscribed
):
    subscription = bob_subscribed.subscription
    plan_set(subscription, quota_events=5, billing_period="year")
    # Three of the five events were delivered on the year's first day (an earlier month but
    # in January), and 100 last year, which no longer count.
    _use(subscription, _year_start(), 3)
    _use(subscription, _year_start() - timedelta(minutes=1), 100)
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret)
    expected = "events quota of plan 'Free' used up this year (5 events)"

    async def scenario():
        async with EventPublisher() as publisher, connect(url) as client:
            await publish(publisher, stream_api.slug, range(4))
            received = await read_until_silence(client)
        return received, await handshake_refusal(url)

    received, (code, reason) = asyncio.run(scenario())
    assert received.payloads == [{"n": 0}, {"n": 1}], gateway_server.log()
    assert received.order == ["event", "event", "throttled"]
    notice = received.notices[0]
    assert (notice["limit"], notice["reason"]) == ("quota", expected)
    year = _year_start().year
    assert notice["resets_at"] == datetime(year + 1, 1, 1, tzinfo=UTC).timestamp()
    assert code == 4429 and reason.startswith(expected), reason

    # The consumer's limits panel reads the same yearly counter.
    windows = {w["limit"]: w for w in subscription_limits(subscription)["windows"]}
    assert windows["quota"]["unit"] == "year"
    assert windows["quota"]["remaining"] == 0
    assert windows["quota"]["resets_at"] == datetime(year + 1, 1, 1, tzinfo=UTC)


@pytest.mark.e2e
def test_a_monthly_plans_quota_starts_again_with_the_month(gateway_server, stream_api, bob_subscribed):
    subscription = bob_subscribed.subscription
    plan_set(subscription, quota_events=5, billing_period="month")
    _use(subscription, month_start() - timedelta(minutes=1), 3)  # last month: does not count
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret)

    async def scenario():
        async with EventPublisher() as publisher, connect(url) as client:
            await publish(publisher, stream_api.slug, range(6))
            return await read_until_silence(client)

    received = asyncio.run(scenario())
    assert received.payloads == [{"n": n} for n in range(5)], gateway_server.log()
    notice = received.notices[0]
    assert notice["reason"] == "events quota of plan 'Free' used up this month (5 events)"
    assert notice["resets_at"] == period_end(billing_period())


@pytest.mark.e2e
def test_switching_a_plan_to_yearly_closes_its_connections_with_4409(
    gateway_server, stream_api, bob_subscribed
):
    """The period is part of the policy: live connections reconnect under the year's counters."""
    plan = plan_set(bob_subscribed.subscription, quota_events=1000)
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret)

    def yearly() -> None:
        try:
            plan.billing_period = "year"
            plan.save()
        finally:
            connection.close()  # this worker thread's own connection, before the test database goes

    async def scenario():
        async with connect(url) as client:
            await asyncio.sleep(0.3)
            return await _closed_within_deadline(client, yearly)

    code, reason, _after = asyncio.run(scenario())
    assert (code, reason) == (4409, "Business plan changed; reconnect to continue under the new plan.")
