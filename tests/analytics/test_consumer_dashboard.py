"""The consumer's usage dashboard: /usage/ (page and CSV) and /api/v1/usage/ (REST), with usage,
latency, connection and live rows written through analytics' own batch writers."""

from __future__ import annotations

import csv
import io
import re
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from analytics import live
from analytics.models import LATENCY_BOUNDS_US, ConnectionRecord
from analytics.services import (
    connection_record_batch,
    latency_record_batch,
    usage_counts_batch,
    usage_for_subscription,
)
from analytics.views import duration_words
from portal.models import Subscription
from portal.services.limits import period_bounds
from tests.factories import ApplicationFactory, BusinessPlanFactory, SubscriptionFactory

PRICES = "prices/{symbol}"
ORDERS = "orders/{symbol}"
MS = {5: 5_000, 20: 20_000, 100: 100_000}
assert all(bound in LATENCY_BOUNDS_US for bound in MS.values())


@pytest.fixture
def bob_subscription(bob, ticker_api):
    ticker_api.plans.filter(name="Free").update(quota_events=10_000, quota_bytes=5_000_000)
    application = ApplicationFactory(owner=bob, name="Bob's dashboard")
    return SubscriptionFactory(application=application, plan=ticker_api.plans.get(name="Free"))


@pytest.fixture
def carol_subscription(carol, ticker_api):
    application = ApplicationFactory(owner=carol, name="Carol's terminal")
    return SubscriptionFactory(application=application, plan=ticker_api.plans.get(name="Free"))


def _recent(minutes: int = 2) -> datetime:
    """A minute bucket ``minutes`` ago, but in this billing period (so quota tests hold on the 1st)."""
    moment = (timezone.now() - timedelta(minutes=minutes)).replace(second=0, microsecond=0)
    return max(moment, period_bounds()[0])


def _counts(
    subscription,
    minute,
    channel,
    direction,
    events,
    size,
    throttled=0,
    tbytes=0,
    dropped=0,
    rejected=0,
    failed=0,
):
    return (
        subscription.pk,
        minute,
        channel,
        direction,
        events,
        size,
        throttled,
        tbytes,
        dropped,
        rejected,
        failed,
    )


@pytest.fixture
def bob_traffic(bob_subscription):
    """In the last 24 hours: 1,200 events (1.5 MB) delivered on prices, 30 throttled (3 KB),
    4 dropped, 2 rejected on orders (sent), 1 failed; 5 events (500 B) sent on orders. Three
    days ago: 800 more delivered (not in the default range). Latency of 100 deliveries:
    90 ≤ 5 ms, 8 ≤ 20 ms, 2 ≤ 100 ms."""
    minute = _recent()
    usage_counts_batch(
        rows=[
            _counts(
                bob_subscription, minute, PRICES, "out", 1000, 1_250_000, throttled=30, tbytes=3000, dropped=4
            ),
            _counts(bob_subscription, _recent(62), PRICES, "out", 200, 250_000, failed=1),
            _counts(bob_subscription, minute, ORDERS, "in", 5, 500, rejected=2),
            _counts(bob_subscription, minute - timedelta(days=3), PRICES, "out", 800, 80_000),
        ]
    )
    latency_record_batch(
        rows=[
            (bob_subscription.pk, minute, PRICES, "out", MS[5], 90),
            (bob_subscription.pk, minute, PRICES, "out", MS[20], 8),
            (bob_subscription.pk, minute, PRICES, "out", MS[100], 2),
        ]
    )
    return bob_subscription


def _connection(
    subscription, *, opened: datetime, seconds: float, code: int | None, ip="203.0.113.7", events=100
):
    return ConnectionRecord(
        subscription=subscription,
        application=subscription.application,
        api=subscription.api,
        version="1.0.0",
        protocol=ConnectionRecord.Protocol.WEBSOCKET,
        channels=PRICES,
        client_ip=ip,
        user_agent="test",
        opened_at=opened,
        closed_at=opened + timedelta(seconds=seconds),
        duration_seconds=seconds,
        close_code=code,
        events_out=events,
        bytes_out=events * 100,
    )


@pytest.fixture
def live_connections(settings):
    """``publish(connections)``: a gateway process's snapshot of its open connections (in this
    test run's Redis database, or memory), withdrawn at the end."""
    name = f"test-{uuid.uuid4().hex[:8]}:1"

    def publish(connections: list[dict]) -> None:
        live.publish({"process": name, "pid": 1, "host": "test", "started_at": time.time()}, connections)

    yield publish
    live.withdraw(name)


def _open(subscription, *, ip: str, events: int = 42) -> dict:
    return {
        "id": f"test:{uuid.uuid4().hex[:6]}",
        "process": "test:1",
        "protocol": "websocket",
        "subscription_id": subscription.pk,
        "application_id": subscription.application_id,
        "application": subscription.application.name,
        "api_id": subscription.api_id,
        "api": subscription.api.slug,
        "version": "1.0.0",
        "channels": [PRICES],
        "client_ip": ip,
        "since": time.time() - 125,
        "events_out": events,
        "bytes_out": events * 90,
        "events_in": 0,
        "bytes_in": 0,
    }


def _testid(page: str, name: str) -> str:
    match = re.search(rf'data-testid="{name}"[^>]*>([^<]*)<', page)
    assert match, f"no {name} on the page"
    return match.group(1).strip()


def _csv(response) -> list[dict[str, str]]:
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.content.decode())))


# --- the page -------------------------------------------------------------------------------------


def test_page_shows_the_ranges_totals_not_delivered_counts_latency_and_channels(client, bob, bob_traffic):
    client.force_login(bob)
    page = client.get("/usage/").content.decode()

    assert _testid(page, "events-delivered") == "1,200"  # the 800 of three days ago are outside 24 hours
    assert _testid(page, "bytes-delivered") == "1.5 MB"
    assert _testid(page, "events-sent") == "5"
    assert _testid(page, "events-throttled") == "30"
    assert _testid(page, "events-dropped") == "4"
    assert _testid(page, "events-rejected") == "2"
    assert _testid(page, "events-failed") == "1"
    assert [_testid(page, f"latency-{p}") for p in ("p50", "p95", "p99")] == ["≤ 5 ms", "≤ 20 ms", "≤ 100 ms"]
    assert "Last 24 hours" in page and "per hour" in page
    rows = re.findall(r'data-channel="([^"]+)" data-direction="(\w+)"', page)
    assert rows == [(PRICES, "out"), (ORDERS, "in")]  # busiest first
    assert 'data-usage-chart="events"' in page and 'data-usage-chart="bytes"' in page


def test_week_preset_takes_in_older_usage(client, bob, bob_traffic):
    client.force_login(bob)
    page = client.get("/usage/?range=7d").content.decode()
    assert _testid(page, "events-delivered") == "2,000"
    assert "Last 7 days" in page
    assert re.search(r'class="btn btn-outline-primary active" href="\?range=7d"', page)


def test_quota_used_and_left_this_billing_period(client, bob, bob_traffic):
    client.force_login(bob)
    page = client.get("/usage/?range=1h").content.decode()
    this_month = period_bounds()[0]
    # Both directions count (counted_directions "both"): 1,200 out + 5 in, plus the 800 if this month.
    used = 1205 + (800 if _recent() - timedelta(days=3) >= this_month else 0)
    assert _testid(page, "quota-events-used") == f"{used:,}"
    assert _testid(page, "quota-events-left") == f"{10_000 - used:,} left"
    assert "30 events stopped" in page


def test_a_paid_plan_shows_the_included_events_used_this_month(client, bob, bob_subscription):
    bob_subscription.plan.included_events = 1_000
    bob_subscription.plan.price_per_1000_events_minor = 150
    bob_subscription.plan.included_bytes = 10**9
    bob_subscription.plan.price_per_gb_minor = 20
    bob_subscription.plan.save()
    usage_counts_batch(rows=[_counts(bob_subscription, _recent(), PRICES, "out", 1_234, 5_000)])
    client.force_login(bob)

    page = client.get("/usage/").content.decode()

    events = re.sub(r"<[^>]+>|\s+", " ", page.split('data-testid="included-events"')[1].split("</div>")[0])
    assert "1,234 of 1,000 included · 234 over, billed per 1,000" in " ".join(events.split())
    assert "of 1.0 GB included" in page
    assert 'href="/billing/invoices/">What this month costs so far' in page


def test_a_yearly_plan_counts_its_quota_from_the_first_of_january(client, bob, bob_subscription):
    year_start, _ = period_bounds(kind="year")
    month_start, _ = period_bounds()
    if month_start == year_start:
        pytest.skip("in January the month and the year start together")
    bob_subscription.plan.billing_period = "year"
    bob_subscription.plan.save()
    usage_counts_batch(
        rows=[
            _counts(
                bob_subscription, year_start - timedelta(minutes=1), PRICES, "out", 1_000, 1
            ),  # last year
            _counts(bob_subscription, year_start, PRICES, "out", 300, 1),  # the year's first minute
            _counts(bob_subscription, _recent(), PRICES, "out", 20, 1),
        ]
    )
    client.force_login(bob)

    page = client.get("/usage/").content.decode()

    assert _testid(page, "quota-events-used") == "320"
    assert _testid(page, "quota-events-left") == "9,680 left"
    assert f"{year_start:%Y} (UTC)" in page and "this year" in page


def test_a_free_plan_shows_nothing_included(client, bob, bob_subscription):
    client.force_login(bob)
    assert 'data-testid="included"' not in client.get("/usage/").content.decode()


def test_quota_counts_only_the_plans_counted_direction(client, bob, bob_traffic):
    bob_traffic.plan.counted_directions = "in"
    bob_traffic.plan.save()
    client.force_login(bob)
    page = client.get("/usage/").content.decode()
    assert _testid(page, "quota-events-used") == "5"
    assert _testid(page, "quota-events-left") == "9,995 left"
    assert "Quotas count client → server only." in page


def test_month_totals_equal_what_billing_reads(client, bob, bob_subscription):
    """A whole calendar month on the page is what billing charges for it (both read
    analytics.queries), boundaries included: the month's first minute in, the next month's out."""
    this_month = period_bounds()[0]
    start = (this_month - timedelta(days=1)).replace(day=1)
    end = this_month
    usage_counts_batch(
        rows=[
            _counts(bob_subscription, start - timedelta(minutes=1), PRICES, "out", 7, 70),
            _counts(bob_subscription, start, PRICES, "out", 11, 1100),
            _counts(bob_subscription, start + timedelta(days=9, hours=5), PRICES, "out", 1234, 567_890),
            _counts(bob_subscription, start + timedelta(days=9, hours=5), ORDERS, "in", 3, 300),
            _counts(bob_subscription, end - timedelta(minutes=1), PRICES, "out", 13, 1300, throttled=9),
            _counts(bob_subscription, end, PRICES, "out", 17, 1700),
        ]
    )
    client.force_login(bob)
    last_day = end - timedelta(days=1)
    query = f"from={start:%Y-%m-%d}&to={last_day:%Y-%m-%d}"

    page = client.get(f"/usage/?{query}").content.decode()
    api = client.get(f"/api/v1/usage/?{query}").json()

    billed = usage_for_subscription(subscription=bob_subscription, start=start, end=end)
    sent = usage_for_subscription(subscription=bob_subscription, start=start, end=end, direction="in")
    assert billed.events == 11 + 1234 + 13
    assert _testid(page, "events-delivered") == f"{billed.events:,}"
    assert re.search(rf'data-testid="bytes-delivered" title="{billed.bytes:,} bytes"', page)
    assert _testid(page, "events-sent") == f"{sent.events:,}"
    (row,) = api["subscriptions"]
    assert (row["totals"]["events_out"], row["totals"]["bytes_out"]) == (billed.events, billed.bytes)
    assert (row["totals"]["events_in"], row["totals"]["bytes_in"]) == (sent.events, sent.bytes)
    assert api["range"]["start"] == start.isoformat().replace("+00:00", "Z")
    assert api["range"]["step"] == "day"


def test_csv_has_the_pages_series_and_channel_numbers(client, bob, bob_traffic):
    client.force_login(bob)
    page = client.get("/usage/?range=24h").content.decode()
    assert 'href="?range=24h&amp;format=csv"' in page
    assert 'href="?range=24h&amp;format=csv&amp;table=channels"' in page

    series = _csv(client.get("/usage/?range=24h&format=csv"))
    channels = _csv(client.get("/usage/?range=24h&format=csv&table=channels"))

    assert len(series) == 25  # the 24 hours and the hour the range starts in, as on the chart
    assert all(row["subscription_id"] == str(bob_traffic.pk) for row in series)
    # The provider's and platform's CSV names (analytics.views_dashboards), in the same order.
    assert list(series[0]) == [
        "subscription_id", "application", "api", "start", "events_out", "bytes_out", "events_in", "bytes_in",
        "throttled_events", "throttled_bytes", "dropped_events", "rejected_events", "failed_events", "errors",
    ]  # fmt: skip
    assert list(channels[0])[3:] == [
        "channel", "direction", "events", "bytes", "throttled_events", "throttled_bytes", "dropped_events",
        "rejected_events", "failed_events", "errors",
    ]  # fmt: skip
    total = {key: sum(int(row[key]) for row in series) for key in list(series[0])[4:]}
    assert f"{total['events_out']:,}" == _testid(page, "events-delivered")
    assert f"{total['events_in']:,}" == _testid(page, "events-sent")
    for name in ("throttled", "dropped", "rejected", "failed"):
        assert f"{total[f'{name}_events']:,}" == _testid(page, f"events-{name}")
    assert total["bytes_out"] == 1_500_000
    assert total["errors"] == 30 + 4 + 2 + 1
    assert [row["errors"] for row in channels] == ["35", "2"]

    table = re.findall(
        r'data-channel="([^"]+)" data-direction="(\w+)">.*?data-col="events">([\d,]+)<.*?'
        r'title="([\d,]+) bytes".*?'
        r'data-col="throttled">([\d,]+)<.*?data-col="dropped">([\d,]+)<.*?data-col="rejected">([\d,]+)<.*?'
        r'data-col="failed">([\d,]+)<',
        page,
        re.S,
    )
    as_csv = [
        (
            row["channel"],
            row["direction"],
            *(
                f"{int(row[key]):,}"
                for key in (
                    "events",
                    "bytes",
                    "throttled_events",
                    "dropped_events",
                    "rejected_events",
                    "failed_events",
                )
            ),
        )
        for row in channels
    ]
    assert as_csv == [tuple(row) for row in table]
    assert as_csv[0][:4] == (PRICES, "out", "1,200", "1,500,000")


def test_connection_history_in_words_and_connections_open_now(
    client, bob, bob_subscription, live_connections
):
    now = timezone.now()
    connection_record_batch(
        records=[
            _connection(bob_subscription, opened=now - timedelta(hours=2), seconds=75, code=4429),
            _connection(bob_subscription, opened=now - timedelta(hours=1), seconds=9000 / 10, code=1000),
            _connection(
                bob_subscription,
                opened=now - timedelta(minutes=30),
                seconds=3.25,
                code=None,
                ip="198.51.100.4",
            ),
            _connection(
                bob_subscription, opened=now - timedelta(days=3), seconds=60, code=1001, ip="192.0.2.99"
            ),
        ]
    )
    live_connections([_open(bob_subscription, ip="203.0.113.50")])
    client.force_login(bob)
    page = client.get("/usage/").content.decode()

    rows = re.findall(r'data-testid="connection-row">(.*?)</tr>', page, re.S)
    assert len(rows) == 3  # the connection of three days ago ended before the range
    newest, middle, oldest = rows
    assert "3.2 s" in newest and "client disconnected" in newest and "198.51.100.4" in newest
    assert "15 min" in middle and "closed normally" in middle
    assert "1 min 15 s" in oldest and "4429" in oldest and "throttled: a plan limit was reached" in oldest
    assert "192.0.2.99" not in page
    (opened,) = re.findall(r'data-testid="open-connection">(.*?)</tr>', page, re.S)
    assert "203.0.113.50" in opened and "2 min 5 s" in opened and ">42" in opened
    assert _testid(page, "open-count") == "1 open"


def test_gateway_restart_and_lost_connections_are_named_in_words(client, bob, bob_subscription):
    """The gateway records a 1012 close as "gateway restarting" and a 1006 as "connection lost (no
    close frame)" (gateway.capture); the page and REST say what happened, not "closed"."""
    now = timezone.now()
    restarted = _connection(bob_subscription, opened=now - timedelta(hours=2), seconds=40, code=1012)
    restarted.close_reason = "gateway restarting"
    lost = _connection(bob_subscription, opened=now - timedelta(hours=1), seconds=20, code=1006)
    lost.close_reason = "connection lost (no close frame)"
    connection_record_batch(records=[restarted, lost])
    client.force_login(bob)

    page = client.get("/usage/").content.decode()
    closes = [
        re.sub(r"<[^>]+>", "", cell).strip()
        for cell in re.findall(r'<td data-col="close">(.*?)</td>', page, re.S)
    ]
    assert closes == ["1006 connection lost", "1012 gateway restarting"]
    history = client.get(f"/api/v1/usage/subscriptions/{bob_subscription.pk}/connections/").json()["history"]
    assert [(row["close_code"], row["close_meaning"]) for row in history] == [
        (1006, "connection lost"),
        (1012, "gateway restarting"),
    ]


def _normal(value):
    """A CSV cell or a REST value as one comparable value: datetimes parsed, numbers as floats
    (a CSV cell is text), empty for None, a channel list space-separated."""
    if value is None or value == "":
        return ""
    if isinstance(value, list):
        return " ".join(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
        try:
            return float(value)
        except ValueError:
            return value
    return float(value)


def test_connection_history_csv_has_every_finished_connection_as_the_page_and_rest_show_it(
    client, bob, carol, bob_subscription, carol_subscription
):
    """30 connections in the range (the page lists the newest 25), one before it, one of Carol's:
    the CSV has the 30, newest first, with the values of REST's history and the page's rows."""
    now = timezone.now()
    codes = (1000, 4429, None, 1012, 1006, 4408)
    records = [
        _connection(
            bob_subscription,
            opened=now - timedelta(hours=1, minutes=40 * index),
            seconds=7.5 + 61 * index,
            code=codes[index % len(codes)],
            ip=f"203.0.113.{index + 1}",
            events=10 + index,
        )
        for index in range(30)
    ]
    records[3].events_in, records[3].bytes_in, records[3].throttled_events = 2, 150, 4
    records[4].channels, records[4].protocol = f"{ORDERS},{PRICES}", ConnectionRecord.Protocol.SSE
    records.append(
        _connection(bob_subscription, opened=now - timedelta(days=3), seconds=60, code=1000, ip="192.0.2.1")
    )
    records.append(
        _connection(
            carol_subscription, opened=now - timedelta(hours=1), seconds=60, code=1000, ip="192.0.2.2"
        )
    )
    connection_record_batch(records=records)
    client.force_login(bob)

    page = client.get("/usage/?range=24h").content.decode()
    assert 'href="?range=24h&amp;format=csv&amp;table=connections"' in page
    assert "download all 30 as CSV" in page
    response = client.get("/usage/?range=24h&format=csv&table=connections")
    assert response["Content-Disposition"].startswith('attachment; filename="usage-connections-')
    rows = _csv(response)
    history = client.get(
        f"/api/v1/usage/subscriptions/{bob_subscription.pk}/connections/?range=24h&limit=1000"
    ).json()["history"]

    assert len(rows) == len(history) == 30
    assert {row["client_ip"] for row in rows} == {f"203.0.113.{index + 1}" for index in range(30)}
    assert all(row["subscription_id"] == str(bob_subscription.pk) for row in rows)
    assert all((row["application"], row["api"]) == ("Bob's dashboard", "ticker") for row in rows)
    for row, rest in zip(rows, history, strict=True):
        assert int(row["connection_id"]) == rest["id"]
        for name in (column for column in rows[0] if column in rest):
            assert _normal(row[name]) == _normal(rest[name]), name
    sse = next(row for row in rows if row["protocol"] == "sse")
    assert sse["channels"] == f"{ORDERS} {PRICES}"
    restarted = next(row for row in rows if row["close_code"] == "1012")
    assert (restarted["close_meaning"], restarted["events_in"], restarted["throttled_events"]) == (
        "gateway restarting",
        "2",
        "4",
    )

    # The page's rows are the CSV's first 25, in the same order, with the same values in words.
    shown = re.findall(r'data-testid="connection-row">(.*?)</tr>', page, re.S)
    assert len(shown) == 25
    for html_row, row in zip(shown, rows, strict=False):
        cells = [
            re.sub(r"<[^>]+>", "", cell).strip()
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", html_row, re.S)
        ]
        opened = datetime.fromisoformat(row["opened_at"])
        assert cells[0] == f"{opened.day} {opened:%b %H:%M:%S}"
        assert cells[2] == duration_words(float(row["duration_seconds"]))
        assert cells[5].endswith(row["close_meaning"]) and cells[5].startswith(row["close_code"])
        assert cells[6].startswith(f"{int(row['events_out']):,}")
        assert cells[8] == row["client_ip"]

    # Carol's CSV has her connection only; Bob's subscription id is a field error.
    client.force_login(carol)
    assert [row["client_ip"] for row in _csv(client.get("/usage/?format=csv&table=connections"))] == [
        "192.0.2.2"
    ]
    assert (
        client.get(f"/usage/?subscription={bob_subscription.pk}&format=csv&table=connections").status_code
        == 400
    )


def test_subscription_without_events_tells_how_to_get_some(client, bob, bob_subscription):
    client.force_login(bob)
    page = client.get("/usage/").content.decode()
    assert "No events delivered yet." in page
    assert 'href="/try/"' in page
    assert "data-usage-chart" not in page


def _section(page: str, testid: str) -> str:
    """The HTML of the element with ``data-testid=testid`` (up to its first closing div)."""
    match = re.search(rf'data-testid="{testid}".*?</div>', page, re.S)
    assert match, f"no {testid} on the page"
    return match.group(0)


def test_quiet_preset_range_suggests_longer_presets(client, bob, bob_subscription):
    usage_counts_batch(rows=[_counts(bob_subscription, _recent(60 * 24 * 3), PRICES, "out", 8, 800)])
    client.force_login(bob)
    empty = _section(client.get("/usage/?range=1h").content.decode(), "usage-none")
    assert "No events in this range." in empty
    assert 'href="?range=7d"' in empty and 'href="?range=90d"' in empty


def test_quiet_date_range_suggests_widening_the_dates_not_presets_counted_from_now(client, bob, bob_traffic):
    client.force_login(bob)
    empty = _section(client.get("/usage/?from=2020-01-01&to=2020-01-02").content.decode(), "usage-none")
    assert "No events in this range." in empty
    assert "widen the From – To dates above" in empty
    assert "?range=" not in empty  # "7 days · 30 days" would count from now, not from 2020


def test_events_without_latency_rows_say_no_latency_was_recorded(client, bob, bob_subscription):
    """Delivered events whose publisher stamped no publish time have counts but no latency: the
    card says so rather than "no delivered events"."""
    day = (timezone.now() - timedelta(days=20)).replace(hour=12, minute=0, second=0, microsecond=0)
    usage_counts_batch(rows=[_counts(bob_subscription, day, PRICES, "out", 42, 4200)])
    client.force_login(bob)
    page = client.get(f"/usage/?from={day:%Y-%m-%d}&to={day:%Y-%m-%d}").content.decode()
    assert _testid(page, "events-delivered") == "42"
    latency = _section(page, "latency")
    assert "0 events measured" in latency
    assert "No latency recorded for these events" in page
    assert "No delivered events to measure" not in page

    api = client.get(f"/api/v1/usage/subscriptions/{bob_subscription.pk}/?from={day:%Y-%m-%d}").json()
    assert api["totals"]["events_out"] == 42
    assert api["latency"] == {"p50": None, "p95": None, "p99": None, "events": 0}


def test_only_sent_events_have_nothing_to_measure(client, bob, bob_subscription):
    usage_counts_batch(rows=[_counts(bob_subscription, _recent(), ORDERS, "in", 3, 300)])
    client.force_login(bob)
    page = client.get("/usage/").content.decode()
    assert "No delivered events to measure in this range." in page
    assert "No latency recorded" not in page


def test_iso_datetime_range_fills_the_date_pickers_with_the_days_it_covers(client, bob, bob_traffic):
    """The invoice page links its period as ISO date-times (``to`` exclusive): the date inputs
    show the first and the last day, so Apply keeps the same range."""
    client.force_login(bob)
    page = client.get("/usage/?from=2026-05-01T00:00:00Z&to=2026-06-01T00:00:00Z").content.decode()
    assert 'id="range-from" name="from" value="2026-05-01"' in page
    assert 'id="range-to" name="to" value="2026-05-31"' in page
    assert "2026-05-01 00:00 – 2026-06-01 00:00 UTC" in page
    again = client.get("/usage/?from=2026-05-01&to=2026-05-31").content.decode()
    assert "2026-05-01 00:00 – 2026-06-01 00:00 UTC" in again


def test_no_subscriptions_points_to_the_catalog_and_try_it(client, bob):
    client.force_login(bob)
    page = client.get("/usage/").content.decode()
    assert "No subscriptions yet" in page
    assert 'href="/apis/"' in page and 'href="/try/"' in page


def test_cancelled_subscription_shows_only_with_usage_in_the_range(client, bob, bob_traffic, ticker_api):
    idle = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Retired app"),
        plan=ticker_api.plans.get(name="Free"),
        status=Subscription.Status.CANCELLED,
    )
    bob_traffic.status = Subscription.Status.CANCELLED
    bob_traffic.save()
    client.force_login(bob)
    page = client.get("/usage/").content.decode()
    assert f'data-subscription="{bob_traffic.pk}"' in page
    assert f'data-subscription="{idle.pk}"' not in page


def test_application_filter_shows_only_that_applications_subscriptions(client, bob, bob_traffic, ticker_api):
    other = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Other app"), plan=ticker_api.plans.get(name="Free")
    )
    client.force_login(bob)
    page = client.get(f"/usage/?application={other.application_id}&range=7d").content.decode()
    assert f'data-subscription="{other.pk}"' in page
    assert f'data-subscription="{bob_traffic.pk}"' not in page
    assert "Other app only" in page
    assert f'href="?range=1h&amp;application={other.application_id}"' in page  # presets keep the filter


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("from=2026-13-01", "from", '"2026-13-01" is not a date'),
        ("from=2026-05-10&to=2026-05-01", "to", "must be after the start"),
        ("to=2026-05-01", "from", "give a start date"),
        ("from=2020-01-01&to=2026-01-01&step=minute", "step", "too many points"),
        ("range=2y", "range", "Select a valid choice"),
        ("step=week", "step", "Select a valid choice"),
        ("application=abc", "application", "not one of your applications"),
    ],
)
def test_bad_range_is_shown_next_to_its_field_never_a_500(client, bob, bob_traffic, query, field, message):
    client.force_login(bob)
    response = client.get(f"/usage/?{query}")
    assert response.status_code == 400
    page = response.content.decode()
    assert message in _testid(page, f"error-{field}").replace("&quot;", '"')
    assert "data-usage-card" not in page and 'data-testid="usage-card"' not in page

    csv_response = client.get(f"/usage/?{query}&format=csv")
    assert csv_response.status_code == 400 and message in csv_response.content.decode()

    api = client.get(f"/api/v1/usage/?{query}")
    assert api.status_code == 400
    assert any(message in error for error in api.json()[field])


def test_usage_needs_sign_in(client, db):
    assert client.get("/usage/")["Location"].startswith("/accounts/login/")
    assert client.get("/usage/?format=csv")["Location"].startswith("/accounts/login/")
    assert client.get("/api/v1/usage/").status_code == 401


# --- persona isolation ---------------------------------------------------------------------------


def test_carol_sees_none_of_bobs_usage_rows_or_connections(
    client, bob, carol, bob_traffic, carol_subscription, live_connections
):
    usage_counts_batch(rows=[_counts(carol_subscription, _recent(), PRICES, "out", 3, 33)])
    connection_record_batch(
        records=[
            _connection(
                bob_traffic,
                opened=timezone.now() - timedelta(hours=1),
                seconds=60,
                code=4429,
                ip="203.0.113.7",
            ),
            _connection(
                carol_subscription,
                opened=timezone.now() - timedelta(hours=1),
                seconds=60,
                code=1000,
                ip="198.51.100.8",
            ),
        ]
    )
    live_connections([_open(bob_traffic, ip="203.0.113.50"), _open(carol_subscription, ip="198.51.100.60")])
    client.force_login(carol)

    page = client.get("/usage/?range=30d").content.decode()
    assert "Bob&#x27;s dashboard" not in page and "203.0.113" not in page
    assert _testid(page, "events-delivered") == "3"
    assert "198.51.100.8" in page and "198.51.100.60" in page
    # Bob's application or subscription ids are field errors, never his data.
    filtered = client.get(f"/usage/?application={bob_traffic.application_id}")
    assert filtered.status_code == 400 and "Bob" not in filtered.content.decode()
    assert client.get(f"/usage/?subscription={bob_traffic.pk}&format=csv").status_code == 400

    series = _csv(client.get("/usage/?range=30d&format=csv"))
    channels = _csv(client.get("/usage/?range=30d&format=csv&table=channels"))
    assert {row["subscription_id"] for row in series + channels} == {str(carol_subscription.pk)}

    listing = client.get("/api/v1/usage/?range=30d").json()
    assert [row["id"] for row in listing["subscriptions"]] == [carol_subscription.pk]
    for path in ("", "connections/"):
        response = client.get(f"/api/v1/usage/subscriptions/{bob_traffic.pk}/{path}")
        assert response.status_code == 404
    connections = client.get(f"/api/v1/usage/subscriptions/{carol_subscription.pk}/connections/").json()
    assert [row["client_ip"] for row in connections["history"]] == ["198.51.100.8"]
    assert [row["client_ip"] for row in connections["open_now"]] == ["198.51.100.60"]


# --- REST -----------------------------------------------------------------------------------------


def test_rest_detail_has_totals_series_channels_latency_and_quota(client, bob, bob_traffic):
    client.force_login(bob)
    response = client.get(f"/api/v1/usage/subscriptions/{bob_traffic.pk}/?range=24h&step=hour")
    assert response.status_code == 200
    data = response.json()

    assert data["application"] == {"id": bob_traffic.application_id, "name": "Bob's dashboard"}
    assert data["api"]["slug"] == "ticker"
    # Named as the provider's and platform's endpoints name them (events_out, events_in, errors).
    assert data["totals"] == {
        "events_out": 1200,
        "bytes_out": 1_500_000,
        "events_in": 5,
        "bytes_in": 500,
        "throttled_events": 30,
        "throttled_bytes": 3000,
        "dropped_events": 4,
        "rejected_events": 2,
        "failed_events": 1,
        "errors": 37,
        "error_rate": 37 / (1205 + 37),
    }
    assert len(data["series"]) == 25
    assert list(data["series"][0]) == [
        "start", "events_out", "bytes_out", "events_in", "bytes_in", "throttled_events", "throttled_bytes",
        "dropped_events", "rejected_events", "failed_events", "errors",
    ]  # fmt: skip
    assert sum(point["events_out"] for point in data["series"]) == 1200
    assert sum(point["events_in"] for point in data["series"]) == 5
    assert sum(point["errors"] for point in data["series"]) == 37
    assert [(row["channel"], row["direction"], row["events"], row["errors"]) for row in data["channels"]] == [
        (PRICES, "out", 1200, 35),
        (ORDERS, "in", 5, 2),
    ]
    assert data["channels"][1]["error_rate"] == 2 / 7
    assert data["latency"] == {"p50": 0.005, "p95": 0.02, "p99": 0.1, "events": 100}
    assert data["quota"]["quota_events"] == 10_000
    assert data["quota"]["events_remaining"] == 10_000 - data["quota"]["events"]


def test_rest_connections_lists_history_with_close_meaning_and_open_now(
    client, bob, bob_subscription, live_connections
):
    now = timezone.now()
    connection_record_batch(
        records=[
            _connection(
                bob_subscription,
                opened=now - timedelta(minutes=50 - i),
                seconds=30,
                code=4429 if i == 4 else 1000,
            )
            for i in range(5)
        ]
    )
    live_connections([_open(bob_subscription, ip="203.0.113.50", events=7)])
    client.force_login(bob)

    data = client.get(f"/api/v1/usage/subscriptions/{bob_subscription.pk}/connections/?limit=2").json()

    assert data["history_total"] == 5
    assert len(data["history"]) == 2
    newest = data["history"][0]
    assert (newest["close_code"], newest["close_meaning"]) == (4429, "throttled: a plan limit was reached")
    assert newest["duration_seconds"] == 30 and newest["channels"] == [PRICES]
    (opened,) = data["open_now"]
    assert opened["events_out"] == 7 and opened["client_ip"] == "203.0.113.50"
    assert 124 <= opened["open_seconds"] < 200
    bad = client.get(f"/api/v1/usage/subscriptions/{bob_subscription.pk}/connections/?limit=0")
    assert bad.status_code == 400 and "limit" in bad.json()


def test_rest_list_filters_by_application(client, bob, bob_traffic, ticker_api):
    other = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Other app"),
        plan=BusinessPlanFactory(api=ticker_api, name="Bronze"),
    )
    client.force_login(bob)
    everything = client.get("/api/v1/usage/").json()
    assert {row["id"] for row in everything["subscriptions"]} == {bob_traffic.pk, other.pk}
    only = client.get(f"/api/v1/usage/?application={other.application_id}").json()
    assert [(row["id"], row["totals"]["events_out"]) for row in only["subscriptions"]] == [(other.pk, 0)]
    assert everything["range"]["preset"] == "24h"


def test_rest_range_of_iso_datetimes(client, bob, bob_traffic):
    client.force_login(bob)
    start = _recent(10).astimezone(UTC)
    response = client.get(
        "/api/v1/usage/", {"from": start.isoformat(), "to": (start + timedelta(minutes=20)).isoformat()}
    )
    assert response.status_code == 200
    (row,) = response.json()["subscriptions"]
    assert row["totals"]["events_out"] == 1000 and response.json()["range"]["step"] == "minute"


def test_application_without_subscriptions_says_so(client, bob, bob_traffic):
    empty = ApplicationFactory(owner=bob, name="Fresh app")
    client.force_login(bob)
    page = client.get(f"/usage/?application={empty.pk}").content.decode()
    assert "Fresh app has no subscription to show." in page
    assert 'href="/usage/"' in page
