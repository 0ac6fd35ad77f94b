"""The provider's and the platform's analytics pages in headless Chromium: charts drawn with data,
the live connections table following a new gateway snapshot. Screenshots: /tmp/dprov-*.png."""

from __future__ import annotations

import math
import socket
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from analytics import live
from analytics.models import HandshakeRecord
from analytics.services import handshake_record_batch, latency_record_batch, usage_counts_batch
from tests.factories import (
    APIFactory,
    ApplicationFactory,
    BusinessPlanFactory,
    SubscriptionFactory,
    UserFactory,
)
from tests.test_browser import (  # noqa: F401 - fixtures
    _sign_in,
    allow_orm_beside_playwright,
    browser,
    browser_context_args,
    browser_type,
    browser_type_launch_args,
    playwright,
)

pytestmark = pytest.mark.browser

PROCESS = "dprov-browser:7"
PRICES, ORDERS = "prices/{symbol}", "orders"


def shoot(page: Page, name: str) -> None:
    page.screenshot(path=str(Path("/tmp") / f"dprov-{name}.png"), full_page=True)


def _connection(number, subscription, api, **fields):
    return {
        "id": f"{PROCESS}:{number}",
        "process": PROCESS,
        "protocol": "websocket",
        "subscription_id": subscription.pk,
        "application_id": subscription.application_id,
        "application": subscription.application.name,
        "api_id": api.pk,
        "api": api.slug,
        "version": "1.0.0",
        "channels": [PRICES],
        "client_ip": f"203.0.113.{number}",
        "since": timezone.now().timestamp() - 60 * number,
        "events_out": 0,
        "bytes_out": 0,
        "events_in": 0,
        "bytes_in": 0,
        **fields,
    }


@pytest.fixture
def market(transactional_db, ticker_api, bob):
    """A day of traffic on alice's Ticker from three applications, and one live connection."""
    plan = ticker_api.plans.get(name="Free")
    subscriptions = [
        SubscriptionFactory(application=ApplicationFactory(owner=bob, name="Trading dashboard"), plan=plan),
        SubscriptionFactory(application=ApplicationFactory(owner=bob, name="Price alerts"), plan=plan),
        SubscriptionFactory(
            application=ApplicationFactory(owner=UserFactory(email="erin@example.com"), name="Risk engine"),
            plan=plan,
        ),
    ]
    other = APIFactory(name="Train departures", slug="trains")
    rival = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Station board"), plan=BusinessPlanFactory(api=other)
    )
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    usage, latency = [], []
    for ago in range(1, 24):
        minute = hour - timedelta(hours=ago) + timedelta(minutes=7)
        wave = 1 + math.sin(ago / 3.5)
        for weight, subscription in zip((1.0, 0.45, 0.2), subscriptions, strict=True):
            events = int(4_000 * weight * wave) + 200
            usage.append(
                (
                    subscription.pk,
                    minute,
                    PRICES,
                    "out",
                    events,
                    events * 96,
                    ago % 5,
                    ago % 5 * 96,
                    ago % 3,
                    0,
                    0,
                )
            )
            latency += [
                (subscription.pk, minute, PRICES, "out", 3_000, int(events * 0.7)),
                (subscription.pk, minute, PRICES, "out", 7_500, int(events * 0.25)),
                (subscription.pk, minute, PRICES, "out", 30_000, max(1, int(events * 0.05))),
            ]
        usage.append(
            (subscriptions[0].pk, minute, ORDERS, "in", 40 + ago, (40 + ago) * 120, 0, 0, 0, ago % 2, 0)
        )
        usage.append((rival.pk, minute, "stations/{station}/departures", "out", 900, 90_000, 0, 0, 0, 0, 0))
    usage_counts_batch(rows=usage)
    latency_record_batch(rows=latency)
    at = timezone.now() - timedelta(hours=2)
    handshake_record_batch(
        records=[
            *(
                HandshakeRecord(at=at, outcome="accepted", protocol="websocket", api=ticker_api)
                for _ in range(31)
            ),
            *(
                HandshakeRecord(
                    at=at, outcome="invalid_credential", code=4401, protocol="websocket", api=ticker_api
                )
                for _ in range(3)
            ),
            HandshakeRecord(at=at, outcome="quota_exhausted", code=4429, protocol="sse", api=ticker_api),
        ]
    )
    process = {
        "process": PROCESS,
        "pid": 7,
        "host": "dprov-browser",
        "started_at": timezone.now().timestamp() - 5_400,
        "connections": 2,
        "events_out": 812_345,
        "bytes_out": 77_985_120,
    }
    connections = [
        _connection(1, subscriptions[0], ticker_api, events_out=1_204, bytes_out=115_584),
        _connection(9, rival, other, events_out=50, bytes_out=5_000),
    ]
    live.publish(process, connections)
    yield {"subscriptions": subscriptions, "process": process, "connections": connections, "api": ticker_api}
    live.withdraw(PROCESS)


def test_provider_page_draws_charts_and_follows_live_connections(page: Page, live_server, alice, market):
    _sign_in(page, live_server, alice.email)
    page.get_by_role("navigation").get_by_role("link", name="Analytics").click()
    expect(page.get_by_role("heading", name="Analytics", level=1)).to_be_visible()
    expect(page.get_by_test_id("apis")).to_contain_text("Ticker")
    expect(page.get_by_test_id("apis")).not_to_contain_text("Train departures")
    shoot(page, "index")

    page.get_by_role("link", name="Ticker").click()
    expect(page.get_by_role("heading", name="Ticker analytics")).to_be_visible()
    expect(page.get_by_test_id("top-applications")).to_contain_text("Trading dashboard")
    # Every chart is drawn by Chart.js with data points.
    for chart in ("chart-events", "chart-bytes", "chart-channels", "chart-latency"):
        points = page.evaluate(
            """(id) => {
                const chart = Chart.getChart(document.querySelector(`canvas[data-chart="${id}"]`));
                if (!chart) return -1;
                return chart.data.datasets.reduce((n, set) => n + set.data.filter((v) => v).length, 0);
            }""",
            chart,
        )
        assert points > 0, chart
    # The last hour is still filling: the charts over time say so rather than show a plunge.
    notes = page.evaluate(
        """() => [...document.querySelectorAll("canvas[data-chart]")].map((canvas) => {
            const subtitle = Chart.getChart(canvas).options.plugins.subtitle;
            return subtitle.display ? subtitle.text : "";
        })"""
    )
    filling = "Dashed, lighter last point: this hour is still filling"
    assert notes == [filling, filling, "", filling]  # events, bytes, channels (no time), latency
    # p50, p95 and p99 often coincide: each has its own point shape, p99 is dashed and drawn on
    # top of p95, p95 on top of p50 (Chart.js draws a lower order later).
    styles = page.evaluate(
        """() => Chart.getChart(document.querySelector('canvas[data-chart="chart-latency"]')).data.datasets
            .map((set) => [set.label, set.pointStyle, set.borderDash.length > 0, set.order])"""
    )
    assert styles == [["p50", "circle", False, 3], ["p95", "rect", False, 2], ["p99", "triangle", True, 1]]
    page.evaluate(
        """() => {
            const chart = Chart.getChart(document.querySelector('canvas[data-chart="chart-latency"]'));
            chart.data.datasets[2].data = [...chart.data.datasets[1].data];
            chart.update();
        }"""
    )
    page.locator('canvas[data-chart="chart-latency"]').screenshot(path="/tmp/polprov-latency-p99-is-p95.png")
    table = page.get_by_test_id("connections")
    expect(table.locator("tbody tr")).to_have_count(1)
    expect(table).to_contain_text("Trading dashboard")
    expect(table).to_contain_text("1,204")
    expect(table).not_to_contain_text("Station board")
    shoot(page, "provider")

    # A gateway process reports a new snapshot: the table follows without a reload.
    subscriptions = market["subscriptions"]
    live.publish(
        market["process"],
        [
            _connection(1, subscriptions[0], market["api"], events_out=2_480, bytes_out=238_080),
            _connection(2, subscriptions[2], market["api"], protocol="sse", events_out=17, bytes_out=1_632),
            market["connections"][1],
        ],
    )
    expect(table.locator("tbody tr")).to_have_count(2, timeout=10_000)
    expect(table).to_contain_text("2,480")
    expect(table).to_contain_text("Risk engine")
    expect(table).to_contain_text("SSE")
    expect(page.get_by_test_id("connections-count")).to_have_text("2")
    page.get_by_test_id("connections").scroll_into_view_if_needed()
    shoot(page, "provider-live-updated")


def test_bad_range_shows_the_field_error(page: Page, live_server, alice, admin_user, market):
    _sign_in(page, live_server, alice.email)
    page.goto(f"{live_server.url}/analytics/apis/ticker/")
    # The consumer page's picker: date inputs, the preset kept for a change of step only.
    expect(page.get_by_label("From")).to_have_attribute("type", "date")
    page.get_by_label("From").fill("2026-03-10")
    page.get_by_label("To (inclusive)").fill("2026-03-01")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_test_id("error-to")).to_contain_text("must be after the start (2026-03-10)")
    expect(page.get_by_test_id("connections")).to_be_visible()  # live data still shown
    shoot(page, "provider-bad-range")
    page.get_by_role("link", name="7 days").click()
    expect(page.get_by_test_id("total-events")).not_to_have_text("0")
    expect(page.get_by_test_id("range-label")).to_contain_text("Last 7 days")

    # On the platform page the fields stay in one line, the error under its field.
    _sign_in(page, live_server, admin_user.email)
    page.goto(f"{live_server.url}/analytics/platform/?from=2026-03-10&to=2026-03-01")
    tops = page.evaluate(
        """() => ["range-from", "range-to", "range-step"].map(
            (id) => Math.round(document.getElementById(id).getBoundingClientRect().top))"""
    )
    page.get_by_test_id("range-picker").screenshot(path="/tmp/polprov-platform-bad-range.png")
    assert len(set(tops)) == 1, tops
    expect(page.get_by_test_id("error-to")).to_be_visible()


def test_platform_page_shows_processes_live(page: Page, live_server, admin_user, market):
    _sign_in(page, live_server, admin_user.email)
    # The staff pages share one menu in the navigation bar.
    page.get_by_role("navigation").get_by_role("button", name="Staff").click()
    page.get_by_role("link", name="Platform analytics").click()
    expect(page.get_by_role("heading", name="Platform analytics")).to_be_visible()
    expect(page.get_by_test_id("busiest-apis")).to_contain_text("Ticker")
    processes = page.get_by_test_id("processes")
    expect(processes).to_contain_text(PROCESS)
    live.publish({**market["process"], "connections": 5, "events_out": 900_000}, market["connections"])
    expect(processes).to_contain_text("900,000", timeout=10_000)
    shoot(page, "platform")


def _redis_down(settings) -> tuple[str, object]:
    """Point ``REDIS_URL`` (and ``analytics.live``'s client) at a closed port; returns what to
    restore with ``_redis_back``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    saved = (settings.REDIS_URL, live._client)
    settings.REDIS_URL, live._client = f"redis://127.0.0.1:{port}/0", None
    return saved


def _redis_back(settings, saved: tuple[str, object]) -> None:
    settings.REDIS_URL, live._client = saved


def test_live_panels_say_when_redis_cannot_be_reached(
    page: Page, live_server, alice, admin_user, market, settings
):
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL")
    _sign_in(page, live_server, alice.email)
    page.goto(f"{live_server.url}/analytics/apis/ticker/")
    table = page.get_by_test_id("connections")
    expect(table.locator("tbody tr")).to_have_count(1)

    # Redis goes away while the page is open: the next poll says so, instead of "none open".
    saved = _redis_down(settings)
    try:
        empty = page.get_by_test_id("live-empty")
        expect(empty).to_have_text("Live data unavailable: Redis cannot be reached.", timeout=10_000)
        expect(empty).to_be_visible()
        expect(table.locator("tbody tr")).to_have_count(0)
        expect(page.get_by_test_id("connections-count")).to_have_text("?")
        page.get_by_test_id("connections").scroll_into_view_if_needed()
        shoot(page, "provider-live-unavailable")
    finally:
        _redis_back(settings, saved)
    # Back: the table and the ordinary empty text return.
    expect(table.locator("tbody tr")).to_have_count(1, timeout=10_000)
    expect(empty).to_be_hidden()
    expect(page.get_by_test_id("connections-count")).to_have_text("1")

    # Loaded while Redis is down: the platform page says so from the start.
    page.context.clear_cookies()
    _sign_in(page, live_server, admin_user.email)
    saved = _redis_down(settings)
    try:
        page.goto(f"{live_server.url}/analytics/platform/")
        expect(page.get_by_test_id("live-empty")).to_have_text(
            "Live data unavailable: Redis cannot be reached."
        )
        expect(page.get_by_test_id("processes-count")).to_have_text("?")
        expect(page.get_by_test_id("busiest-apis")).to_contain_text("Ticker")  # usage does not need Redis
        shoot(page, "platform-live-unavailable")
    finally:
        _redis_back(settings, saved)
    expect(page.get_by_test_id("processes")).to_contain_text(PROCESS, timeout=10_000)


# Every element wider than the page or sticking out of the card it is in, as "tag.class: px".
OVERFLOW = """(scrolling) => {
    const found = [];
    const root = document.documentElement;
    if (root.scrollWidth > root.clientWidth) found.push(`page: ${root.scrollWidth}px`);
    for (const card of document.querySelectorAll(".card")) {
        const box = card.getBoundingClientRect();
        for (const node of card.querySelectorAll("table, th, td, canvas, form, .btn-group")) {
            // On a phone a wide table may scroll inside its card (.table-responsive); not on a laptop.
            if (node.closest(".table-responsive") && (scrolling || node.tagName !== "TABLE")) continue;
            const rect = node.getBoundingClientRect();
            if (rect.width && (rect.right > box.right + 1 || rect.left < box.left - 1)) {
                const name = `${node.tagName.toLowerCase()}.${node.className}`;
                found.push(`${name}: ${Math.round(rect.right - box.right)}px`);
            }
        }
    }
    return found;
}"""


PAGES = (
    ("index", "/analytics/"),
    ("provider", "/analytics/apis/ticker/"),
    ("platform", "/analytics/platform/"),
)


@pytest.mark.parametrize("width", [1280, 390])
def test_pages_fit_their_width(page: Page, live_server, admin_user, market, width):
    """At a laptop's and a phone's width nothing scrolls sideways and no table sticks out of its
    card (a wide table scrolls inside it). Screenshots: /tmp/polprov-<page>-<width>.png."""
    # The longest navigation bar: a platform admin who also publishes APIs.
    admin_user.is_provider = True
    admin_user.save(update_fields=["is_provider"])
    page.set_viewport_size({"width": width, "height": 900})
    _sign_in(page, live_server, admin_user.email)
    problems = {}
    for name, path in PAGES:
        page.goto(f"{live_server.url}{path}")
        expect(page.get_by_test_id("headline")).to_be_visible()
        page.wait_for_timeout(300)
        page.screenshot(path=f"/tmp/polprov-{name}-{width}.png", full_page=True)
        # Also in parts (-1, -2, ...): a whole phone-width page is too tall to read as one picture.
        height = page.evaluate("document.documentElement.scrollHeight")
        for part, top in enumerate(range(0, height, 1_000) if width < 576 else (), start=1):
            clip = {"x": 0, "y": top, "width": width, "height": min(1_000, height - top)}
            page.screenshot(path=f"/tmp/polprov-{name}-{width}-{part}.png", full_page=True, clip=clip)
        problems[name] = page.evaluate(OVERFLOW, width < 576)
    assert problems == {name: [] for name, _ in PAGES}
    if width >= 992:  # the bar is expanded: every link on one line, Analytics and Staff among them
        links = page.locator("#eg-nav .nav-link")
        tops = {round(box["y"]) for box in (links.nth(n).bounding_box() for n in range(links.count()))}
        assert len(tops) == 1, tops
        expect(
            page.get_by_role("navigation").get_by_role("link", name="Analytics", exact=True)
        ).to_be_visible()
        expect(page.get_by_role("navigation").get_by_role("button", name="Staff")).to_be_visible()
