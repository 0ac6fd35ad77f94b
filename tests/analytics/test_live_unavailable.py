"""With Redis unreachable, the connections open now and the gateway processes alive are
*unknown*: ``analytics.live`` raises ``LiveUnavailable``, and every page, live JSON endpoint, CSV
and REST answer says "Live data unavailable: Redis cannot be reached" instead of the empty state
("no connection open", "no gateway process reported") a real quiet platform shows.

Redis is made unreachable the way it happens: ``REDIS_URL`` points at a port nothing listens on,
and ``analytics.live``'s client is rebuilt from it."""

from __future__ import annotations

import html
import socket

import pytest

from analytics import live
from tests.analytics.test_consumer_dashboard import (  # noqa: F401 - fixtures
    _open,
    bob_subscription,
    bob_traffic,
    live_connections,
)
from tests.analytics.test_provider_dashboard import PROCESS, dave, traffic  # noqa: F401 - fixtures

UNAVAILABLE = "Live data unavailable: Redis cannot be reached"


@pytest.fixture
def redis_down(settings):
    """``REDIS_URL`` at a closed port on this machine, with ``analytics.live``'s client reset;
    both restored at the end (before the fixtures that withdraw their snapshots tear down)."""
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL: without Redis, live snapshots are in process memory")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Closed now: connecting to it is refused at once.
    url, client = settings.REDIS_URL, live._client
    settings.REDIS_URL, live._client = f"redis://127.0.0.1:{port}/0", None
    yield
    settings.REDIS_URL, live._client = url, client


def _page(client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return html.unescape(response.content.decode())


def test_live_readers_raise_live_unavailable(redis_down):
    for read in (live.snapshots, live.processes, live.connections):
        with pytest.raises(live.LiveUnavailable, match=UNAVAILABLE):
            read()


def test_consumer_page_and_rest_say_live_data_is_unavailable(client, bob, request):
    subscription = request.getfixturevalue("bob_traffic")
    request.getfixturevalue("live_connections")([_open(subscription, ip="203.0.113.9")])
    client.force_login(bob)
    url = f"/api/v1/usage/subscriptions/{subscription.pk}/connections/"
    up = client.get(url).json()
    assert up["live_available"] is True
    assert [row["client_ip"] for row in up["open_now"]] == ["203.0.113.9"]

    request.getfixturevalue("redis_down")
    page = _page(client, "/usage/")
    assert 'data-testid="live-unavailable-alert"' in page
    assert 'data-testid="live-unavailable"' in page and UNAVAILABLE in page
    assert 'data-testid="no-open-connections"' not in page and "No connection open now." not in page
    assert 'data-testid="open-count" title="' + UNAVAILABLE + '">? open' in page
    down = client.get(url)
    assert down.status_code == 200
    assert (down.json()["live_available"], down.json()["open_now"]) == (False, [])


@pytest.mark.usefixtures("bob_traffic")
def test_consumer_page_still_says_none_open_when_redis_is_up(client, bob):
    client.force_login(bob)
    page = _page(client, "/usage/")
    assert "No connection open now." in page and UNAVAILABLE not in page


@pytest.mark.usefixtures("traffic", "redis_down")
def test_provider_page_json_csv_and_rest_say_live_data_is_unavailable(client, alice):
    client.force_login(alice)
    page = _page(client, "/analytics/apis/ticker/?range=1h")
    assert f"{UNAVAILABLE}." in page
    assert "No connection to this API is open right now.</div>" not in page
    assert 'data-testid="connections-count">?<' in page
    # The usage numbers do not depend on Redis.
    assert 'data-testid="total-events">173<' in page

    live_json = client.get("/analytics/apis/ticker/live/")
    assert live_json.status_code == 503
    assert live_json.json() == {
        "detail": f"{UNAVAILABLE}.",
        "live_available": False,
        "connections": [],
        "count": None,
    }
    exported = client.get("/analytics/apis/ticker/?range=1h&format=csv&table=connections")
    assert (exported.status_code, exported.content.decode()) == (503, f"{UNAVAILABLE}.")
    assert client.get("/analytics/apis/ticker/?range=1h&format=csv&table=series").status_code == 200

    report = client.get("/api/v1/analytics/apis/ticker/?range=1h").json()
    assert (report["live_available"], report["connections"]) == (False, [])
    assert report["totals"]["events"] == 173
    connections = client.get("/api/v1/analytics/apis/ticker/connections/").json()
    assert connections == {"count": None, "connections": [], "live_available": False}

    index = _page(client, "/analytics/?range=1h")
    assert 'data-testid="live-unavailable"' in index and UNAVAILABLE in index
    assert f'title="{UNAVAILABLE}">?</span></td>' in index


@pytest.mark.usefixtures("traffic")
def test_provider_json_and_rest_say_live_available_when_redis_is_up(client, alice):
    client.force_login(alice)
    assert client.get("/analytics/apis/ticker/live/").json()["live_available"] is True
    assert client.get("/api/v1/analytics/apis/ticker/?range=1h").json()["live_available"] is True
    assert client.get("/api/v1/analytics/apis/ticker/connections/").json()["live_available"] is True
    assert UNAVAILABLE not in _page(client, "/analytics/apis/ticker/?range=1h")


@pytest.mark.usefixtures("traffic", "redis_down")
def test_platform_page_json_csv_and_rest_say_live_data_is_unavailable(client, admin_user):
    client.force_login(admin_user)
    page = _page(client, "/analytics/platform/?range=1h")
    assert f"{UNAVAILABLE}." in page
    assert 'data-testid="live-empty">Live data unavailable: Redis cannot be reached.<' in page
    assert 'data-testid="processes-count">?<' in page
    assert f'data-process="{PROCESS}"' not in page

    live_json = client.get("/analytics/platform/live/")
    assert live_json.status_code == 503
    assert live_json.json() == {
        "detail": f"{UNAVAILABLE}.",
        "live_available": False,
        "processes": [],
        "count": None,
        "connections": None,
    }
    exported = client.get("/analytics/platform/?range=1h&format=csv&table=processes")
    assert exported.status_code == 503 and UNAVAILABLE in exported.content.decode()

    report = client.get("/api/v1/analytics/platform/?range=1h").json()
    assert (report["live_available"], report["processes"]) == (False, [])
    assert (report["platform"]["processes"], report["platform"]["connections"]) == (None, None)
    assert report["totals"]["events"] == 1_172


@pytest.mark.usefixtures("traffic")
def test_platform_with_redis_up_lists_the_processes(client, admin_user):
    client.force_login(admin_user)
    page = _page(client, "/analytics/platform/?range=1h")
    assert f'data-process="{PROCESS}"' in page and UNAVAILABLE not in page
    # The empty state the live panel shows once no process reports: never the unavailable one.
    assert (
        'data-empty-text="No gateway process has reported in the last 15 seconds: none is running."' in page
    )
    data = client.get("/analytics/platform/live/").json()
    assert data["live_available"] is True and PROCESS in [row["process"] for row in data["processes"]]
    report = client.get("/api/v1/analytics/platform/?range=1h").json()
    assert report["live_available"] is True and report["platform"]["processes"] >= 1
