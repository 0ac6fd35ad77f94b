"""The consumer's usage page at /usage/: one card per subscription, the chart's steps, states.
(Totals, CSV, REST and isolation: test_consumer_dashboard.py; in Chromium: test_consumer_browser.py.)"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from analytics.services import usage_record_batch
from billing.services import invoice_period_close
from portal.models import Subscription
from portal.services.limits import period_bounds
from tests.factories import ApplicationFactory, BusinessPlanFactory, SubscriptionFactory


@pytest.fixture
def bob_subscription(bob, ticker_api):
    application = ApplicationFactory(owner=bob, name="Bob's dashboard")
    return SubscriptionFactory(application=application, plan=ticker_api.plans.get(name="Free"))


def _chart(page: str, subscription: Subscription) -> dict:
    match = re.search(
        rf'<script id="usage-chart-{subscription.pk}" type="application/json">(.*?)</script>', page
    )
    assert match, "no chart data on the page"
    return json.loads(match.group(1))


def test_card_names_the_api_application_plan_and_status(client, bob, bob_subscription):
    client.force_login(bob)
    page = client.get("/usage/").content.decode()
    assert "Ticker" in page and "Bob&#x27;s dashboard" in page and "Free plan" in page
    assert 'data-testid="usage-limits-link"' in page
    assert '<span class="badge text-bg-success">Active</span>' in page


def test_hour_steps_sum_the_minutes_and_empty_hours_are_zero(client, bob, bob_subscription):
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    usage_record_batch(
        rows=[
            (bob_subscription.pk, hour + timedelta(minutes=1), "prices/{symbol}", "out", 400, 4000),
            (bob_subscription.pk, hour + timedelta(minutes=2), "prices/{symbol}", "out", 600, 6000),
        ]
    )
    client.force_login(bob)
    chart = _chart(client.get("/usage/?range=24h&step=hour").content.decode(), bob_subscription)

    assert chart["step"] == "hour"
    assert len(chart["labels"]) == 25
    at = chart["labels"].index(hour.isoformat())
    assert (chart["delivered"][at], chart["bytes_delivered"][at]) == (1000, 10_000)
    assert sum(chart["delivered"]) == 1000
    assert chart["throttled"] == [0] * 25


def test_minute_steps_for_the_last_hour(client, bob, bob_subscription):
    minute = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=3)
    usage_record_batch(rows=[(bob_subscription.pk, minute, "prices/{symbol}", "out", 7, 700)])
    client.force_login(bob)
    chart = _chart(client.get("/usage/?range=1h").content.decode(), bob_subscription)
    assert chart["step"] == "minute"
    assert len(chart["labels"]) in (60, 61)  # the minute the range starts in, and the current one
    assert chart["delivered"][chart["labels"].index(minute.isoformat())] == 7


def test_pending_subscription_is_listed_with_its_status(client, bob, ticker_api):
    application = ApplicationFactory(owner=bob)
    SubscriptionFactory(
        application=application, plan=ticker_api.plans.get(name="Gold"), status=Subscription.Status.PENDING
    )
    client.force_login(bob)
    page = client.get("/usage/").content.decode()
    assert "Pending approval" in page
    assert "Waiting for an admin to approve" in page


def test_usage_is_in_the_navigation(client, bob, bob_subscription):
    client.force_login(bob)
    page = client.get("/usage/").content.decode()
    assert re.search(r'class="nav-link\s+active"\s+href="/usage/"', page)


def test_invoice_links_the_usage_page_of_its_period(client, bob, ticker_api):
    """The invoice's "usage page" link opens /usage/ for the invoice's period, which shows the
    events and bytes the invoice charges (not the last 24 hours)."""
    plan = BusinessPlanFactory(
        api=ticker_api, name="Metered", flat_fee_minor=900, price_per_1000_events_minor=150
    )
    this_month = period_bounds()[0]
    start = (this_month - timedelta(days=1)).replace(day=1)
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Trading bot"), plan=plan, created=start
    )
    usage_record_batch(
        rows=[
            (subscription.pk, start - timedelta(minutes=1), "prices/{symbol}", "out", 5, 50),
            (
                subscription.pk,
                start + timedelta(days=2, hours=3),
                "prices/{symbol}",
                "out",
                12_345,
                2_500_000,
            ),
            (subscription.pk, this_month, "prices/{symbol}", "out", 7, 70),
        ]
    )
    [invoice] = invoice_period_close(period_start=start, period_end=this_month, allow_open=True)
    client.force_login(bob)

    page = client.get(f"/billing/invoices/{invoice.pk}/").content.decode()
    link = re.search(r'<a href="([^"]+)" data-testid="invoice-usage-link">usage page</a>', page)
    assert link, "no usage page link on the invoice"
    href = link.group(1).replace("&amp;", "&")
    assert href == f"/usage/?from={start:%Y-%m-%dT%H:%M:%S}Z&to={this_month:%Y-%m-%dT%H:%M:%S}Z"

    usage = client.get(href)
    assert usage.status_code == 200
    text = usage.content.decode()
    events = re.search(r'data-testid="events-delivered">([^<]+)<', text).group(1)
    line_events = {line.events for line in invoice.lines.all()}
    assert line_events == {12_345} and events == "12,345"
    assert 'title="2,500,000 bytes"' in text
    assert f"{start:%Y-%m-%d} 00:00 – {this_month:%Y-%m-%d} 00:00 UTC" in text
    last_day = this_month - timedelta(days=1)
    assert (
        f'name="from" value="{start:%Y-%m-%d}"' in text and f'name="to" value="{last_day:%Y-%m-%d}"' in text
    )
