"""``GET /metrics`` (docs/metrics.md): a real gateway process (``manage.py serve``) with real
``websockets`` and SSE clients and events published to the real RabbitMQ; the exposition is
parsed with prometheus_client's own parser and every count asserted exactly. Who may scrape is
checked against real processes too (peer address, proxy headers, bearer token); the address
matching details run in-process."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from gateway.publishing import EventPublisher
from tests.fixtures.servers import ServerProcess, gateway_start, sse_open

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
TOKEN = "metrics-token-for-tests-0123456789"


def scrape(server: ServerProcess, headers: dict[str, str] | None = None) -> Samples:
    """The server's ``/metrics`` as {(sample name, sorted labels): value}."""
    request = urllib.request.Request(server.url + "/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def labelled(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (sample, labels), v in samples.items() if sample == name}


def scrape_until(server: ServerProcess, predicate, timeout: float = 10.0) -> Samples:
    """Scrape until ``predicate(samples)`` holds (or ``timeout`` seconds passed); the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(server)
        if predicate(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def forbidden(server: ServerProcess, headers: dict[str, str] | None = None) -> str:
    """The body of the 403 ``/metrics`` answers with ``headers``; fails on any other status."""
    request = urllib.request.Request(server.url + "/metrics", headers=headers or {})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 403
    return refused.value.read().decode()


async def traffic(server: ServerProcess, slug: str, secret: str, checkpoint) -> dict[str, object]:
    """Two WebSocket clients on prices/ACME, one SSE stream on prices/GLOBEX, one WebSocket
    client on orders (send), one handshake with a bad key; ``checkpoint()`` (a scrape) runs
    while they are open; then 4 ACME and 2 GLOBEX events published and one order sent."""
    base = f"{server.ws_url}/ws/{slug}/1.0.0"
    seen: dict[str, object] = {}
    async with connect(f"{base}/prices/ACME?access_token=eg_not_a_key") as refused:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(refused.recv(), timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    async with (
        connect(f"{base}/prices/ACME?access_token={secret}") as acme_1,
        connect(f"{base}/prices/ACME?access_token={secret}") as acme_2,
        connect(f"{base}/orders?access_token={secret}") as orders,
        EventPublisher() as publisher,
    ):
        stream = await sse_open(server.url, f"/sse/{slug}/1.0.0/prices/GLOBEX?access_token={secret}")
        assert stream.status == 200
        seen["open"] = await asyncio.to_thread(checkpoint)
        for n in range(6):
            symbol = "ACME" if n < 4 else "GLOBEX"
            await publisher.publish(api=slug, version="1.0.0", address=f"prices/{symbol}", payload={"n": n})
        acme = [await asyncio.wait_for(client.recv(), 5) for client in (acme_1, acme_2) for _ in range(4)]
        globex = [(await stream.next_event()).data for _ in range(2)]
        order = json.dumps({"symbol": "ACME", "quantity": 3})
        await orders.send(order)
        seen["out_bytes"] = sum(len(frame.encode()) for frame in [*acme, *globex])
        seen["in_bytes"] = len(order.encode())
        await stream.close()
    return seen


def test_metrics_count_connections_handshakes_and_events_of_the_process(
    gateway_server, stream_api, bob_subscribed
):
    slug = stream_api.slug
    started = time.time()
    seen = asyncio.run(traffic(gateway_server, slug, bob_subscribed.secret, lambda: scrape(gateway_server)))

    open_now: Samples = seen["open"]  # type: ignore[assignment]
    assert labelled(open_now, "eventgate_gateway_connections") == {
        (("api", slug), ("protocol", "sse")): 1,
        (("api", slug), ("protocol", "websocket")): 3,
    }
    # Four handshakes with bob's key: the first checked against the database, the other three
    # reused from the grant cache; the bad key was checked (and refused).
    assert value(open_now, "eventgate_gateway_grant_lookups_total", result="hit") == 3
    assert value(open_now, "eventgate_gateway_grant_lookups_total", result="miss") == 2
    # Outcomes are the refusal contract's names (4401: invalid_token), never the raw reason.
    assert labelled(open_now, "eventgate_gateway_handshakes_total") == {
        (("outcome", "accepted"), ("protocol", "sse")): 1,
        (("outcome", "accepted"), ("protocol", "websocket")): 3,
        (("outcome", "invalid_token"), ("protocol", "websocket")): 1,
    }

    # Out: 4 ACME events to 2 clients and 2 GLOBEX events to the SSE stream; in: one order.
    def flushed(samples: Samples) -> bool:
        return (
            value(samples, "eventgate_gateway_events_total", api=slug, direction="out") == 10
            and value(samples, "eventgate_gateway_events_total", api=slug, direction="in") == 1
            and set(labelled(samples, "eventgate_gateway_connections").values()) == {0}
            and (value(samples, "eventgate_gateway_flushes_total", result="ok") or 0) >= 1
        )

    samples = scrape_until(gateway_server, flushed)
    assert flushed(samples), samples
    # Every connection closed: the API's series stay, at 0, for each protocol it was served on
    # (a vanished series reads as "no data" on a dashboard, not as "none open").
    assert labelled(samples, "eventgate_gateway_connections") == {
        (("api", slug), ("protocol", "sse")): 0,
        (("api", slug), ("protocol", "websocket")): 0,
    }
    assert labelled(samples, "eventgate_gateway_events_total") == {
        (("api", slug), ("direction", "in")): 1,
        (("api", slug), ("direction", "out")): 10,
    }
    assert labelled(samples, "eventgate_gateway_bytes_total") == {
        (("api", slug), ("direction", "in")): seen["in_bytes"],
        (("api", slug), ("direction", "out")): seen["out_bytes"],
    }
    for kind in ("throttled_events", "throttled_bytes", "dropped_events", "rejected_events", "failed_events"):
        name = f"eventgate_gateway_{kind}_total"
        assert set(labelled(samples, name).values()) == {0}, name

    assert value(samples, "eventgate_gateway_broker_connected") == 1
    assert value(samples, "eventgate_gateway_broker_reconnects_total") == 0
    for reason in ("oversize", "invalid", "failed"):
        assert value(samples, "eventgate_gateway_broker_dropped_events_total", reason=reason) == 0
    assert value(samples, "eventgate_gateway_flushes_total", result="ok") >= 1
    assert value(samples, "eventgate_gateway_flushes_total", result="failed") == 0
    assert 0 <= value(samples, "eventgate_gateway_flush_lag_seconds") < 5  # flushed every 0.5 s
    assert value(samples, "eventgate_gateway_flush_pending_rows") is not None
    # The standard process collector, of the server process (not this test's).
    assert started - 60 < value(samples, "process_start_time_seconds") <= started
    assert value(samples, "process_resident_memory_bytes") > 10_000_000
    assert bob_subscribed.secret not in json.dumps(list(samples))


def test_metrics_openmetrics_when_asked(gateway_server):
    request = urllib.request.Request(
        gateway_server.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        content_type, text = response.headers["Content-Type"], response.read().decode()
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert text.endswith("# EOF\n")
    assert "eventgate_gateway_broker_reconnects_total 0.0\n" in text


def test_metrics_refused_through_a_proxy_even_from_loopback(gateway_server):
    body = forbidden(gateway_server, {"X-Forwarded-For": "203.0.113.9"})
    assert body.startswith("Forbidden: /metrics came through a proxy")
    assert "METRICS_ALLOWED_IPS" in body and "METRICS_TOKEN" in body


@pytest.fixture
def token_server(transactional_db, tmp_path: Path) -> Iterator[ServerProcess]:
    """A gateway process that lets only 192.0.2.0/24 (not this machine) and ``TOKEN`` scrape."""
    server = gateway_start(tmp_path / "gateway.log", METRICS_ALLOWED_IPS="192.0.2.0/24", METRICS_TOKEN=TOKEN)
    try:
        yield server
    finally:
        server.stop()


def test_metrics_allowed_addresses_and_bearer_token(token_server):
    body = forbidden(token_server)
    assert body == (
        "Forbidden: /metrics answers clients in METRICS_ALLOWED_IPS (not 127.0.0.1) or requests "
        "with Authorization: Bearer <METRICS_TOKEN>.\n"
    )
    wrong = forbidden(token_server, {"Authorization": "Bearer not-the-token"})
    assert wrong == "Forbidden: the bearer token does not match METRICS_TOKEN.\n"
    samples = scrape(token_server, {"Authorization": f"Bearer {TOKEN}"})
    assert value(samples, "eventgate_gateway_broker_reconnects_total") == 0
    # A proxy in between does not matter with the token.
    samples = scrape(token_server, {"Authorization": f"Bearer {TOKEN}", "X-Forwarded-For": "203.0.113.9"})
    assert value(samples, "eventgate_gateway_broker_reconnects_total") == 0
    assert TOKEN not in token_server.log()


# --- in-process: address matching ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "status"),
    [
        ("10.1.2.3", 200),
        ("::ffff:10.1.2.3", 200),  # an IPv4 client seen through a dual-stack socket
        ("2001:db8::7", 200),
        ("10.1.2.3 ", 403),  # not an address at all
        ("172.16.0.1", 403),
        ("127.0.0.1", 403),
    ],
)
def test_metrics_allowed_networks(settings, peer, status):
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8", "2001:db8::/32"]
    settings.METRICS_TOKEN = ""
    response = Client().get("/metrics", REMOTE_ADDR=peer)
    assert response.status_code == status
    if status == 403:
        assert response["Content-Type"] == "text/plain; charset=utf-8"
        assert b"METRICS_ALLOWED_IPS" in response.content


def test_metrics_bearer_token_refused_when_no_token_is_set(settings):
    settings.METRICS_TOKEN = ""
    response = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer anything")
    assert response.status_code == 403
    assert response.content == b"Forbidden: bearer tokens are not accepted here (METRICS_TOKEN is not set).\n"


def test_metrics_only_get_and_head(settings):
    # A scraper has no CSRF cookie: other methods get 405 (Allow: GET, HEAD), not a CSRF 403.
    client = Client(enforce_csrf_checks=True)
    for method in (client.post, client.put, client.delete, client.patch):
        response = method("/metrics")
        assert response.status_code == 405, method
        assert response["Allow"] == "GET, HEAD"
    assert client.head("/metrics").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_metrics_bad_allowed_ips_setting_names_the_entry(settings):
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1", "localhost"]
    with pytest.raises(ImproperlyConfigured, match="METRICS_ALLOWED_IPS: 'localhost' is not an IP address"):
        Client(raise_request_exception=True).get("/metrics")


def test_flush_lag_counts_from_the_last_successful_flush_or_the_start_after_a_failure():
    from gateway.capture import STARTED_AT
    from gateway.prometheus import flush_lag

    now = STARTED_AT + 100.0
    assert flush_lag(STARTED_AT + 98.5, failed=0, now=now) == 1.5
    assert flush_lag(STARTED_AT + 98.5, failed=3, now=now) == 1.5
    assert flush_lag(None, failed=0, now=now) == 0.0  # nothing was due yet
    assert flush_lag(None, failed=1, now=now) == 100.0  # never flushed since the start
