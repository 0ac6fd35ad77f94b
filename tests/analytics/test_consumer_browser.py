"""The consumer's usage dashboard in headless Chromium: the charts draw the page's numbers, the
range presets change the range, tabs and errors show, the page fits a phone (390 px). Screenshots
go to /tmp/polcons-*.png."""

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


def shoot(page: Page, name: str, *, slices: bool = False) -> None:
    """A full-page screenshot; with ``slices``, also one per window height (``name-1``, ...),
    readable at full size where a phone's long page would be scaled down."""
    page.screenshot(path=f"/tmp/polcons-{name}.png", full_page=True)
    if slices:
        width, height = page.viewport_size["width"], page.viewport_size["height"]
        total = page.evaluate("() => document.documentElement.scrollHeight")
        for index, top in enumerate(range(0, total, height), start=1):
            clip = {"x": 0, "y": top, "width": width, "height": min(height, total - top)}
            page.screenshot(path=f"/tmp/polcons-{name}-{index}.png", full_page=True, clip=clip)


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
                close_code=(4429, 1000, None, 1012, 4408)[index],
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


def _axis_labels(page: Page, subscription_id: int, chart: str) -> list[str]:
    """The y axis tick labels Chart.js drew on a subscription's ``chart`` (events, bytes)."""
    return page.evaluate(
        """([id, chart]) => {
          const canvas = document.querySelector(`[data-subscription="${id}"] [data-usage-chart="${chart}"]`);
          return Chart.getChart(canvas).scales.y.ticks.map((tick) => String(tick.label));
        }""",
        [subscription_id, chart],
    )


def _x_labels_fit(page: Page, subscription_id: int, chart: str) -> bool:
    """Whether the time axis's labels have room: at least ~60 px of chart width each."""
    return page.evaluate(
        """([id, chart]) => {
          const canvas = document.querySelector(`[data-subscription="${id}"] [data-usage-chart="${chart}"]`);
          const drawn = Chart.getChart(canvas);
          const shown = drawn.scales.x.ticks.filter((tick) => tick.label != null);
          return shown.length >= 2 && shown.length * 60 <= drawn.width;
        }""",
        [subscription_id, chart],
    )


def _sideways_overflow(page: Page) -> int:
    """How many pixels the page is wider than the window (0: no sideways scroll)."""
    return page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")


def test_byte_axis_has_no_trailing_zero_and_the_page_fits_a_phone(page: Page, live_server, bob, bob_traffic):
    card = f'[data-subscription="{bob_traffic.pk}"]'
    _sign_in(page, live_server, bob.email)
    page.goto(live_server.url + "/usage/?range=7d")
    expect(page.locator(f"{card} [data-usage-chart=bytes][data-chart-ready]")).to_be_visible()
    labels = _axis_labels(page, bob_traffic.pk, "bytes")
    assert len(labels) >= 3 and labels[0] == "0 B"
    assert all(re.fullmatch(r"\d+(\.\d)? [KMGTP]?B", label) for label in labels), labels
    assert not any(".0 " in label for label in labels), labels  # "800 KB", never "800.0 KB"
    expect(page.get_by_test_id("csv-connections")).to_have_text("CSV per connection")
    assert _sideways_overflow(page) == 0
    assert _x_labels_fit(page, bob_traffic.pk, "events") and _x_labels_fit(page, bob_traffic.pk, "bytes")
    shoot(page, "usage-1280")

    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    expect(page.locator(f"{card} [data-usage-chart=bytes][data-chart-ready]")).to_be_visible()
    assert _sideways_overflow(page) == 0
    assert not any(".0 " in label for label in _axis_labels(page, bob_traffic.pk, "bytes"))
    assert _x_labels_fit(page, bob_traffic.pk, "events") and _x_labels_fit(page, bob_traffic.pk, "bytes")
    shoot(page, "usage-390", slices=True)
    page.locator(card).get_by_role("tab", name=re.compile("Connections")).click()
    expect(page.locator(f"{card} [data-testid=connection-history]")).to_contain_text("gateway restarting")
    page.wait_for_timeout(300)  # the tab's fade-in, for the screenshot
    assert _sideways_overflow(page) == 0
    shoot(page, "usage-390-connections", slices=True)


def test_past_date_ranges_say_what_is_missing_and_how_to_find_more(page: Page, live_server, bob, ticker_api):
    """Events twenty days ago without latency rows (their publisher stamped no publish time):
    that day says no latency was recorded; the day before says to widen the dates."""
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Archive reader"),
        plan=ticker_api.plans.get(name="Free"),
    )
    day = (timezone.now() - timedelta(days=20)).replace(hour=9, minute=0, second=0, microsecond=0)
    usage_counts_batch(
        rows=[
            (subscription.pk, day + timedelta(hours=hour), PRICES, "out", 40, 40_000, 0, 0, 0, 0, 0)
            for hour in range(8)
        ]
    )
    _sign_in(page, live_server, bob.email)
    page.goto(live_server.url + f"/usage/?from={day:%Y-%m-%d}&to={day:%Y-%m-%d}")
    expect(page.get_by_test_id("latency-unrecorded")).to_contain_text("No latency recorded for these events")
    expect(page.get_by_label("From")).to_have_value(f"{day:%Y-%m-%d}")
    shoot(page, "usage-no-latency")

    before = day - timedelta(days=1)
    page.goto(live_server.url + f"/usage/?from={before:%Y-%m-%d}&to={before:%Y-%m-%d}")
    expect(page.get_by_test_id("widen-dates")).to_contain_text("widen the From – To dates above")
    expect(page.get_by_test_id("usage-none").get_by_role("link")).to_have_count(0)
    shoot(page, "usage-widen")
