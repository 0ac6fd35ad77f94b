"""Server-Sent Events end to end: a real gateway process (uvicorn), a real HTTP client reading the
stream, events published to the real RabbitMQ, usage flushed to analytics (docs/sse.md)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from analytics.services import usage_for_subscription
from gateway.publishing import EventPublisher
from tests.fixtures.servers import gateway_start, gateway_status, rabbitmq_bindings, sse_open

pytestmark = pytest.mark.e2e


@pytest.fixture
def sse_server(transactional_db, tmp_path: Path):
    """A gateway whose SSE keep-alive is 0.5 s and whose channels linger 2 s after their last
    SSE client left."""
    server = gateway_start(
        tmp_path / "gateway.log", GATEWAY_SSE_KEEPALIVE="0.5", GATEWAY_SSE_LINGER_SECONDS="2"
    )
    try:
        yield server
    finally:
        server.stop()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def sse_path(api, secret: str, address: str = "prices/ACME") -> str:
    return f"/sse/{api.slug}/1.0.0/{address}?access_token={secret}"


def test_stream_carries_the_websocket_frame_with_event_ids_and_is_metered(
    sse_server, stream_api, bob_subscribed
):
    async def scenario():
        stream = await sse_open(sse_server.url, sse_path(stream_api, bob_subscribed.secret))
        ws_url = (
            f"{sse_server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"
        )
        async with connect(ws_url) as ws, EventPublisher() as publisher:
            ids = [
                await publisher.publish(
                    api=stream_api.slug, version="1.0.0", address="prices/ACME", payload={"n": n}
                )
                for n in range(3)
            ]
            events = [await stream.next_event() for _ in range(3)]
            frames = [await asyncio.wait_for(ws.recv(), 5) for _ in range(3)]
        await stream.close()
        return stream, ids, events, frames

    stream, ids, events, frames = asyncio.run(scenario())
    assert stream.status == 200 and stream.headers["content-type"].startswith("text/event-stream")
    assert [event.id for event in events] == ids
    assert [event.data for event in events] == frames, "the same frame as WebSocket, byte for byte"
    assert [json.loads(event.data)["payload"] for event in events] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert bob_subscribed.secret not in sse_server.log()
    usage = wait_for(
        lambda: (u := usage_for_subscription(subscription=bob_subscribed.subscription)).events == 6 and u
    )
    assert usage and usage.bytes == 2 * sum(len(frame.encode()) for frame in frames)


def test_keep_alive_comments_flow_on_an_idle_stream(sse_server, stream_api, bob_subscribed):
    async def scenario() -> list[str]:
        stream = await sse_open(
            sse_server.url,
            f"/sse/{stream_api.slug}/1.0.0/prices/ACME",
            headers={"Authorization": f"Bearer {bob_subscribed.secret}"},
        )
        with pytest.raises(TimeoutError):
            await stream.next_event(timeout=1.6)  # keep-alive every 0.5 s: comments, no events
        await stream.close()
        return stream.comments

    assert asyncio.run(scenario()).count("keep-alive") >= 2


def test_resume_with_last_event_id_replays_missed_events_in_order(sse_server, stream_api, bob_subscribed):
    path = sse_path(stream_api, bob_subscribed.secret)

    async def scenario():
        async with EventPublisher() as publisher:

            async def publish(n: int) -> str:
                return await publisher.publish(
                    api=stream_api.slug, version="1.0.0", address="prices/ACME", payload={"n": n}
                )

            first = await sse_open(sse_server.url, path)
            seen = [await publish(0), await publish(1)]
            assert [(await first.next_event()).id for _ in seen] == seen
            await first.close()  # the client goes away; the channel lingers 2 s
            missed = [await publish(n) for n in range(2, 5)]
            await asyncio.sleep(0.3)
            resumed = await sse_open(sse_server.url, path, headers={"Last-Event-ID": seen[-1]})
            replayed = [await resumed.next_event() for _ in missed]
            live = await publish(5)
            after = await resumed.next_event()
            await resumed.close()
            # Clients that cannot set headers (a new EventSource) give the id in the query.
            by_query = await sse_open(sse_server.url, f"{path}&last_event_id={missed[0]}")
            queried = [(await by_query.next_event()).id for _ in range(3)]
            await by_query.close()
            unknown = await sse_open(sse_server.url, path, headers={"Last-Event-ID": "not-held"})
            gap = await unknown.next_event()
            live_after_gap = await publish(6)
            next_after_gap = await unknown.next_event()
            await unknown.close()
        return missed, replayed, live, after, gap, live_after_gap, next_after_gap, queried

    missed, replayed, live, after, gap, live_after_gap, next_after_gap, queried = asyncio.run(scenario())
    assert queried == [*missed[1:], live]
    assert [event.id for event in replayed] == missed
    assert [json.loads(event.data)["payload"]["n"] for event in replayed] == [2, 3, 4]
    assert after.id == live, "live events follow the replay, nothing repeated"
    assert gap.event == "eventgate.gap" and json.loads(gap.data)["last_event_id"] == "not-held"
    assert next_after_gap.id == live_after_gap


def test_binding_lingers_after_the_last_sse_client_then_goes(sse_server, stream_api, bob_subscribed):
    async def scenario() -> None:
        stream = await sse_open(sse_server.url, sse_path(stream_api, bob_subscribed.secret))
        assert stream.status == 200
        await stream.close()

    asyncio.run(scenario())
    status = wait_for(lambda: (s := gateway_status(sse_server))["connections"]["sse"] == 0 and s)
    assert status and status["bridge"]["bindings"] == 1 and status["bridge"]["lingering"] == 1
    queue = status["bridge"]["queue"]
    assert len(rabbitmq_bindings(queue=queue)) == 1
    assert wait_for(lambda: gateway_status(sse_server)["bridge"]["bindings"] == 0, timeout=6)
    assert rabbitmq_bindings(queue=queue) == []


def test_revoking_the_key_ends_the_stream_with_its_close_code(sse_server, stream_api, bob_subscribed):
    from portal.services.credentials import api_key_revoke

    async def scenario():
        stream = await sse_open(sse_server.url, sse_path(stream_api, bob_subscribed.secret))
        await asyncio.sleep(0.2)
        revoked_at = time.monotonic()
        await asyncio.to_thread(api_key_revoke, key=bob_subscribed.key)
        last = await stream.next_event(timeout=5)
        took = time.monotonic() - revoked_at
        with pytest.raises(EOFError):
            await stream.next_event(timeout=5)
        await stream.close()
        return last, took

    last, took = asyncio.run(scenario())
    assert last.event == "eventgate.close" and json.loads(last.data)["close_code"] == 4401
    assert took < 1.0, f"stream ended {took:.2f} s after the revocation"
    assert wait_for(lambda: gateway_status(sse_server)["connections"]["sse"] == 0)


@pytest.mark.parametrize(
    "path, status, close_code",
    [
        ("/sse/{slug}/1.0.0/prices/ACME", 401, 4401),
        ("/sse/{slug}/1.0.0/prices/ACME?access_token=eg_unknown", 401, 4401),
        ("/sse/{slug}/1.0.0/nope/ACME?access_token={secret}", 404, 4404),
        ("/sse/{slug}/9.9.9/prices/ACME?access_token={secret}", 404, 4404),
        ("/sse/{slug}/1.0.0/prices/NOPE?access_token={secret}", 400, 4400),
    ],
)
def test_refused_requests_get_the_contract_status_and_json(
    sse_server, stream_api, bob_subscribed, path, status, close_code
):
    async def attempt():
        stream = await sse_open(
            sse_server.url, path.format(slug=stream_api.slug, secret=bob_subscribed.secret)
        )
        body = await stream.body()
        await stream.close()
        return stream, json.loads(body)

    stream, body = asyncio.run(attempt())
    assert (stream.status, body["close_code"]) == (status, close_code), body
    assert stream.headers["content-type"] == "application/json" and body["error"] and body["detail"]
    if status == 401:
        assert stream.headers["www-authenticate"].startswith("Bearer")
    assert bob_subscribed.secret not in json.dumps(body) + sse_server.log()
    bridge = gateway_status(sse_server)["bridge"]
    assert bridge is None or bridge["bindings"] == 0, "no broker binding for a refused request"


def test_only_get_opens_a_stream(sse_server, stream_api, bob_subscribed):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        sse_server.url + sse_path(stream_api, bob_subscribed.secret), method="POST", data=b""
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 405 and refused.value.headers["Allow"] == "GET"


def test_a_foreign_origin_is_refused_before_any_binding(sse_server, stream_api, bob_subscribed):
    async def attempt():
        stream = await sse_open(
            sse_server.url,
            sse_path(stream_api, bob_subscribed.secret),
            headers={"Origin": "https://evil.example"},
        )
        body = json.loads(await stream.body())
        await stream.close()
        return stream.status, body

    status, body = asyncio.run(attempt())
    assert (status, body["close_code"], body["error"]) == (403, 4403, "forbidden")
    assert gateway_status(sse_server)["bridge"] is None
