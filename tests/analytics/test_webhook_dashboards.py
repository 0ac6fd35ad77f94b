"""Webhook delivery metrics on the dashboards: the consumer's /usage/ (a Webhooks tab per
subscription, CSV ``table=webhooks``, ``webhooks`` in /api/v1/usage/subscriptions/<id>/), the
provider's /analytics/apis/<slug>/ and the platform's /analytics/platform/ (a Webhooks card, CSV
``table=webhooks``, ``webhooks`` in /api/v1/analytics/...). Known ``WebhookRecord`` rows written
through ``analytics.webhooks.webhook_record_batch``, exact numbers, persona isolation, and the
pages in headless Chromium (screenshots: /tmp/whdash-*.png)."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from analytics.services import usage_counts_batch
from analytics.webhooks import webhook_record_batch
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

PRICES, ORDERS, FORECASTS = "prices/{symbol}", "orders/{symbol}", "forecasts/{city}"


def _minute(ago: timedelta):
    return (timezone.now() - ago).replace(second=0, microsecond=0)


def _hook(subscription, webhook_id, minute, channel, *, attempts, delivered=0, retries=0, dead=0,
          s2=0, s3=0, s4=0, s5=0, errors=0, ms=0):  # fmt: skip
    """A ``WebhookRow``; attempts must be the sum of the status classes and errors."""
    assert attempts == s2 + s3 + s4 + s5 + errors
    return (subscription.pk, webhook_id, minute, channel, attempts, delivered, retries, dead,
            s2, s3, s4, s5, errors, ms)  # fmt: skip


def _testid(page: str, name: str) -> str:
    match = re.search(rf'data-testid="{name}"[^>]*>([^<]*)<', page)
    assert match, f"no {name} on the page"
    return html.unescape(match.group(1).strip())


def _csv(response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def _table(page: str, testid: str = "webhook-row", key: str = "data-webhook") -> list[dict[str, str]]:
    """The rows of a webhook table: the row's key and each ``data-col`` cell's text."""
    rows = []
    for found, body in re.findall(rf'data-testid="{testid}" {key}="([^"]+)">(.*?)</tr>', page, re.S):
        cells = dict(re.findall(r'data-col="(\w+)">([^<]*)<', body))
        rows.append(
            {"key": html.unescape(found), **{name: html.unescape(text) for name, text in cells.items()}}
        )
    return rows


# --- the consumer ---------------------------------------------------------------------------------


@pytest.fixture
def bob_webhooks(bob, ticker_api):
    """Bob's subscription, in the last 24 hours: webhook 101 on prices made 14 attempts (11
    answered 2xx, one 4xx, two 5xx; 3 retries, 1 dead letter; 1,200 ms over 14 answers), webhook
    102 on orders made 6 (one 3xx, two 5xx, three without an answer; 4 retries, 2 dead letters;
    600 ms over 3 answers); three days ago webhook 101 made 50 more (outside the range). 1,000
    events delivered over WebSocket as well."""
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Bob's hooks"), plan=ticker_api.plans.get(name="Free")
    )
    recent, earlier = _minute(timedelta(minutes=5)), _minute(timedelta(minutes=65))
    webhook_record_batch(
        rows=[
            _hook(subscription, 101, recent, PRICES, attempts=10, delivered=7, retries=3, dead=1,
                  s2=7, s4=1, s5=2, ms=1000),
            _hook(subscription, 101, earlier, PRICES, attempts=4, delivered=4, s2=4, ms=200),
            _hook(subscription, 102, recent, ORDERS, attempts=6, retries=4, dead=2, s3=1, s5=2, errors=3,
                  ms=600),
            _hook(subscription, 101, _minute(timedelta(days=3)), PRICES, attempts=50, delivered=50, s2=50,
                  ms=5000),
        ]
    )  # fmt: skip
    usage_counts_batch(rows=[(subscription.pk, recent, PRICES, "out", 1000, 100_000, 0, 0, 0, 0, 3)])
    return subscription


@pytest.fixture
def carol_webhooks(carol, ticker_api):
    """Carol's subscription: webhook 201 on prices delivered 5 events in 5 attempts (50 ms)."""
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=carol, name="Carol's hooks"),
        plan=ticker_api.plans.get(name="Free"),
    )
    webhook_record_batch(
        rows=[
            _hook(
                subscription, 201, _minute(timedelta(minutes=7)), PRICES, attempts=5, delivered=5, s2=5, ms=50
            )
        ]
    )
    return subscription


def test_webhooks_tab_shows_totals_answers_and_each_webhook(client, bob, bob_webhooks):
    client.force_login(bob)
    page = client.get("/usage/").content.decode()

    # 20 attempts: 11 answered 2xx, 1 3xx, 1 4xx, 4 5xx, 3 without an answer; 1,800 ms over 17 answers.
    assert _testid(page, "webhook-attempts-badge") == "20 attempts"
    assert _testid(page, "webhook-dead-badge") == "3 dead"
    assert _testid(page, "webhook-attempts") == "20"
    assert _testid(page, "webhook-delivered") == "11"
    assert _testid(page, "webhook-success") == "55.0 %"
    assert _testid(page, "webhook-retries") == "7"
    assert _testid(page, "webhook-dead") == "3"
    assert _testid(page, "webhook-attempt-time") == "106 ms"
    classes = {key: _testid(page, f"webhook-{key}") for key in ("status_2xx", "status_3xx", "status_4xx",
                                                                   "status_5xx", "errors")}  # fmt: skip
    assert classes == {
        "status_2xx": "11",
        "status_3xx": "1",
        "status_4xx": "1",
        "status_5xx": "4",
        "errors": "3",
    }

    busiest, other = _table(page)
    assert busiest == {
        "key": "101", "attempts": "14", "delivered": "11", "retries": "3", "dead": "1", "status_2xx": "11",
        "status_3xx": "0", "status_4xx": "1", "status_5xx": "2", "errors": "0", "success": "78.5 %",
        "attempt_ms": "86 ms",
    }  # fmt: skip
    assert other["key"] == "102" and other["success"] == "0 %" and other["attempt_ms"] == "200 ms"
    application = bob_webhooks.application_id
    assert (
        f'href="/apps/{application}/webhooks/101/"' in page
        and f'href="/apps/{application}/webhooks/102/"' in page
    )
    assert f"{PRICES}</td>" in page and f"{ORDERS}</td>" in page

    chart = json.loads(re.search(rf'id="webhook-chart-{bob_webhooks.pk}"[^>]*>(.*?)</script>', page).group(1))
    assert (sum(chart["delivered"]), sum(chart["failed"]), sum(chart["dead"])) == (11, 9, 3)
    assert len(chart["labels"]) == 25  # per hour, as the events chart
    assert 'data-usage-chart="webhooks"' in page
    assert 'data-testid="csv-webhooks"' in page


def test_a_week_takes_in_the_older_attempts(client, bob, bob_webhooks):
    client.force_login(bob)
    page = client.get("/usage/?range=7d").content.decode()
    assert _testid(page, "webhook-attempts") == "70"
    assert _testid(page, "webhook-success") == "87.1 %"  # 61 / 70 = 0.8714
    assert _table(page)[0]["attempts"] == "64"


def test_subscription_without_webhooks_has_no_webhooks_tab(client, bob, ticker_api):
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Socket app"), plan=ticker_api.plans.get(name="Free")
    )
    usage_counts_batch(
        rows=[(subscription.pk, _minute(timedelta(minutes=3)), PRICES, "out", 9, 900, 0, 0, 0, 0, 0)]
    )
    client.force_login(bob)
    page = client.get("/usage/").content.decode()
    assert _testid(page, "events-delivered") == "9"
    assert f'id="webhooks-{subscription.pk}"' not in page and "Webhooks <span" not in page
    assert 'data-testid="csv-webhooks"' not in page
    assert _csv(client.get("/usage/?format=csv&table=webhooks")) == []


def test_webhooks_with_only_older_attempts_show_zeros_and_say_so(client, bob, ticker_api):
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Mixed app"), plan=ticker_api.plans.get(name="Free")
    )
    usage_counts_batch(
        rows=[(subscription.pk, _minute(timedelta(minutes=3)), PRICES, "out", 9, 900, 0, 0, 0, 0, 0)]
    )
    webhook_record_batch(
        rows=[
            _hook(subscription, 7, _minute(timedelta(days=2)), PRICES, attempts=2, delivered=2, s2=2, ms=40)
        ]
    )
    client.force_login(bob)
    page = client.get("/usage/").content.decode()
    assert _testid(page, "webhook-attempts-badge") == "0 attempts"
    assert _testid(page, "webhook-attempts") == "0"
    assert _testid(page, "webhook-success") == "–"
    assert "No webhook delivery was attempted in this range" in page
    assert f'href="/apps/{subscription.application_id}/webhooks/"' in page
    assert 'data-usage-chart="webhooks"' not in page

    data = client.get(f"/api/v1/usage/subscriptions/{subscription.pk}/").json()
    assert data["webhooks"]["totals"]["attempts"] == 0 and data["webhooks"]["webhooks"] == []
    week = client.get(f"/api/v1/usage/subscriptions/{subscription.pk}/?range=7d").json()
    assert week["webhooks"]["totals"]["delivered"] == 2


def test_subscription_with_only_webhook_attempts_is_listed(client, bob, ticker_api):
    """Attempts still retrying (no event delivered or failed yet) make the card show."""
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Retrying app"), plan=ticker_api.plans.get(name="Free")
    )
    webhook_record_batch(
        rows=[
            _hook(subscription, 9, _minute(timedelta(minutes=4)), PRICES, attempts=3, retries=2, s5=3, ms=30)
        ]
    )
    client.force_login(bob)
    page = client.get("/usage/").content.decode()
    assert f'id="webhooks-{subscription.pk}"' in page
    assert _testid(page, "webhook-success") == "0 %"
    assert _testid(page, "webhook-status_5xx") == "3"


def test_csv_per_webhook_equals_the_page(client, bob, bob_webhooks):
    client.force_login(bob)
    page = client.get("/usage/?range=24h").content.decode()
    assert 'href="?range=24h&amp;format=csv&amp;table=webhooks"' in page

    rows = _csv(client.get("/usage/?range=24h&format=csv&table=webhooks"))

    assert [(row["subscription_id"], row["application"], row["api"], row["channel"]) for row in rows] == [
        (str(bob_webhooks.pk), "Bob's hooks", "ticker", PRICES),
        (str(bob_webhooks.pk), "Bob's hooks", "ticker", ORDERS),
    ]
    columns = ("attempts", "delivered", "retries", "dead", "status_2xx", "status_3xx", "status_4xx",
               "status_5xx", "errors")  # fmt: skip
    as_csv = [{"key": row["webhook_id"], **{name: f"{int(row[name]):,}" for name in columns}} for row in rows]
    on_page = [{name: row[name] for name in ("key", *columns)} for row in _table(page)]
    assert as_csv == on_page
    assert [(row["success_rate"], row["attempt_ms_mean"]) for row in rows] == [
        ("0.7857", "85.7"),
        ("0.0", "200.0"),
    ]
    assert sum(int(row["attempts"]) for row in rows) == int(_testid(page, "webhook-attempts"))


def test_rest_detail_has_the_webhooks_totals_each_webhook_and_series(client, bob, bob_webhooks):
    client.force_login(bob)
    data = client.get(f"/api/v1/usage/subscriptions/{bob_webhooks.pk}/?range=24h&step=hour").json()
    webhooks = data["webhooks"]
    assert webhooks["totals"] == {
        "attempts": 20, "delivered": 11, "retries": 7, "dead": 3, "status_2xx": 11, "status_3xx": 1,
        "status_4xx": 1, "status_5xx": 4, "errors": 3, "responses": 17, "attempt_ms_total": 1800,
        "attempt_ms_mean": pytest.approx(1800 / 17), "success_rate": 0.55,
    }  # fmt: skip
    assert [
        (row["webhook_id"], row["channel"], row["attempts"], row["dead"]) for row in webhooks["webhooks"]
    ] == [
        (101, PRICES, 14, 1),
        (102, ORDERS, 6, 2),
    ]
    assert len(webhooks["series"]) == len(data["series"]) == 25
    assert sum(point["attempts"] for point in webhooks["series"]) == 20
    assert [point["start"] for point in webhooks["series"]] == [point["start"] for point in data["series"]]


def test_rest_detail_without_webhooks_has_zeros(client, bob, ticker_api):
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Plain app"), plan=ticker_api.plans.get(name="Free")
    )
    client.force_login(bob)
    webhooks = client.get(f"/api/v1/usage/subscriptions/{subscription.pk}/").json()["webhooks"]
    assert webhooks["totals"]["attempts"] == 0 and webhooks["totals"]["success_rate"] is None
    assert webhooks["webhooks"] == [] and webhooks["series"] == []


def test_carol_never_sees_bobs_webhook_numbers(client, bob, carol, bob_webhooks, carol_webhooks):
    client.force_login(carol)
    page = client.get("/usage/?range=30d").content.decode()
    assert _testid(page, "webhook-attempts") == "5"
    assert [row["key"] for row in _table(page)] == ["201"]
    assert "Bob&#x27;s hooks" not in page and "/webhooks/101/" not in page

    rows = _csv(client.get("/usage/?range=30d&format=csv&table=webhooks"))
    assert [(row["subscription_id"], row["webhook_id"], row["attempts"]) for row in rows] == [
        (str(carol_webhooks.pk), "201", "5")
    ]
    assert client.get(f"/usage/?subscription={bob_webhooks.pk}&format=csv&table=webhooks").status_code == 400
    assert client.get(f"/api/v1/usage/subscriptions/{bob_webhooks.pk}/").status_code == 404
    mine = client.get(f"/api/v1/usage/subscriptions/{carol_webhooks.pk}/?range=30d").json()["webhooks"]
    assert mine["totals"]["attempts"] == 5 and [row["webhook_id"] for row in mine["webhooks"]] == [201]

    client.force_login(bob)
    bobs = client.get("/usage/?range=30d").content.decode()
    assert "/webhooks/201/" not in bobs and "Carol" not in bobs
    assert client.get(f"/api/v1/usage/subscriptions/{carol_webhooks.pk}/").status_code == 404


# --- the provider and the platform ----------------------------------------------------------------


@pytest.fixture
def dave(db):
    """Another provider, whose API alice must never see."""
    return UserFactory(email="dave@example.com", is_provider=True)


@pytest.fixture
def provider_webhooks(ticker_api, bob, carol, dave):
    """In the last hour, on alice's Ticker: bob's webhook 301 on prices (8 attempts: 6 2xx, two
    5xx; 2 retries; 800 ms), erin's 302 on prices (4 attempts: 2 2xx, one 4xx, one without an
    answer; 1 retry, 1 dead; 300 ms) and 303 on orders (3 attempts, 3 2xx; 90 ms). On dave's
    Weather: carol's 401 (20 attempts, all 5xx, 5 dead; 2,000 ms)."""
    free, gold = ticker_api.plans.get(name="Free"), ticker_api.plans.get(name="Gold")
    board = SubscriptionFactory(application=ApplicationFactory(owner=bob, name="Bob's board"), plan=free)
    erin = UserFactory(email="erin@example.com")
    terminal = SubscriptionFactory(
        application=ApplicationFactory(owner=erin, name="Erin's terminal"), plan=gold
    )
    weather = APIFactory(provider=dave, name="Weather", slug="weather")
    forecast = SubscriptionFactory(
        application=ApplicationFactory(owner=carol, name="Carol's forecast"),
        plan=BusinessPlanFactory(api=weather, name="Free"),
    )
    minute = _minute(timedelta(minutes=10))
    webhook_record_batch(
        rows=[
            _hook(board, 301, minute, PRICES, attempts=8, delivered=6, retries=2, s2=6, s5=2, ms=800),
            _hook(terminal, 302, minute, PRICES, attempts=4, delivered=2, retries=1, dead=1, s2=2, s4=1,
                  errors=1, ms=300),
            _hook(terminal, 303, minute, ORDERS, attempts=3, delivered=3, s2=3, ms=90),
            _hook(forecast, 401, minute, FORECASTS, attempts=20, retries=15, dead=5, s5=20, ms=2000),
            _hook(board, 301, _minute(timedelta(days=2)), PRICES, attempts=100, delivered=100, s2=100),
        ]
    )  # fmt: skip
    return {"board": board, "terminal": terminal, "forecast": forecast, "weather": weather}


def test_provider_page_has_a_webhooks_card_with_totals_answers_and_channels(client, alice, provider_webhooks):
    client.force_login(alice)
    page = client.get("/analytics/apis/ticker/?range=1h").content.decode()
    card = page[page.index('data-testid="webhooks"') :]
    # Ticker only: 15 attempts, 11 2xx, one 4xx, two 5xx, one without an answer; 1,190 ms over 14.
    assert _testid(card, "webhook-count") == "3 webhooks"
    assert _testid(card, "webhook-attempts") == "15"
    assert _testid(card, "webhook-delivered") == "11"
    assert _testid(card, "webhook-success") == "73.3 %"
    assert _testid(card, "webhook-retries") == "3"
    assert _testid(card, "webhook-dead") == "1"
    assert _testid(card, "webhook-attempt-time") == "85 ms"
    classes = ("status_2xx", "status_3xx", "status_4xx", "status_5xx", "errors")
    assert [_testid(card, f"webhook-{key}") for key in classes] == ["11", "0", "1", "2", "1"]
    rows = _table(card, key="data-key")
    assert [(row["key"], row["webhooks"], row["attempts"], row["dead"], row["success"]) for row in rows] == [
        (PRICES, "2", "12", "1", "66.6 %"),
        (ORDERS, "1", "3", "0", "100 %"),
    ]
    assert "forecasts" not in page and "Weather" not in page


def test_provider_webhooks_csv_and_rest_equal_the_page(client, alice, provider_webhooks):
    client.force_login(alice)
    report = client.get("/analytics/apis/ticker/?range=1h").context["report"]
    rows = _csv(client.get("/analytics/apis/ticker/?range=1h&format=csv&table=webhooks"))
    assert [
        (row["channel"], row["webhooks"], row["attempts"], row["delivered"], row["dead"]) for row in rows
    ] == [
        ("(all)", "3", "15", "11", "1"),
        (PRICES, "2", "12", "8", "1"),
        (ORDERS, "1", "3", "3", "0"),
    ]
    assert rows[0]["success_rate"] == str(round(11 / 15, 4)) and rows[0]["attempt_ms_mean"] == "85.0"
    assert report["webhooks"]["totals"]["attempts"] == sum(int(row["attempts"]) for row in rows[1:])

    data = client.get("/api/v1/analytics/apis/ticker/?range=1h").json()["webhooks"]
    assert (
        data["totals"]["attempts"] == 15
        and data["totals"]["status_4xx"] == 1
        and data["totals"]["webhooks"] == 3
    )
    assert [(row["channel"], row["attempts"], row["errors"]) for row in data["channels"]] == [
        (PRICES, 12, 1),
        (ORDERS, 3, 0),
    ]


def test_a_provider_never_sees_another_providers_webhooks(client, alice, dave, provider_webhooks):
    client.force_login(dave)
    assert client.get("/analytics/apis/ticker/").status_code == 404
    assert client.get("/analytics/apis/ticker/?format=csv&table=webhooks").status_code == 404
    assert client.get("/api/v1/analytics/apis/ticker/").status_code == 404
    page = client.get("/analytics/apis/weather/?range=1h").content.decode()
    assert _testid(page, "webhook-attempts") == "20" and _testid(page, "webhook-dead") == "5"
    assert [row["key"] for row in _table(page, key="data-key")] == [FORECASTS]
    data = client.get("/api/v1/analytics/apis/weather/?range=1h").json()["webhooks"]
    assert data["totals"]["attempts"] == 20 and [row["channel"] for row in data["channels"]] == [FORECASTS]

    client.force_login(alice)
    assert client.get("/analytics/apis/weather/").status_code == 404
    assert client.get("/api/v1/analytics/apis/weather/").status_code == 404


def test_platform_webhooks_card_csv_and_rest(client, admin_user, provider_webhooks):
    client.force_login(admin_user)
    page = client.get("/analytics/platform/?range=1h").content.decode()
    card = page[page.index('data-testid="webhooks"') :]
    # Every API: 35 attempts, 11 2xx, 6 dead; 3,190 ms over 34 answers.
    assert _testid(card, "webhook-count") == "4 webhooks"
    assert _testid(card, "webhook-attempts") == "35"
    assert _testid(card, "webhook-success") == "31.4 %"
    assert _testid(card, "webhook-dead") == "6"
    assert _testid(card, "webhook-attempt-time") == "94 ms"
    assert [(row["key"], row["attempts"], row["success"]) for row in _table(card, key="data-key")] == [
        ("weather", "20", "0 %"),
        ("ticker", "15", "73.3 %"),
    ]
    rows = _csv(client.get("/analytics/platform/?range=1h&format=csv&table=webhooks"))
    assert [
        (row["slug"], row["provider"], row["webhooks"], row["attempts"], row["dead"]) for row in rows
    ] == [
        ("(all)", "", "4", "35", "6"),
        ("weather", "dave@example.com", "1", "20", "5"),
        ("ticker", "alice@example.com", "3", "15", "1"),
    ]
    data = client.get("/api/v1/analytics/platform/?range=1h").json()["webhooks"]
    assert data["totals"]["attempts"] == 35 and data["totals"]["status_5xx"] == 22
    assert [(row["slug"], row["attempts"]) for row in data["apis"]] == [("weather", 20), ("ticker", 15)]


def test_platform_webhooks_are_for_admins_only(client, alice, bob, provider_webhooks):
    for user in (alice, bob):
        client.force_login(user)
        assert client.get("/analytics/platform/?format=csv&table=webhooks").status_code == 403
        assert client.get("/api/v1/analytics/platform/").status_code == 403


def test_bad_csv_table_names_the_field(client, alice, provider_webhooks):
    client.force_login(alice)
    response = client.get("/analytics/apis/ticker/?format=csv&table=hooks")
    assert response.status_code == 400 and "table" in response.content.decode()
    assert "webhooks" in response.content.decode()


# --- in Chromium ----------------------------------------------------------------------------------


def shoot(page: Page, name: str) -> None:
    page.screenshot(path=f"/tmp/whdash-{name}.png", full_page=True)


@pytest.fixture
def webhook_day(transactional_db, ticker_api, bob, alice):
    """A day of bob's webhook traffic on Ticker, every 20 minutes: most attempts answered 2xx, a
    bad spell of 5xx answers and timeouts in the afternoon with retries and dead letters; his
    events delivered over WebSocket too."""
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Order router"), plan=ticker_api.plans.get(name="Free")
    )
    now = timezone.now().replace(second=0, microsecond=0)
    hooks, usage = [], []
    for index in range(72):
        minute = now - timedelta(minutes=20 * index + 1)
        bad = 20 <= index < 26
        ok = 30 + (index * 7) % 25
        s5, errors = (12, 4) if bad else (1 if index % 9 == 0 else 0, 0)
        dead = 2 if bad else 0
        attempts, retries, ms = ok + s5 + errors, s5 + errors, ok * 85 + s5 * 400
        hooks.append(
            _hook(subscription, 41, minute, PRICES, attempts=attempts, delivered=ok, retries=retries,
                  dead=dead, s2=ok, s5=s5, errors=errors, ms=ms)
        )  # fmt: skip
        if index % 2 == 0:
            hooks.append(
                _hook(
                    subscription, 42, minute, ORDERS, attempts=6, delivered=5, retries=1, s2=5, s4=1, ms=840
                )
            )
        usage.append((subscription.pk, minute, PRICES, "out", 400 + index, 40_000, 0, 0, 0, 0, dead))
    webhook_record_batch(rows=hooks)
    usage_counts_batch(rows=usage)
    return subscription


@pytest.mark.browser
def test_webhook_sections_in_chromium(page: Page, live_server, bob, alice, admin_user, webhook_day):
    card = f'[data-subscription="{webhook_day.pk}"]'
    _sign_in(page, live_server, bob.email)
    page.goto(live_server.url + "/usage/")
    page.locator(card).get_by_role("tab", name=re.compile("Webhooks")).click()
    pane = page.locator(f"#webhooks-{webhook_day.pk}")
    expect(pane).to_have_class(re.compile(r"\bshow\b"))
    expect(pane.locator('[data-usage-chart="webhooks"][data-chart-ready]')).to_be_visible()
    drawn = page.evaluate(
        """(id) => {
          const chart = Chart.getChart(document.querySelector(`#webhooks-${id} canvas`));
          const sum = (label) =>
            chart.data.datasets.find((d) => d.label === label).data.reduce((a, b) => a + b, 0);
          return [sum("Delivered (2xx)"), sum("Failed attempts"), sum("Dead letters"), chart.width > 200];
        }""",
        webhook_day.pk,
    )
    delivered = int(pane.get_by_test_id("webhook-status_2xx").inner_text().replace(",", ""))
    attempts = int(pane.get_by_test_id("webhook-attempts").inner_text().replace(",", ""))
    dead = int(pane.get_by_test_id("webhook-dead").inner_text().replace(",", ""))
    assert drawn == [delivered, attempts - delivered, dead, True]
    expect(pane.get_by_test_id("webhook-row")).to_have_count(2)
    page.wait_for_timeout(300)  # the tab's fade-in, for the screenshot
    shoot(page, "usage")

    _sign_in(page, live_server, alice.email)
    page.goto(live_server.url + "/analytics/apis/ticker/")
    webhooks = page.get_by_test_id("webhooks")
    expect(webhooks.get_by_test_id("webhook-attempts")).to_have_text(f"{attempts:,}")
    webhooks.scroll_into_view_if_needed()
    shoot(page, "provider")

    _sign_in(page, live_server, admin_user.email)
    page.goto(live_server.url + "/analytics/platform/")
    expect(page.get_by_test_id("webhooks").get_by_test_id("webhook-row")).to_have_count(1)
    shoot(page, "platform")
