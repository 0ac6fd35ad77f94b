"""The platform's analytics (staff only): /analytics/platform/ (page, CSV, live JSON) and
/api/v1/analytics/platform/, with the known traffic of the provider dashboard's tests."""

from __future__ import annotations

import csv
import io

import pytest

from tests.analytics.test_provider_dashboard import PROCESS, dave, traffic  # noqa: F401 - fixtures


def _csv(response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.content
    return list(csv.DictReader(io.StringIO(response.content.decode())))


@pytest.mark.usefixtures("traffic")
def test_platform_page_shows_totals_busiest_error_rates_handshakes_and_processes(client, admin_user):
    client.force_login(admin_user)
    response = client.get("/analytics/platform/?range=1h")
    assert response.status_code == 200
    page = response.content.decode()
    # Ticker: 173 events, 9 errors; Weather: 999 events, 7 throttled.
    assert 'data-testid="total-events">1,172<' in page
    assert 'data-testid="total-errors">16<' in page
    assert 'data-testid="error-rate">1.35 %<' in page  # 16 / (1,172 + 16)
    assert 'data-testid="errors-throttled_events">12<' in page
    assert 'data-testid="handshakes-accepted">4<' in page
    assert 'data-testid="handshakes-refused">9<' in page  # 3 Ticker, 5 Weather, 1 before any API
    busiest = page[page.index('data-testid="busiest-apis"') :]
    assert busiest.index('data-api="weather"') < busiest.index('data-api="ticker"')
    assert "0.70 %" in busiest  # Weather: 7 / 1,006
    assert "4.95 %" in busiest  # Ticker: 9 / 182
    applications = page[page.index('data-testid="busiest-applications"') :]
    assert applications.index("Carol&#x27;s forecast") < applications.index("Bob&#x27;s board")
    assert "carol@example.com" in applications
    assert f'data-process="{PROCESS}"' in page
    assert 'data-testid="processes-count">1<' in page
    assert "5,012" in page  # events since the process started, both directions


@pytest.mark.usefixtures("traffic")
def test_platform_csv_holds_the_pages_numbers(client, admin_user):
    client.force_login(admin_user)
    report = client.get("/analytics/platform/?range=1h").context["report"]
    base = "/analytics/platform/?range=1h&step=minute&format=csv"
    series = _csv(client.get(base))
    assert sum(int(row["events_out"]) + int(row["events_in"]) for row in series) == report["totals"]["events"]
    assert sum(int(row["errors"]) for row in series) == report["totals"]["errors"] == 16
    apis = _csv(client.get(base + "&table=apis"))
    assert (
        [(row["slug"], int(row["events"]), int(row["errors"])) for row in apis]
        == [(row["slug"], row["events"], row["errors"]) for row in report["apis"]]
        == [("weather", 999, 7), ("ticker", 173, 9)]
    )
    applications = _csv(client.get(base + "&table=applications"))
    assert [(row["application"], row["owner"], int(row["events"])) for row in applications] == [
        ("Carol's forecast", "carol@example.com", 999),
        ("Bob's board", "bob@example.com", 153),
        ("Erin's terminal", "erin@example.com", 20),
    ]
    processes = _csv(client.get(base + "&table=processes"))
    assert [(row["process"], row["connections"], row["events_out"]) for row in processes] == [
        (PROCESS, "2", "5000")
    ]
    handshakes = {
        (row["what"], row["kind"]): int(row["count"]) for row in _csv(client.get(base + "&table=errors"))
    }
    assert (
        handshakes[("handshakes", "forbidden")] == 5 and handshakes[("handshakes", "invalid_credential")] == 3
    )


@pytest.mark.usefixtures("traffic")
def test_platform_rest_and_live_json(client, admin_user):
    client.force_login(admin_user)
    body = client.get("/api/v1/analytics/platform/?range=1h").json()
    assert body["totals"]["events"] == 1_172 and body["totals"]["errors"] == 16
    assert [(row["slug"], row["events"]) for row in body["apis"]] == [("weather", 999), ("ticker", 173)]
    assert body["platform"]["processes"] == 1 and body["platform"]["connections"] == 2
    assert body["handshakes"]["accepted"] == 4 and body["handshakes"]["refused"] == 9
    data = client.get("/analytics/platform/live/").json()
    assert data["count"] == 1 and data["connections"] == 2
    (process,) = data["processes"]
    assert (process["process"], process["events"], process["bytes"]) == (PROCESS, 5_012, 401_200)
    assert client.get("/api/v1/analytics/platform/?from=yesterday").json() == {
        "from": ['"yesterday" is not a date (YYYY-MM-DD) or date-time (ISO 8601)']
    }


@pytest.mark.usefixtures("traffic")
def test_platform_is_for_staff_only(client, alice, bob):
    for user in (alice, bob):
        client.force_login(user)
        assert client.get("/analytics/platform/").status_code == 403
        assert client.get("/analytics/platform/?format=csv").status_code == 403
        assert client.get("/analytics/platform/live/").status_code == 403
        response = client.get("/api/v1/analytics/platform/")
        assert response.status_code == 403
        assert response.json()["detail"] == "Platform analytics are for platform admins."
    client.logout()
    assert client.get("/analytics/platform/").status_code == 302


def test_staff_navigation_links_the_platform_page(client, admin_user):
    client.force_login(admin_user)
    page = client.get("/analytics/platform/").content.decode()
    # In the navigation bar's Staff menu, with the other staff pages; marked as the page shown.
    menu = page[page.index(">Staff</a>") : page.index("</ul>", page.index(">Staff</a>"))]
    for path, name in (
        ("/staff/approvals/", "Approvals"),
        ("/staff/apis/", "All APIs"),
        ("/admin/portal/businessplan/", "Plans (admin)"),
    ):
        assert f'href="{path}"' in menu and f">{name}</a>" in menu
    assert '<a class="dropdown-item active" href="/analytics/platform/">Platform analytics</a>' in menu
