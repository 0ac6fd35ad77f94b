"""The provider's analytics: /analytics/, /analytics/apis/<slug>/ (page, CSV, live JSON) and
/api/v1/analytics/apis/<slug>/ (REST), with known traffic and exact numbers; persona isolation."""

from __future__ import annotations

import csv
import html
import io
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from analytics import live
from analytics.models import HandshakeRecord
from analytics.services import handshake_record_batch, latency_record_batch, usage_counts_batch
from portal.models import Subscription
from tests.factories import (
    APIFactory,
    ApplicationFactory,
    BusinessPlanFactory,
    SubscriptionFactory,
    UserFactory,
)

PRICES, ORDERS, FORECASTS = "prices/{symbol}", "orders", "forecasts/{city}"
PROCESS = "dprov-test:1"


def _minute(ago: timedelta):
    return (timezone.now() - ago).replace(second=0, microsecond=0)


@pytest.fixture
def dave(db):
    """Another provider, whose API alice must never see."""
    return UserFactory(email="dave@example.com", is_provider=True)


@pytest.fixture
def traffic(ticker_api, bob, carol, dave):
    """Known traffic in the last hour on alice's Ticker (two applications) and on dave's Weather
    (carol's application), an old day outside the range, handshakes and a live snapshot."""
    free, gold = ticker_api.plans.get(name="Free"), ticker_api.plans.get(name="Gold")
    board = SubscriptionFactory(application=ApplicationFactory(owner=bob, name="Bob's board"), plan=free)
    erin = UserFactory(email="erin@example.com")
    terminal = SubscriptionFactory(
        application=ApplicationFactory(owner=erin, name="Erin's terminal"), plan=gold
    )
    frank = ApplicationFactory(owner=UserFactory(email="frank@example.com"), name="Frank's feed")
    SubscriptionFactory(application=frank, plan=free, status=Subscription.Status.PENDING)
    SubscriptionFactory(
        application=ApplicationFactory(owner=erin, name="Erin's other"), plan=free, status="rejected"
    )
    weather = APIFactory(provider=dave, name="Weather", slug="weather")
    forecast = SubscriptionFactory(
        application=ApplicationFactory(owner=carol, name="Carol's forecast"),
        plan=BusinessPlanFactory(api=weather, name="Free"),
    )
    a, b = _minute(timedelta(minutes=10)), _minute(timedelta(minutes=5))
    old = _minute(timedelta(days=2))
    # (subscription, minute, channel, direction, events, bytes, throttled, throttled bytes, dropped,
    #  rejected, failed)
    usage_counts_batch(
        rows=[
            (board.pk, a, PRICES, "out", 100, 10_000, 5, 500, 2, 0, 0),
            (board.pk, b, PRICES, "out", 50, 5_000, 0, 0, 0, 0, 0),
            (board.pk, b, ORDERS, "in", 3, 300, 0, 0, 0, 1, 0),
            (terminal.pk, a, PRICES, "out", 20, 2_000, 0, 0, 0, 0, 1),
            (board.pk, old, PRICES, "out", 1_000, 100_000, 0, 0, 0, 0, 0),
            (forecast.pk, a, FORECASTS, "out", 999, 99_900, 7, 700, 0, 0, 0),
        ]
    )
    latency_record_batch(
        rows=[
            (board.pk, a, PRICES, "out", 5_000, 90),
            (board.pk, a, PRICES, "out", 50_000, 9),
            (board.pk, b, PRICES, "out", 1_000_000, 1),
            (forecast.pk, a, FORECASTS, "out", 30_000_000, 999),
        ]
    )
    now = timezone.now()

    def handshake(api, outcome, code=None, subscription=None):
        return HandshakeRecord(
            at=now - timedelta(minutes=3),
            outcome=outcome,
            code=code,
            protocol="websocket",
            api=api,
            subscription=subscription,
            application=subscription.application if subscription else None,
        )

    handshake_record_batch(
        records=[
            *(handshake(ticker_api, "accepted", subscription=board) for _ in range(4)),
            handshake(ticker_api, "invalid_credential", 4401),
            handshake(ticker_api, "invalid_credential", 4401),
            handshake(ticker_api, "quota_exhausted", 4429, subscription=terminal),
            *(handshake(weather, "forbidden", 4403) for _ in range(5)),
            handshake(None, "invalid_credential", 4401),
        ]
    )
    started = now.timestamp() - 600
    live.publish(
        {
            "process": PROCESS,
            "pid": 1,
            "host": "dprov-test",
            "started_at": started,
            "connections": 2,
            "events_out": 5_000,
            "bytes_out": 400_000,
            "events_in": 12,
            "bytes_in": 1_200,
        },
        [
            _connection(1, board, ticker_api, "Bob's board", PRICES, events_out=42, bytes_out=4_200),
            _connection(2, forecast, weather, "Carol's forecast", FORECASTS, events_out=7, bytes_out=700),
        ],
    )
    yield {"board": board, "terminal": terminal, "weather": weather, "forecast": forecast}
    live.withdraw(PROCESS)


def _connection(number, subscription, api, application, channel, **counts):
    return {
        "id": f"{PROCESS}:{number}",
        "process": PROCESS,
        "protocol": "websocket",
        "subscription_id": subscription.pk,
        "application_id": subscription.application_id,
        "application": application,
        "api_id": api.pk,
        "api": api.slug,
        "version": "1.0.0",
        "channels": [channel],
        "client_ip": f"10.0.0.{number}",
        "since": timezone.now().timestamp() - 120,
        "events_out": 0,
        "bytes_out": 0,
        "events_in": 0,
        "bytes_in": 0,
        **counts,
    }


def _csv(response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.content.decode())))


# --- the page -----------------------------------------------------------------------------------


def test_provider_page_shows_the_apis_numbers(client, alice, ticker_api, traffic):
    client.force_login(alice)
    response = client.get("/analytics/apis/ticker/?range=1h")
    assert response.status_code == 200
    page = response.content.decode()

    assert 'data-testid="subscribers-active">2<' in page  # bob's and erin's; frank's is pending
    assert 'data-testid="subscribers-new">3<' in page  # the rejected one does not count
    assert 'data-testid="total-events">173<' in page  # the day-old 1,000 are outside the range
    assert 'data-testid="total-bytes" title="17,300 bytes">17.3 KB<' in page
    assert 'data-testid="total-errors">9<' in page
    assert 'data-testid="error-rate">4.95 %<' in page  # 9 / (173 + 9)
    for kind, count in (
        ("throttled_events", 5),
        ("dropped_events", 2),
        ("rejected_events", 1),
        ("failed_events", 1),
    ):
        assert f'data-testid="errors-{kind}">{count}<' in page
    assert 'data-testid="handshakes-accepted">4<' in page
    assert 'data-testid="handshakes-refused">3<' in page
    assert "Invalid credential" in page and "Quota exhausted" in page
    assert "Forbidden" not in page  # dave's API's refusals
    assert 'data-testid="latency-overall-p50">≤ 5 ms<' in page
    assert 'data-testid="latency-p95">≤ 50 ms<' in page
    # Top applications, busiest first; dave's customer is not there.
    assert page.index("Bob&#x27;s board") < page.index("Erin&#x27;s terminal")
    assert "Carol&#x27;s forecast" not in page and FORECASTS not in page
    # Live connections: alice's API's only.
    assert 'data-testid="connections-count">1<' in page
    assert "10.0.0.1" in page and "10.0.0.2" not in page
    # Charts have the data they draw.
    assert 'id="chart-events"' in page and "Events per minute" in page and "Bytes per minute" in page


def test_provider_page_charts_hold_the_series(client, alice, ticker_api, traffic):
    client.force_login(alice)
    charts = client.get("/analytics/apis/ticker/?range=1h").context["charts"]
    events = {dataset["label"]: dataset["data"] for dataset in charts["events"]["datasets"]}
    assert sum(events["Delivered, server → client"]) == 170
    assert sum(events["Accepted, client → server"]) == 3
    assert sum(events["Not delivered (errors)"]) == 9
    assert len(charts["events"]["labels"]) == 61  # minutes from the floored start to now
    assert charts["bytes"]["unit"] == "bytes" and charts["bytes"]["y_title"] == "Bytes per minute"
    assert charts["channels"]["labels"] == [PRICES, ORDERS]


def test_charts_mark_a_last_step_that_is_not_whole(client, alice, ticker_api, traffic):
    client.force_login(alice)
    # Ending now: the last minute is still filling, on every chart over time.
    charts = client.get("/analytics/apis/ticker/?range=1h").context["charts"]
    assert [charts[name]["partial"] for name in ("events", "bytes", "latency", "channels")] == [
        "still filling",
        "still filling",
        "still filling",
        "",
    ]
    assert charts["events"]["step"] == "minute"
    # Ending inside an hour of the past: that hour is cut, not filling.
    charts = client.get("/analytics/apis/ticker/?from=2026-01-01&to=2026-01-02T10:30&step=hour").context[
        "charts"
    ]
    assert charts["events"]["partial"] == "cut at 10:30 UTC"
    assert charts["events"]["labels"][-1] == "02 Jan 10:00"
    # Whole days: nothing to mark.
    charts = client.get("/analytics/apis/ticker/?from=2026-01-01&to=2026-01-02").context["charts"]
    assert charts["events"]["partial"] == "" and charts["latency"]["partial"] == ""


def test_range_is_said_once_with_the_pickers_rules(client, alice, admin_user, ticker_api, traffic):
    client.force_login(alice)
    page = html.unescape(client.get("/analytics/apis/ticker/?from=2026-01-01&to=2026-01-02").content.decode())
    label = page[page.index('data-testid="range-label"') :]
    label = label[: label.index("</span>\n")]
    assert "1 Jan 2026, 00:00 – 3 Jan 2026, 00:00 UTC · per hour" in label
    assert "2026-01-01 00:00" not in page  # the form's own label, in another format
    # A date picker like the usage page's, whose help says that dates replace the preset.
    assert 'type="date"' in page and 'name="from" value="2026-01-01"' in page
    assert "From and To replace the preset range" in page
    page = html.unescape(client.get("/analytics/apis/ticker/?range=7d").content.decode())
    assert "Last 7 days</span> · " in page
    assert '<input type="hidden" name="range" value="7d">' in page  # kept when only the step changes
    client.force_login(admin_user)
    for url in ("/analytics/", "/analytics/platform/"):
        page = client.get(url + "?range=7d").content.decode()
        assert page.count('data-testid="range-label"') == 1 and "Last 7 days" in page, url


def test_index_lists_the_providers_apis_with_headline_numbers(client, alice, dave, ticker_api, traffic):
    client.force_login(alice)
    page = client.get("/analytics/?range=1h").content.decode()
    assert 'data-testid="events-ticker">173<' in page
    assert 'data-testid="total-events">173<' in page
    assert "Weather" not in page
    client.force_login(dave)
    page = client.get("/analytics/?range=1h").content.decode()
    assert 'data-testid="events-weather">999<' in page and "Ticker" not in page


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("from=2026-13-01", "from", '"2026-13-01" is not a date'),
        ("from=2026-02-01&to=2026-01-01", "to", "must be after the start"),
        ("range=2y", "range", "Select a valid choice"),
        ("from=2020-01-01&to=2026-01-01&step=minute", "step", "too many points"),
        ("to=2026-01-01", "from", "give a start date"),
    ],
)
def test_bad_range_is_a_400_naming_the_field(client, alice, ticker_api, query, field, message):
    client.force_login(alice)
    response = client.get(f"/analytics/apis/ticker/?{query}")
    assert response.status_code == 400
    page = html.unescape(response.content.decode())
    assert message in page and 'data-testid="range-errors"' in page
    assert f'data-testid="error-{field}"' in page
    exported = client.get(f"/analytics/apis/ticker/?{query}&format=csv")
    assert exported.status_code == 400 and exported.content.decode().startswith(f"{field}:")
    rest = client.get(f"/api/v1/analytics/apis/ticker/?{query}")
    assert rest.status_code == 400 and message in rest.json()[field][0]
    assert client.get(f"/analytics/?{query}").status_code == 400


# --- CSV ----------------------------------------------------------------------------------------


def test_csv_exports_hold_the_pages_numbers(client, alice, ticker_api, traffic):
    client.force_login(alice)
    report = client.get("/analytics/apis/ticker/?range=1h").context["report"]
    base = "/analytics/apis/ticker/?range=1h&step=minute&format=csv"

    series = _csv(client.get(base))
    assert len(series) == len(report["series"])
    assert sum(int(row["events_out"]) for row in series) == 170
    assert sum(int(row["bytes_out"]) for row in series) == 17_000
    assert sum(int(row["events_in"]) for row in series) == 3
    assert sum(int(row["errors"]) for row in series) == report["totals"]["errors"] == 9
    assert [int(row["events_out"]) for row in series] == [row["events_out"] for row in report["series"]]

    applications = _csv(client.get(base + "&table=applications"))
    assert [
        (row["application"], int(row["events"]), int(row["bytes"]), int(row["errors"]))
        for row in applications
    ] == [
        ("Bob's board", 153, 15_300, 8),
        ("Erin's terminal", 20, 2_000, 1),
    ]
    assert [row["application"] for row in report["applications"]] == ["Bob's board", "Erin's terminal"]

    channels = _csv(client.get(base + "&table=channels"))
    assert [
        (
            row["channel"],
            row["direction"],
            int(row["events"]),
            int(row["bytes"]),
            int(row["throttled_events"]),
        )
        for row in channels
    ] == [(PRICES, "out", 170, 17_000, 5), (ORDERS, "in", 3, 300, 0)]

    errors = {
        (row["what"], row["kind"]): int(row["count"]) for row in _csv(client.get(base + "&table=errors"))
    }
    assert errors == {
        ("events", "throttled_events"): 5,
        ("events", "dropped_events"): 2,
        ("events", "rejected_events"): 1,
        ("events", "failed_events"): 1,
        ("handshakes", "accepted"): 4,
        ("handshakes", "invalid_credential"): 2,
        ("handshakes", "quota_exhausted"): 1,
    }

    latency = _csv(client.get(base + "&table=latency"))
    assert [
        (row["channel"], int(row["events"]), float(row["p50_seconds"]), float(row["p99_seconds"]))
        for row in latency
    ] == [
        ("(all channels)", 100, 0.005, 0.05),
        (PRICES, 100, 0.005, 0.05),
    ]

    connections = _csv(client.get(base + "&table=connections"))
    assert [(row["application"], row["client_ip"], row["events_out"]) for row in connections] == [
        ("Bob's board", "10.0.0.1", "42")
    ]
    assert client.get(base + "&table=nope").status_code == 400


def test_index_csv_matches_the_page(client, alice, ticker_api, traffic):
    client.force_login(alice)
    response = client.get("/analytics/?range=1h&format=csv")
    # Named after the page and its table, once each: analytics-apis-<start>-<end>.csv.
    assert re.fullmatch(
        r'attachment; filename="analytics-apis-\d{8}T\d{4}-\d{8}T\d{4}\.csv"', response["Content-Disposition"]
    )
    series = client.get("/analytics/apis/ticker/?range=1h&format=csv")["Content-Disposition"]
    assert series.startswith('attachment; filename="ticker-series-')
    rows = _csv(response)
    assert [
        (row["slug"], int(row["events"]), int(row["errors"]), int(row["connections"])) for row in rows
    ] == [("ticker", 173, 9, 1)]


# --- REST and live JSON -------------------------------------------------------------------------


def test_rest_gives_the_same_report(client, alice, ticker_api, traffic):
    client.force_login(alice)
    body = client.get("/api/v1/analytics/apis/ticker/?range=1h").json()
    assert body["api"] == {"slug": "ticker", "name": "Ticker"}
    assert body["subscribers"] == {"active": 2, "new": 3}
    assert body["totals"]["events"] == 173 and body["totals"]["bytes"] == 17_300
    assert body["totals"]["errors"] == 9 and body["totals"]["error_rate"] == pytest.approx(9 / 182)
    assert [(row["application"], row["events"]) for row in body["applications"]] == [
        ("Bob's board", 153),
        ("Erin's terminal", 20),
    ]
    assert body["latency"]["overall"] == {"p50": 0.005, "p95": 0.05, "p99": 0.05, "events": 100}
    assert body["handshakes"]["refused"] == 3
    assert [row["client_ip"] for row in body["connections"]] == ["10.0.0.1"]
    assert sum(point["events_out"] for point in body["series"]) == 170
    # The range used, as the consumer's REST answer has it: the preset, empty for from/to.
    assert (body["range"]["preset"], body["range"]["step"], body["range"]["label"]) == (
        "1h",
        "minute",
        "Last hour",
    )
    # from/to replace range when both are given (the page's picker says so).
    both = client.get("/api/v1/analytics/apis/ticker/?range=1h&from=2026-01-01&to=2026-01-02").json()
    assert both["range"]["preset"] == "" and both["range"]["start"] == "2026-01-01T00:00:00Z"


def test_live_connections_json_and_rest(client, alice, ticker_api, traffic):
    client.force_login(alice)
    data = client.get("/analytics/apis/ticker/live/").json()
    assert data["count"] == 1
    (row,) = data["connections"]
    assert row["application"] == "Bob's board" and row["channels"] == [PRICES]
    assert (row["events"], row["bytes"], row["protocol"], row["client_ip"]) == (
        42,
        4_200,
        "websocket",
        "10.0.0.1",
    )
    rest = client.get("/api/v1/analytics/apis/ticker/connections/").json()
    assert rest["count"] == 1 and rest["connections"][0]["events_out"] == 42


def test_live_json_follows_a_new_snapshot(client, alice, ticker_api, traffic):
    client.force_login(alice)
    board = traffic["board"]
    now = timezone.now().timestamp()
    live.publish(
        {"process": PROCESS, "pid": 1, "host": "dprov-test", "started_at": now - 600, "connections": 2},
        [
            _connection(
                1, board, ticker_api, "Bob's board", PRICES, events_out=43, bytes_out=4_300, since=now - 120
            ),
            _connection(3, board, ticker_api, "Bob's board", ORDERS, events_in=1, bytes_in=10, since=now - 5),
        ],
    )
    data = client.get("/analytics/apis/ticker/live/").json()
    # Newest first.
    assert [(row["id"], row["events"], row["bytes"]) for row in data["connections"]] == [
        (f"{PROCESS}:3", 1, 10),
        (f"{PROCESS}:1", 43, 4_300),
    ]


# --- who sees what ------------------------------------------------------------------------------


def test_another_provider_sees_nothing_of_the_api(client, dave, ticker_api, traffic):
    client.force_login(dave)
    assert client.get("/analytics/apis/ticker/?range=1h").status_code == 404
    assert client.get("/analytics/apis/ticker/?range=1h&format=csv").status_code == 404
    assert client.get("/analytics/apis/ticker/?range=1h&format=csv&table=connections").status_code == 404
    assert client.get("/analytics/apis/ticker/live/").status_code == 404
    assert client.get("/api/v1/analytics/apis/ticker/").status_code == 404
    assert client.get("/api/v1/analytics/apis/ticker/connections/").status_code == 404
    # Their own page shows their own connection only.
    data = client.get("/analytics/apis/weather/live/").json()
    assert [row["application"] for row in data["connections"]] == ["Carol's forecast"]


def test_consumers_get_403_or_404(client, bob, ticker_api, traffic):
    client.force_login(bob)  # a subscriber of the API, not its provider
    assert client.get("/analytics/").status_code == 403
    assert client.get("/analytics/apis/ticker/").status_code == 403
    assert client.get("/analytics/apis/ticker/?format=csv").status_code == 403
    assert client.get("/analytics/apis/ticker/live/").status_code == 403
    assert client.get("/api/v1/analytics/apis/ticker/").status_code == 404
    assert client.get("/api/v1/analytics/apis/ticker/connections/").status_code == 404


def test_anonymous_visitors_sign_in_first(client, ticker_api):
    response = client.get("/analytics/apis/ticker/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert client.get("/analytics/apis/ticker/live/").status_code == 403
    assert client.get("/api/v1/analytics/apis/ticker/").status_code == 401


def test_staff_see_any_api(client, admin_user, ticker_api, traffic):
    client.force_login(admin_user)
    page = client.get("/analytics/apis/ticker/?range=1h").content.decode()
    assert 'data-testid="total-events">173<' in page
    assert "API settings" not in page  # that page is the provider's
    index = client.get("/analytics/?range=1h").content.decode()
    assert 'data-testid="events-ticker">173<' in index and 'data-testid="events-weather">999<' in index


def test_navigation_and_api_page_link_to_analytics(client, alice, ticker_api):
    client.force_login(alice)
    page = client.get("/provider/apis/ticker/").content.decode()
    assert 'href="/analytics/"' in page
    assert 'href="/analytics/apis/ticker/" data-testid="api-analytics"' in page
    assert 'href="/analytics/platform/"' not in page
    assert 'href="/analytics/apis/ticker/"' in client.get("/provider/apis/").content.decode()
