"""The gateway end to end: a real server process (``manage.py serve``, uvicorn), real
``websockets`` clients, events published to the real RabbitMQ through ``gateway.publishing``
(the path providers and the demo backend use), usage flushed to analytics."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets
from websockets.asyncio.client import connect

from analytics.services import usage_for_subscription
from gateway.publishing import EventPublisher

pytestmark = pytest.mark.e2e


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


async def receive_frames(client, count: int) -> list[str]:
    return [await asyncio.wait_for(client.recv(), timeout=10) for _ in range(count)]


async def stream_scenario(base: str, slug: str, secret: str) -> dict[str, list[str]]:
    """Two clients on prices/ACME, one on prices/GLOBEX; 6 ACME and 5 GLOBEX events published."""
    url = f"{base}/ws/{slug}/1.0.0/prices/%s?access_token={secret}"
    origin = "http" + base.removeprefix("ws")  # as a browser on the portal's own pages would send
    async with (
        connect(url % "ACME", origin=origin) as acme_1,
        connect(url % "ACME", origin=origin) as acme_2,
        connect(url % "GLOBEX", origin=origin) as globex,
        EventPublisher() as publisher,
    ):
        sent: dict[str, list[str]] = {"ACME": [], "GLOBEX": []}
        for n in range(11):
            symbol = "ACME" if n % 2 == 0 else "GLOBEX"
            event_id = await publisher.publish(
                api=slug, version="1.0.0", address=f"prices/{symbol}", payload={"symbol": symbol, "n": n}
            )
            sent[symbol].append(event_id)
        frames = {
            "ACME-1": await receive_frames(acme_1, 6),
            "ACME-2": await receive_frames(acme_2, 6),
            "GLOBEX": await receive_frames(globex, 5),
        }
        # RabbitMQ keeps one publisher's order within a queue: had a GLOBEX event been routed
        # to an ACME client, it would have come before the last ACME frame.
        for client in (acme_1, acme_2, globex):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.recv(), timeout=0.3)
        frames["sent-ACME"], frames["sent-GLOBEX"] = sent["ACME"], sent["GLOBEX"]
        return frames


def test_subscribed_clients_receive_their_channel_and_usage_is_recorded(
    gateway_server, stream_api, bob_subscribed
):
    started = time.time()
    frames = asyncio.run(stream_scenario(gateway_server.ws_url, stream_api.slug, bob_subscribed.secret))

    for name, symbol in [("ACME-1", "ACME"), ("ACME-2", "ACME"), ("GLOBEX", "GLOBEX")]:
        events = [json.loads(frame) for frame in frames[name]]
        assert [event["id"] for event in events] == frames[f"sent-{symbol}"]
        assert {event["channel"] for event in events} == {f"prices/{symbol}"}
        assert all(event["payload"]["symbol"] == symbol for event in events)
        assert all(started <= event["published_at"] <= time.time() for event in events)
    assert frames["ACME-1"] == frames["ACME-2"]

    delivered = frames["ACME-1"] + frames["ACME-2"] + frames["GLOBEX"]
    expected = (len(delivered), sum(len(frame.encode()) for frame in delivered))
    usage = wait_for(
        lambda: (u := usage_for_subscription(subscription=bob_subscribed.subscription)).events == 17 and u
    )
    assert usage and (usage.events, usage.bytes) == expected, gateway_server.log()


def test_refused_handshake_is_accepted_then_closed_with_a_distinct_code(
    gateway_server, stream_api, bob_subscribed
):
    """uvicorn would answer a close before accept with HTTP 403 for every case; the gateway
    accepts and closes with the refusal contract's code instead (all cases: test_refusals.py)."""

    async def attempt(path: str) -> tuple[int, str]:
        async with connect(gateway_server.ws_url + path) as client:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(client.recv(), timeout=5)
        assert closed.value.rcvd is not None
        return closed.value.rcvd.code, closed.value.rcvd.reason

    code, reason = asyncio.run(attempt(f"/ws/{stream_api.slug}/1.0.0/prices/ACME"))
    assert code == 4401 and reason.startswith("no credential")
    path = f"/ws/{stream_api.slug}/1.0.0/prices/NOPE?access_token={bob_subscribed.secret}"
    code, reason = asyncio.run(attempt(path))
    assert (code, reason) == (4400, "bad parameter 'symbol': 'NOPE' is not one of 'ACME', 'GLOBEX'")
    assert bob_subscribed.secret not in gateway_server.log()


def test_client_without_origin_header_connects(gateway_server, stream_api, bob_subscribed):
    """Non-browser clients send no Origin (RFC 6455 §4.1): the README's `python -m websockets`
    command must get through."""

    async def attempt() -> bool:
        path = f"/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"
        url = gateway_server.ws_url + path
        async with connect(url) as client:
            return client.protocol.state.name == "OPEN"

    assert asyncio.run(attempt())


def test_idle_connection_stays_open_and_receives_later_events(gateway_server, stream_api, bob_subscribed):
    """An idle client still gets events after 6 s (longer than the channel layer's 5 s Redis
    BZPOPMIN: a Redis socket timeout at or under it closes every consumer with 1011)."""

    async def scenario() -> dict:
        path = f"/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"
        url = gateway_server.ws_url + path
        async with connect(url, origin=gateway_server.url) as client, EventPublisher() as publisher:
            await asyncio.sleep(6.5)
            await publisher.publish(
                api=stream_api.slug, version="1.0.0", address="prices/ACME", payload={"late": 1}
            )
            return json.loads(await asyncio.wait_for(client.recv(), timeout=5))

    assert asyncio.run(scenario())["payload"] == {"late": 1}, gateway_server.log()


def test_binary_frame_closes_with_1008_and_nothing_is_metered_afterwards(
    gateway_server, stream_api, bob_subscribed
):
    """A binary frame closes with 1008 (policy violation: events are JSON text); events
    published afterwards are not delivered to (nor billed for) the closed connection."""
    url = (
        f"{gateway_server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"
    )

    async def scenario() -> int | None:
        async with connect(url) as client:
            await client.send(b"\x00hello")
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(client.recv(), timeout=5)
        async with EventPublisher() as publisher:
            for n in range(5):
                await publisher.publish(
                    api=stream_api.slug, version="1.0.0", address="prices/ACME", payload=n
                )
        return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(scenario()) == 1008, gateway_server.log()
    time.sleep(1.5)  # three flush intervals
    assert usage_for_subscription(subscription=bob_subscribed.subscription).events == 0
    assert "Traceback" not in gateway_server.log()


def test_revoking_a_key_closes_its_live_connections_with_4401(gateway_server, stream_api, bob_subscribed):
    from portal.services.credentials import api_key_revoke

    url = (
        f"{gateway_server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"
    )

    async def scenario() -> int | None:
        async with connect(url) as client:
            await asyncio.to_thread(api_key_revoke, key=bob_subscribed.key)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(client.recv(), timeout=5)
        return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(scenario()) == 4401, gateway_server.log()


def test_event_body_that_is_not_one_json_value_is_dropped(gateway_server, stream_api, bob_subscribed):
    """A publisher cannot forge frame fields by splicing: ``0,"id":"spoofed"`` is dropped."""
    url = (
        f"{gateway_server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"
    )

    async def scenario() -> dict:
        async with connect(url) as client, EventPublisher() as publisher:
            deep = b"[" * 100_000 + b"]" * 100_000
            huge = b'"' + b"x" * (1024 * 1024) + b'"'  # valid JSON, over the 1 MiB limit
            for body in (b'0,"id":"spoofed"', b'{"unterminated":', b"NaN", deep, huge, b'{"ok":true}'):
                await publisher.publish(
                    api=stream_api.slug, version="1.0.0", address="prices/ACME", payload=body
                )
            return json.loads(await asyncio.wait_for(client.recv(), timeout=5))

    event = asyncio.run(scenario())
    assert event["payload"] == {"ok": True} and event["id"] != "spoofed"


def test_cancelling_a_subscription_in_admin_closes_its_connections_with_4403(
    gateway_server, stream_api, bob_subscribed
):
    url = (
        f"{gateway_server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"
    )
    subscription = bob_subscribed.subscription

    def cancel() -> None:  # as Django admin does: a model save, not a service call
        subscription.status = "cancelled"
        subscription.save()

    async def scenario() -> int | None:
        async with connect(url) as client:
            await asyncio.to_thread(cancel)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(client.recv(), timeout=5)
        return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(scenario()) == 4403, gateway_server.log()


def test_deactivating_the_owner_closes_live_connections_through_the_audit(
    gateway_server, stream_api, bob_subscribed, bob
):
    """A change that sends no control message (a bulk update, like a deactivation script) is
    caught by the gateway's periodic audit of live connections (0.5 s in this server)."""
    from portal.models import User

    url = (
        f"{gateway_server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"
    )

    async def scenario() -> int | None:
        async with connect(url) as client:
            await asyncio.to_thread(lambda: User.objects.filter(pk=bob.pk).update(is_active=False))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(client.recv(), timeout=5)
        return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(scenario()) == 4401, gateway_server.log()
