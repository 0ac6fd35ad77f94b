"""The consumer's usage dashboard in headless Chromium: the charts draw the page's numbers, the
range presets change the range, tabs and errors show. Screenshots go to /tmp/dcons-*.png."""

from __future__ import annotations

import math
import re
import socket
import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from analytics import live
from analytics.models import ConnectionRecord
from analytics.services import connection_record_batch, latency_record_batch, usage_counts_batch
from tests.factories import ApplicationFactory, BusinessPlanFactory, SubscriptionFactory

# Playwright's module-scoped fixtures and the ORM-beside-Playwright switch, as the portal's
# browser tests use them.
from tests.test_browser import (  # noqa: F401 - fixtures
    allow_orm_beside_playwright,
    browser,
    browser_context_args,
    browser_type,
    browser_type_launch_args,
    playwright,
)

pytestmark = pytest.mark.browser

PRICES = "prices/{symbol}"
ORDERS = "orders/{symbol}"


def shoot(page: Page, name: str) -> None:
    page.screenshot(path=f"/tmp/dcons-{name}.png", full_page=True)


def _sign_in(page: Page, live_server, email: str) -> None:
    page.context.clear_cookies()
    page.goto(live_server.url + "/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("navigation").get_by_role("link", name="Usage")).to_be_visible()


@pytest.fixture
def bob_traffic(transactional_db, bob, ticker_api):
    """A week of a trading screen's traffic: every 10 minutes a daily wave of deliveries on
    prices, a few orders sent, throttling in the busiest hours, a slow spell; latency; five
    finished connections (one closed 4429) and one open now."""
    plan = BusinessPlanFactory(api=ticker_api, name="Pro", quota_events=2_000_000, quota_bytes=400_000_000)
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Trading screen"), plan=plan
    )
    SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Risk monitor"), plan=ticker_api.plans.get(name="Free")
    )
    now = timezone.now().replace(second=0, microsecond=0)
    rows, latency = [], []
    for index in range(7 * 24 * 6):
        minute = now - timedelta(minutes=10 * index + 1)
        wave = 0.5 + 0.5 * math.sin(minute.hour / 24 * 2 * math.pi)
        events = int(200 + 900 * wave)
        throttled = max(0, events - 950)
        rows.append(
            (subscription.pk, minute, PRICES, "out", events, events * 180, throttled, throttled * 180,
             3 if 30 < index < 36 else 0, 0, 0)
        )  # fmt: skip
        if index % 3 == 0:
            rows.append((subscription.pk, minute, ORDERS, "in", 4, 520, 0, 0, 0, 1, 0))
        latency += [
            (subscription.pk, minute, PRICES, "out", 5_000, events - 20),
            (subscription.pk, minute, PRICES, "out", 20_000, 15),
            (subscription.pk, minute, PRICES, "out", 100_000, 5),
        ]
    usage_counts_batch(rows=rows)
    latency_record_batch(rows=latency)
    connection_record_batch(
        records=[
            ConnectionRecord(
                subscription=subscription,
                application=subscription.application,
                api=subscription.api,
                version="1.0.0",
                protocol="sse" if index == 2 else "websocket",
                channels=PRICES,
                client_ip=f"203.0.113.{10 + index}",
                opened_at=now - timedelta(hours=3 * index + 2),
                closed_at=now - timedelta(hours=3 * index + 2) + timedelta(seconds=600 + 977 * index),
                duration_seconds=600 + 977 * index,
                close_code=(4429, 1000, None, 1001, 4408)[index],
                events_out=4000 + 313 * index,
                bytes_out=(4000 + 313 * index) * 180,
            )
            for index in range(5)
        ]
    )
    process = f"browser-{uuid.uuid4().hex[:6]}:1"
    live.publish(
        {"process": process, "pid": 1, "host": "browser", "started_at": time.time()},
        [
            {
                "id": f"{process}:1",
                "process": process,
                "protocol": "websocket",
                "subscription_id": subscription.pk,
                "application_id": subscription.application_id,
                "application": "Trading screen",
                "api_id": subscription.api_id,
                "api": "ticker",
                "version": "1.0.0",
                "channels": [PRICES],
                "client_ip": "203.0.113.99",
                "since": time.time() - 1500,
                "events_out": 2345,
                "bytes_out": 2345 * 180,
                "events_in": 0,
                "bytes_in": 0,
            }
        ],
    )
    yield subscription
    live.withdraw(process)


def _chart_total(page: Page, subscription_id: int) -> int:
    """The sum of the drawn "Delivered" bars of a subscription's events chart."""
    return page.evaluate(
        """(id) => {
          const canvas = document.querySelector(`[data-subscription="${id}"] [data-usage-chart="events"]`);
          const chart = Chart.getChart(canvas);
          return chart.data.datasets.find((d) => d.label === "Delivered").data.reduce((a, b) => a + b, 0);
        }""",
        subscription_id,
    )


def test_usage_dashboard_draws_the_pages_numbers_and_presets_change_the_range(
    page: Page, live_server, bob, bob_traffic
):
    card = f'[data-subscription="{bob_traffic.pk}"]'
    _sign_in(page, live_server, bob.email)
    page.goto(live_server.url + "/usage/")
    expect(page.locator(f'{card} [data-usage-chart="events"][data-chart-ready]')).to_be_visible()
    expect(page.get_by_test_id("range-label")).to_contain_text("Last 24 hours")
    day_total = int(page.locator(f"{card} [data-testid=events-delivered]").inner_text().replace(",", ""))
    assert day_total > 0
    assert _chart_total(page, bob_traffic.pk) == day_total
    # The idle subscription says how to get events instead of drawing an empty chart.
    expect(page.get_by_test_id("usage-none")).to_contain_text("No events delivered yet")
    shoot(page, "usage-24h")

    page.get_by_role("link", name="7 days").click()
    expect(page).to_have_url(re.compile(r"range=7d"))
    expect(page.get_by_test_id("range-label")).to_contain_text("Last 7 days")
    expect(page.locator(f"{card} [data-usage-chart=events][data-chart-ready]")).to_be_visible()
    week_total = int(page.locator(f"{card} [data-testid=events-delivered]").inner_text().replace(",", ""))
    assert week_total > day_total
    assert _chart_total(page, bob_traffic.pk) == week_total
    expect(page.get_by_role("link", name="7 days")).to_have_class(re.compile(r"\bactive\b"))
    shoot(page, "usage-7d")

    page.locator(card).get_by_role("tab", name=re.compile("Connections")).click()
    history = page.locator(f"{card} [data-testid=connection-history]")
    expect(history).to_be_visible()
    expect(history).to_contain_text("throttled: a plan limit was reached")
    expect(page.locator(f"{card} [data-testid=open-connections]")).to_contain_text("203.0.113.99")
    expect(page.locator(f"#connections-{bob_traffic.pk}")).to_have_class(re.compile(r"\bshow\b"))
    page.wait_for_timeout(300)  # the tab's fade-in (0.15 s), for the screenshot
    shoot(page, "usage-connections")

    page.get_by_role("link", name="1 hour").click()
    expect(page.get_by_test_id("range-label")).to_contain_text("Last hour")
    expect(page.get_by_test_id("range-label")).to_contain_text("per minute")
    shoot(page, "usage-1h")


def test_bad_dates_show_next_to_the_field(page: Page, live_server, bob, bob_traffic):
    _sign_in(page, live_server, bob.email)
    page.goto(live_server.url + "/usage/")
    page.get_by_label("From").fill("2026-05-10")
    page.get_by_label("To (inclusive)").fill("2026-05-01")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_test_id("error-to")).to_contain_text("must be after the start")
    expect(page.get_by_label("To (inclusive)")).to_have_class(re.compile("is-invalid"))
    shoot(page, "usage-error")


def test_new_consumer_is_told_what_to_do(page: Page, live_server, carol):
    _sign_in(page, live_server, carol.email)
    page.goto(live_server.url + "/usage/")
    expect(page.get_by_test_id("usage-empty")).to_contain_text("No subscriptions yet")
    expect(page.get_by_test_id("usage-empty").get_by_role("link", name="Open Try it")).to_be_visible()
    shoot(page, "usage-empty")


def test_connections_tab_says_when_live_data_is_unavailable(
    page: Page, live_server, bob, bob_traffic, settings
):
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL")
    card = f'[data-subscription="{bob_traffic.pk}"]'
    _sign_in(page, live_server, bob.email)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    saved = (settings.REDIS_URL, live._client)
    settings.REDIS_URL, live._client = f"redis://127.0.0.1:{port}/0", None
    try:
        page.goto(live_server.url + "/usage/")
        expect(page.get_by_test_id("live-unavailable-alert")).to_contain_text(
            "Live data unavailable: Redis cannot be reached."
        )
        page.locator(card).get_by_role("tab", name=re.compile("Connections")).click()
        expect(page.locator(f"{card} [data-testid=live-unavailable]")).to_be_visible()
        expect(page.locator(f"{card} [data-testid=open-count]")).to_have_text("? open")
        expect(page.locator(f"{card} [data-testid=no-open-connections]")).to_have_count(0)
        # Finished connections come from the database: still listed.
        expect(page.locator(f"{card} [data-testid=connection-history]")).to_contain_text("throttled")
        page.wait_for_timeout(300)  # the tab's fade-in, for the screenshot
        shoot(page, "usage-live-unavailable")
    finally:
        settings.REDIS_URL, live._client = saved
