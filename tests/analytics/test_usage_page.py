"""The consumer's usage page at /usage/: totals this month and all time, and recent rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from analytics.services import usage_record_batch
from portal.models import Subscription
from tests.factories import ApplicationFactory, SubscriptionFactory


@pytest.fixture
def bob_subscription(bob, ticker_api):
    application = ApplicationFactory(owner=bob, name="Bob's dashboard")
    return SubscriptionFactory(application=application, plan=ticker_api.plans.get(name="Free"))


def _minute(ago: timedelta):
    return (timezone.now() - ago).replace(second=0, microsecond=0)


def test_usage_page_shows_this_month_all_time_and_recent_rows(client, bob, bob_subscription):
    now = timezone.now()
    this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    usage_record_batch(
        rows=[
            (bob_subscription.pk, _minute(timedelta(minutes=2)), "prices/{symbol}", "out", 1200, 1_500_000),
            (bob_subscription.pk, this_month - timedelta(days=3), "prices/{symbol}", "out", 30, 3000),
        ]
    )
    client.force_login(bob)

    page = client.get("/usage/").content.decode()

    assert "Ticker" in page and "Bob&#x27;s dashboard" in page
    assert 'data-testid="events-month">1,200<' in page
    assert "1.5 MB" in page  # bytes this month, human-readable
    assert "1,230" in page  # events all time
    assert "prices/{symbol}" in page  # a recent per-minute row
    assert "Server → client" in page


def test_usage_per_hour_sums_the_minutes(client, bob, bob_subscription):
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    usage_record_batch(
        rows=[
            (bob_subscription.pk, hour + timedelta(minutes=1), "prices/{symbol}", "out", 400, 4000),
            (bob_subscription.pk, hour + timedelta(minutes=2), "prices/{symbol}", "out", 600, 6000),
        ]
    )
    client.force_login(bob)
    page = client.get("/usage/?by=hour").content.decode()
    assert f"{hour:%Y-%m-%d %H:%M}" in page
    assert ">1,000<" in page and "10.0 KB" in page


def test_subscription_without_events_says_how_to_get_some(client, bob, bob_subscription):
    client.force_login(bob)
    assert "No events delivered yet" in client.get("/usage/").content.decode()


def test_carol_does_not_see_bobs_usage(client, carol, bob_subscription):
    usage_record_batch(
        rows=[(bob_subscription.pk, _minute(timedelta(minutes=1)), "prices/{symbol}", "out", 7, 70)]
    )
    client.force_login(carol)
    page = client.get("/usage/").content.decode()
    assert "Bob&#x27;s dashboard" not in page
    assert "No subscriptions yet" in page


def test_pending_subscription_is_listed_with_its_status(client, bob, ticker_api):
    application = ApplicationFactory(owner=bob)
    SubscriptionFactory(
        application=application, plan=ticker_api.plans.get(name="Gold"), status=Subscription.Status.PENDING
    )
    client.force_login(bob)
    assert "Pending approval" in client.get("/usage/").content.decode()


def test_usage_needs_sign_in(client, db):
    assert client.get("/usage/")["Location"].startswith("/accounts/login/")
