"""What a consumer sees of their subscription's limits: ``GET /api/v1/subscriptions/{id}/limits/``
and the Limits panel of the application page. The live windows are the gateway's real Redis
counters (taken here with ``gateway.throttling``'s sync limiter, as a gateway process takes a
lease); the month's figures are usage records, as the gateway's meter flushes them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.utils.html import strip_tags

from analytics.models import UsageRecord
from gateway import throttling
from gateway.throttling import Policy, policy_limits, sync_limiter
from portal.services.limits import period_bounds
from tests.factories import ApplicationFactory, BusinessPlanFactory, SubscriptionFactory
from tests.fixtures.servers import free_port
from tests.portal.test_api_rest import basic


@pytest.fixture
def metered(ticker_api):
    """An approved plan: 100 events per minute + 20 burst, 10,000 events and 1 GB a month."""
    return BusinessPlanFactory(
        api=ticker_api,
        name="Metered",
        rate_limit_events=100,
        rate_limit_unit="minute",
        burst_events=20,
        quota_events=10_000,
        quota_bytes=10**9,
    )


@pytest.fixture
def subscription(bob, metered):
    return SubscriptionFactory(application=ApplicationFactory(owner=bob, name="Screen"), plan=metered)


def take(subscription, kind: str, cost: int) -> None:
    """Take ``cost`` from the subscription's ``kind`` counter, as a gateway lease does."""
    policy = Policy.from_plan(subscription.plan)
    limit = next(limit for limit in policy_limits(policy, subscription.pk) if limit.kind == kind)
    assert sync_limiter().hit(limit.item, *limit.identifiers, cost=cost)


def usage_row(subscription, *, at: datetime, direction: str = "out", events=0, size=0, throttled=0) -> None:
    UsageRecord.objects.create(
        subscription=subscription,
        bucket_start=at,
        channel="prices/{symbol}",
        direction=direction,
        events=events,
        bytes=size,
        throttled_events=throttled,
    )


def limits_of(client, subscription, user):
    response = client.get(f"/api/v1/subscriptions/{subscription.pk}/limits/", **basic(user))
    assert response.status_code == 200, response.content
    return response.json()


def parse(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


def page_text(client, subscription) -> str:
    client.force_login(subscription.application.owner)
    response = client.get(f"/apps/{subscription.application.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    panel = html[html.index('id="limits"') :]
    return re.sub(r"\s+", " ", strip_tags(panel))


def test_live_windows_show_what_the_gateway_has_taken(client, bob, subscription):
    take(subscription, "rate", 37)
    take(subscription, "burst", 37)
    take(subscription, "quota", 37)
    take(subscription, "bytes", 50_000)
    before = datetime.now(UTC)

    body = limits_of(client, subscription, bob)

    assert body["redis_available"] is True
    assert (body["subscription"], body["plan"]) == (subscription.pk, "Metered")
    windows = {window["limit"]: window for window in body["windows"]}
    assert list(windows) == ["rate", "burst", "quota", "bytes"]
    rate = windows["rate"]
    assert (rate["unit"], rate["measure"], rate["allowed"], rate["used"], rate["remaining"]) == (
        "minute",
        "events",
        120,
        37,
        83,
    )
    assert rate["percent_used"] == 30.8
    assert before < parse(rate["resets_at"]) <= before + timedelta(seconds=61)
    burst = windows["burst"]
    assert (burst["unit"], burst["allowed"], burst["used"], burst["remaining"]) == (
        "10 minutes",
        1000,
        37,
        963,
    )
    _, period_end = period_bounds()
    quota = windows["quota"]
    assert (quota["unit"], quota["allowed"], quota["used"], quota["remaining"]) == (
        "month",
        10_000,
        37,
        9_963,
    )
    assert parse(quota["resets_at"]) == period_end
    size = windows["bytes"]
    assert (size["measure"], size["allowed"], size["used"], size["remaining"]) == (
        "bytes",
        10**9,
        50_000,
        999_950_000,
    )
    assert body["policy"] == {
        "rate_limit_events": 100,
        "rate_limit_unit": "minute",
        "burst_events": 20,
        "quota_events": 10_000,
        "quota_bytes": 10**9,
        "counted_directions": "both",
        "max_connections": None,
        "max_connections_per_application": None,
        "max_webhook_subscriptions": None,
        "max_connection_seconds": None,
        "quota_action": "stop",
        "limit_notice": "notify",
        "overage_price_per_1000_events_minor": 0,
        "overage_price_per_gb_minor": 0,
        "currency": "usd",
    }


def test_a_window_not_started_has_no_reset_time(client, bob, subscription):
    rate = limits_of(client, subscription, bob)["windows"][0]
    assert (rate["limit"], rate["used"], rate["remaining"], rate["resets_at"]) == ("rate", 0, 120, None)


def test_period_usage_counts_this_months_records_of_the_counted_directions(
    client, bob, subscription, metered
):
    start, end = period_bounds()
    usage_row(subscription, at=start + timedelta(minutes=1), events=500, size=5_000, throttled=12)
    usage_row(
        subscription, at=start + timedelta(minutes=1), direction="in", events=200, size=2_000, throttled=3
    )
    usage_row(
        subscription, at=start - timedelta(minutes=1), events=9_999, size=99_999, throttled=40
    )  # last month
    other = SubscriptionFactory(plan=metered)
    usage_row(other, at=start + timedelta(minutes=2), events=1_234, throttled=5)

    period = limits_of(client, subscription, bob)["period"]

    assert (parse(period["start"]), parse(period["end"])) == (start, end)
    assert period["directions"] == ["out", "in"]
    assert (period["events"], period["bytes"], period["throttled_events"]) == (700, 7_000, 15)
    assert (period["quota_events"], period["events_remaining"], period["events_percent"]) == (
        10_000,
        9_300,
        7.0,
    )
    assert (period["quota_bytes"], period["bytes_remaining"]) == (10**9, 10**9 - 7_000)
    assert (period["overage_events"], period["quota_action"]) == (0, "stop")

    metered.counted_directions = "out"
    metered.save()
    period = limits_of(client, subscription, bob)["period"]
    assert period["directions"] == ["out"]
    assert (period["events"], period["bytes"], period["events_remaining"]) == (500, 5_000, 9_500)
    assert period["throttled_events"] == 15  # stopped events count whichever their direction


def test_overage_plans_report_the_events_over_the_quota_and_keep_no_quota_counters(
    client, bob, subscription, metered
):
    metered.quota_events, metered.quota_bytes = 600, None
    metered.quota_action, metered.overage_price_per_1000_events_minor = "overage", 50
    metered.save()
    start, _ = period_bounds()
    usage_row(subscription, at=start + timedelta(minutes=1), events=500)
    usage_row(subscription, at=start + timedelta(minutes=1), direction="in", events=200)

    body = limits_of(client, subscription, bob)

    assert [window["limit"] for window in body["windows"]] == ["rate", "burst"]  # quotas not enforced
    period = body["period"]
    assert (period["events"], period["events_remaining"], period["overage_events"]) == (700, 0, 100)
    assert period["quota_action"] == "overage"
    assert "100 events over the quota, billed as overage" in page_text(client, subscription)


def test_only_the_owner_the_provider_and_admins_read_a_subscriptions_limits(
    client, subscription, alice, carol, admin_user
):
    url = f"/api/v1/subscriptions/{subscription.pk}/limits/"
    assert client.get(url, **basic(carol)).status_code == 404
    assert client.get("/api/v1/subscriptions/999999/limits/", **basic(carol)).status_code == 404
    assert client.get(url).status_code == 401
    assert client.get(url, **basic(alice)).json()["plan"] == "Metered"  # the API's provider
    assert client.get(url, **basic(admin_user)).json()["plan"] == "Metered"


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis to lose it")
def test_redis_down_leaves_the_windows_empty_not_a_500(client, bob, subscription, settings, monkeypatch):
    start, _ = period_bounds()
    usage_row(subscription, at=start + timedelta(minutes=1), events=250, throttled=4)
    # A Redis nobody listens on; the limiter is rebuilt for it and the old one restored afterwards.
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/2"
    monkeypatch.setattr(throttling, "_sync_limiter", None)

    body = limits_of(client, subscription, bob)

    assert (body["windows"], body["redis_available"]) == ([], False)
    assert (body["period"]["events"], body["period"]["events_remaining"]) == (250, 9_750)
    text = page_text(client, subscription)
    assert "The live counters cannot be read right now" in text
    assert "250 of 10,000 · 9,750 left" in text


def test_the_application_page_shows_the_limits_panel(client, subscription):
    take(subscription, "rate", 37)
    take(subscription, "burst", 37)
    start, end = period_bounds()
    usage_row(subscription, at=start + timedelta(minutes=1), events=2_500, size=250_000_000, throttled=12)

    text = page_text(client, subscription)

    assert "Ticker · Metered plan" in text
    assert "Rate · per minute 37 of 120 events used · 83 left" in text
    assert "Sustained rate · per 10 minutes 37 of 1,000 events used · 963 left" in text
    assert "Events this month 2,500 of 10,000 · 7,500 left" in text
    assert "Bandwidth this month 250.0 MB of 1.0 GB · 750.0 MB left" in text
    assert "12 events stopped by the plan's limits this month (never billed)" in text
    assert f"Quotas reset {end:%-d %b %Y}, 00:00 UTC" in text


def test_plans_without_limits_say_so_and_ended_subscriptions_have_no_panel(client, bob, ticker_api):
    app = ApplicationFactory(owner=bob, name="Screen")
    live = SubscriptionFactory(application=app, plan=ticker_api.plans.get(name="Free"))
    text = page_text(client, live)
    assert "No rate limit or quota on this plan: events are never stopped." in text
    assert "No events stopped by the plan's limits this month" in text
    live.status = live.Status.CANCELLED
    live.save()
    client.force_login(bob)
    assert 'id="limits"' not in client.get(f"/apps/{app.pk}/").content.decode()
