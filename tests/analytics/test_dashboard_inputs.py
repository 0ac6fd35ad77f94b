"""What every analytics page, CSV export and REST endpoint does with the range a user typed
(``analytics.dashboard``): out-of-range dates, too long ranges, unknown ``format``/``table``, an
inclusive ``to`` in the error, and steps whose rows retention deleted. Always a 400 naming the
field, never a 500, and never a chart of silent zeros."""

from __future__ import annotations

import html
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.utils import timezone

from analytics.queries import marks
from analytics.rollup import analytics_rollup
from analytics.services import usage_counts_batch
from tests.factories import ApplicationFactory, SubscriptionFactory

PRICES = "prices/{symbol}"
# (page, REST endpoint, who may read them)
SURFACES = [
    ("/usage/", "/api/v1/usage/", "bob"),
    ("/analytics/", None, "alice"),
    ("/analytics/apis/ticker/", "/api/v1/analytics/apis/ticker/", "alice"),
    ("/analytics/platform/", "/api/v1/analytics/platform/", "admin_user"),
]
OUT_OF_RANGE = [
    ("from=0001-01-01T00:00:00%2B05:00&to=0001-01-02", "from", '"0001-01-01T00:00:00+05:00" is out of range'),
    ("from=9999-12-30&to=9999-12-31", "from", '"9999-12-30" is out of range'),
    ("from=9999-12-31T22:00:00Z&to=9999-12-31T23:00:00Z&step=hour", "from", "is out of range"),
    ("from=2026-01-01&to=9999-12-31", "to", '"9999-12-31" is out of range: dates go from 2000-01-01'),
    ("from=1999-12-31&to=2000-01-02", "from", "dates go from 2000-01-01 to 9998-12-31"),
    ("from=2026-01-01T00:00:00-05:00&to=9999-12-31T23:00:00-05:00", "to", "is out of range"),
]


def _signed_in(client, request, who: str):
    client.force_login(request.getfixturevalue(who))
    return client


@pytest.fixture
def surfaces_ready(ticker_api, bob, admin_user):
    """Bob subscribed to alice's Ticker, so every surface has something in scope."""
    application = ApplicationFactory(owner=bob, name="Bob's board")
    return SubscriptionFactory(application=application, plan=ticker_api.plans.get(name="Free"))


def _assert_400_naming(client, url: str, field: str, message: str, *, rest: bool = False) -> None:
    response = client.get(url)
    assert response.status_code == 400, (url, response.status_code)
    if rest:
        assert any(message in error for error in response.json()[field]), response.json()
    elif "format=csv" in url:
        body = response.content.decode()
        assert body.startswith(f"{field}:") and message in body, body
    else:
        page = html.unescape(response.content.decode())
        assert f'data-testid="error-{field}"' in page and message in page


@pytest.mark.usefixtures("surfaces_ready")
@pytest.mark.parametrize(("page", "rest", "who"), SURFACES)
@pytest.mark.parametrize(("query", "field", "message"), OUT_OF_RANGE)
def test_out_of_range_dates_are_a_400_naming_the_field(
    client, request, page, rest, who, query, field, message
):
    _signed_in(client, request, who)
    _assert_400_naming(client, f"{page}?{query}", field, message)
    _assert_400_naming(client, f"{page}?{query}&format=csv", field, message)
    if rest:
        _assert_400_naming(client, f"{rest}?{query}", field, message, rest=True)


@pytest.mark.usefixtures("surfaces_ready")
def test_the_last_and_first_days_allowed_answer(client, bob, admin_user):
    client.force_login(admin_user)
    for query in ("from=9998-12-30&to=9998-12-31", "from=2000-01-01&to=2000-01-02&step=day"):
        for url in ("/analytics/platform/", "/analytics/apis/ticker/", "/api/v1/analytics/platform/"):
            assert client.get(f"{url}?{query}").status_code == 200, (url, query)
        assert client.get(f"/analytics/platform/?{query}&format=csv").status_code == 200
    client.force_login(bob)
    assert client.get("/usage/?from=9998-12-31&to=9998-12-31&step=minute&format=csv").status_code == 200
    data = client.get("/api/v1/usage/?from=9998-12-31&to=9998-12-31").json()
    assert (data["range"]["start"], data["range"]["end"]) == ("9998-12-31T00:00:00Z", "9999-01-01T00:00:00Z")


@pytest.mark.usefixtures("surfaces_ready")
@pytest.mark.parametrize(("page", "rest", "who"), SURFACES)
def test_ten_years_per_day_asks_for_a_shorter_range_not_a_larger_step(client, request, page, rest, who):
    _signed_in(client, request, who)
    query = "from=2016-01-01&to=2026-01-01&step=day"
    message = "the range spans 3,654 days; at most 1,500 days at a time: pick a shorter range"
    _assert_400_naming(client, f"{page}?{query}", "step", message)
    _assert_400_naming(client, f"{page}?{query}&format=csv", "step", message)
    if rest:
        _assert_400_naming(client, f"{rest}?{query}", "step", message, rest=True)
    # Without a step the day step is chosen, and the same error says the same.
    _assert_400_naming(client, f"{page}?from=2016-01-01&to=2026-01-01", "step", "pick a shorter range")


@pytest.mark.usefixtures("surfaces_ready")
@pytest.mark.parametrize(("page", "rest", "who"), SURFACES)
def test_inclusive_end_date_error_quotes_the_date_typed(client, request, page, rest, who):
    _signed_in(client, request, who)
    query = "from=2026-10-05&to=2026-10-01"
    message = "the end (2026-10-01, through the end of that day) must be after the start (2026-10-05)"
    _assert_400_naming(client, f"{page}?{query}", "to", message)
    response = client.get(f"{page}?{query}")
    assert "2026-10-02" not in response.content.decode()
    if rest:
        _assert_400_naming(client, f"{rest}?{query}", "to", message, rest=True)
    # A date-time end is exclusive: quoted as typed, without the "through" note.
    query = "from=2026-10-05T10:00:00Z&to=2026-10-05T09:00:00Z"
    _assert_400_naming(
        client,
        f"{page}?{query}",
        "to",
        "the end (2026-10-05T09:00:00Z) must be after the start (2026-10-05T10:00:00Z)",
    )


@pytest.mark.usefixtures("surfaces_ready")
@pytest.mark.parametrize(("page", "rest", "who"), SURFACES)
def test_unknown_format_is_a_400_naming_format(client, request, page, rest, who):
    _signed_in(client, request, who)
    response = client.get(f"{page}?range=24h&format=xlsx")
    assert response.status_code == 400
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content.decode() == "format: 'xlsx' is not one of csv (leave it out for the page)"
    assert client.get(f"{page}?range=24h&format=").status_code == 200


def test_consumer_csv_unknown_table_is_a_400_naming_table(client, bob, surfaces_ready):
    client.force_login(bob)
    response = client.get("/usage/?format=csv&table=nope")
    assert response.status_code == 400
    assert response.content.decode() == "table: 'nope' is not one of series, channels, webhooks, connections"
    for table in ("series", "channels", "webhooks", "connections"):
        assert client.get(f"/usage/?format=csv&table={table}").status_code == 200
    assert (
        client.get("/usage/?format=csv")
        .content.decode()
        .startswith("subscription_id,application,api,start,events_out,bytes_out,events_in,bytes_in")
    )


# --- steps whose rows retention deleted ----------------------------------------------------------


def _range(start, hours: int) -> str:
    return f"from={quote(start.isoformat())}&to={quote((start + timedelta(hours=hours)).isoformat())}"


@pytest.mark.usefixtures("surfaces_ready")
def test_explicit_step_older_than_its_retention_is_a_400_naming_step(client, alice, settings):
    settings.ANALYTICS_RETENTION_MINUTE_DAYS = 40
    settings.ANALYTICS_RETENTION_HOUR_DAYS = 400
    client.force_login(alice)
    start = (timezone.now() - timedelta(days=41)).replace(minute=0, second=0, microsecond=0)
    url = f"/analytics/apis/ticker/?{_range(start, 3)}"
    _assert_400_naming(client, url + "&step=minute", "step", "per-minute rows are kept 40 days")
    _assert_400_naming(client, url + "&step=minute&format=csv", "step", "choose step=hour or a later start")
    rest = client.get(f"/api/v1/analytics/apis/ticker/?{_range(start, 3)}&step=minute")
    assert rest.status_code == 400 and "per-minute rows are kept 40 days" in rest.json()["step"][0]
    assert client.get(url + "&step=hour").status_code == 200

    older = start - timedelta(days=400)
    _assert_400_naming(
        client,
        f"/analytics/apis/ticker/?{_range(older, 24)}&step=hour",
        "step",
        "per-hour rows are kept 400 days",
    )
    # Kept for ever (0): any step of any age.
    settings.ANALYTICS_RETENTION_MINUTE_DAYS = 0
    assert client.get(url + "&step=minute").status_code == 200


@pytest.mark.usefixtures("surfaces_ready")
def test_automatic_step_skips_steps_whose_rows_are_gone(client, alice, settings):
    settings.ANALYTICS_RETENTION_MINUTE_DAYS = 40
    settings.ANALYTICS_RETENTION_HOUR_DAYS = 400
    client.force_login(alice)
    now = timezone.now()

    def step(start, hours: int) -> str:
        return client.get(f"/api/v1/analytics/apis/ticker/?{_range(start, hours)}").json()["range"]["step"]

    recent = (now - timedelta(days=39)).replace(microsecond=0)
    old = (now - timedelta(days=41)).replace(microsecond=0)
    assert step(recent, 3) == "minute"
    assert step(old, 3) == "hour"
    assert step(old - timedelta(days=400), 3) == "day"
    assert step(old - timedelta(days=400), 24 * 3) == "day"
    assert step(recent, 24 * 3) == "hour"


def test_an_old_range_shows_its_events_not_zeros_after_retention(client, bob, surfaces_ready, settings):
    """Events 41 days ago, rolled up and their minute rows deleted (minute retention 40 days):
    a 3-hour range there is charted per hour, from the hour rows, with every event."""
    settings.ANALYTICS_RETENTION_MINUTE_DAYS = 40
    now = timezone.now()
    start = (now - timedelta(days=41)).replace(minute=0, second=0, microsecond=0)
    subscription = surfaces_ready
    usage_counts_batch(
        rows=[
            (subscription.pk, start + timedelta(minutes=10), PRICES, "out", 7, 700, 0, 0, 0, 0, 0),
            (subscription.pk, start + timedelta(minutes=70), PRICES, "out", 5, 500, 0, 0, 0, 0, 0),
        ]
    )
    run = analytics_rollup(now)
    assert run.deleted["UsageRecord"] == 2 and marks()["hour"] is not None

    client.force_login(bob)
    data = client.get(f"/api/v1/usage/subscriptions/{subscription.pk}/?{_range(start, 3)}").json()
    assert data["range"]["step"] == "hour"
    assert [point["events_out"] for point in data["series"]] == [7, 5, 0]
    assert data["totals"]["events_out"] == 12
    response = client.get(f"/usage/?{_range(start, 3)}&step=minute")
    assert response.status_code == 400
    assert "per-minute rows are kept 40 days" in html.unescape(response.content.decode())


def test_csv_cells_that_a_spreadsheet_would_run_stay_text():
    """An application named like a formula is exported as text (CSV injection, OWASP)."""
    from analytics.dashboard import csv_response

    response = csv_response(
        "x.csv", ["application", "events"], [['=HYPERLINK("http://evil/")', 3], ["-1+1", 4]]
    )
    lines = response.content.decode().splitlines()
    assert lines[1] == '"\'=HYPERLINK(""http://evil/"")",3' and lines[2] == "'-1+1,4"
