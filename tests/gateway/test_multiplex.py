"""Multiplexed mode (docs/gateway.md, "Multiplexed mode"): ``/ws/<api>/<version>``, channels
subscribed and unsubscribed with frames, each frame checked like a handshake, answered by ``ack``
or ``error`` frames.

Frame logic runs in-process (``WebsocketCommunicator``, fast); the broker bindings per channel
are checked against a real server process with a real ``websockets`` client and ``rabbitmqctl``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from websockets.asyncio.client import connect

from gateway.publishing import EventPublisher, event_publish, routing_key
from portal.asgi import application
from tests.factories import ChannelFactory, OperationFactory
from tests.gateway.conftest import oauth_token_issue

ORIGIN = (b"origin", b"http://testserver")


async def multiplexed(api, secret: str) -> WebsocketCommunicator:
    client = WebsocketCommunicator(
        application, f"/ws/{api.slug}/1.0.0?access_token={secret}", headers=[ORIGIN]
    )
    connected, _ = await client.connect()
    assert connected
    assert await client.receive_nothing(timeout=0.1), "accepted and left open"
    return client


async def ask(client: WebsocketCommunicator, frame: dict | str) -> dict:
    await client.send_to(text_data=frame if isinstance(frame, str) else json.dumps(frame))
    return json.loads(await client.receive_from(timeout=5))


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("gateway_cleanup")
async def test_subscribe_and_unsubscribe_choose_the_channels_whose_events_arrive(stream_api, bob_subscribed):
    client = await multiplexed(stream_api, bob_subscribed.secret)
    try:
        for n, symbol in enumerate(("ACME", "GLOBEX")):
            reply = await ask(client, {"type": "subscribe", "channel": f"prices/{symbol}", "id": f"s{n}"})
            assert reply == {"type": "ack", "id": f"s{n}", "channel": f"prices/{symbol}"}
        # Subscribing twice is harmless (acknowledged, one binding, one copy of each event).
        assert (await ask(client, {"type": "subscribe", "channel": "prices/ACME", "id": 7}))["id"] == 7
        for symbol in ("ACME", "GLOBEX"):
            await event_publish(
                api=stream_api.slug, version="1.0.0", address=f"prices/{symbol}", payload=symbol
            )
        events = [json.loads(await client.receive_from(timeout=5)) for _ in range(2)]
        assert sorted((event["channel"], event["payload"]) for event in events) == [
            ("prices/ACME", "ACME"),
            ("prices/GLOBEX", "GLOBEX"),
        ]
        assert all("type" not in event for event in events)
        assert await ask(client, {"type": "unsubscribe", "channel": "prices/ACME", "id": "u"}) == {
            "type": "ack",
            "id": "u",
            "channel": "prices/ACME",
        }
        for symbol in ("ACME", "GLOBEX"):
            await event_publish(
                api=stream_api.slug, version="1.0.0", address=f"prices/{symbol}", payload=symbol
            )
        assert json.loads(await client.receive_from(timeout=5))["channel"] == "prices/GLOBEX"
        assert await client.receive_nothing(timeout=0.3)
    finally:
        await client.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("gateway_cleanup")
async def test_each_frame_is_checked_and_refused_with_an_error_frame(stream_api, bob_subscribed):
    client = await multiplexed(stream_api, bob_subscribed.secret)
    cases = [
        ({"type": "subscribe", "channel": "quotes/ACME", "id": 1}, 4404, "no channel 'quotes/ACME'"),
        ({"type": "subscribe", "channel": "prices/NOPE", "id": 2}, 4400, "bad parameter 'symbol': 'NOPE'"),
        ({"type": "subscribe", "channel": "orders", "id": 3}, 4405, "'orders' has no receive operation"),
        ({"type": "publish", "channel": "prices/ACME", "payload": 1, "id": 4}, 4405, "has no send operation"),
        ({"type": "unsubscribe", "channel": "prices/ACME", "id": 5}, 4400, "not subscribed to 'prices/ACME'"),
        ({"type": "subscribe", "channel": "prices/" + "A" * 300, "id": 6}, 4400, "exceeds 255 bytes"),
        ({"type": "publish", "channel": "orders", "id": 7}, 4400, "a publish frame needs a payload"),
        ({"type": "subscribe", "id": 8}, 4400, "a subscribe frame needs a channel"),
        ({"type": "listen", "channel": "prices/ACME", "id": 9}, 4400, "unknown frame type 'listen'"),
        ({"type": "subscribe", "channel": "prices/ACME", "id": [1]}, 4400, "id must be a string"),
        ('{"type": "subscribe", "channel": ', 4400, "malformed frame: payload is not JSON"),
        ("[1, 2]", 4400, "a frame is a JSON object with a type"),
    ]
    try:
        for frame, code, fragment in cases:
            reply = await ask(client, frame)
            assert reply["type"] == "error" and reply["code"] == code and fragment in reply["reason"], (
                frame,
                reply,
            )
            if isinstance(frame, dict) and isinstance(frame.get("id"), int):
                assert reply["id"] == frame["id"]
        # Still open and usable after all that.
        assert (await ask(client, {"type": "subscribe", "channel": "prices/ACME"}))["type"] == "ack"
    finally:
        await client.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("gateway_cleanup")
async def test_a_token_scoped_to_one_channel_subscribes_to_that_channel_only(stream_api, bob_subscribed):
    def world() -> str:
        news = ChannelFactory(
            api_version=stream_api.versions.get(), key="news", address="news", parameters={}
        )
        OperationFactory(channel=news)
        return oauth_token_issue(bob_subscribed.application, f"{stream_api.slug}:receive:prices/{{symbol}}")

    token = await sync_to_async(world)()
    client = await multiplexed(stream_api, token)
    try:
        assert (await ask(client, {"type": "subscribe", "channel": "prices/ACME", "id": "p"}))[
            "type"
        ] == "ack"
        refused = await ask(client, {"type": "subscribe", "channel": "news", "id": "n"})
        assert (refused["code"], refused["reason"]) == (
            4405,
            "the credential's scope does not allow receive on 'news'",
        )
    finally:
        await client.disconnect()


def _bindings(slug: str) -> set[str]:
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_bindings", "source_name", "routing_key"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return {
        line.split("\t")[1] for line in listed.splitlines() if "\t" in line and slug in line.split("\t")[1]
    }


def _wait_for(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def test_bindings_exist_per_subscribed_channel_and_go_with_unsubscribe_and_disconnect(
    gateway_server, stream_api, bob_subscribed
):
    slug = stream_api.slug
    acme, globex = (routing_key(api=slug, version="1.0.0", address=f"prices/{s}") for s in ("ACME", "GLOBEX"))
    url = f"{gateway_server.ws_url}/ws/{slug}/1.0.0?access_token={bob_subscribed.secret}"
    seen: dict[str, object] = {}

    async def send(client, frame: dict) -> dict:
        await client.send(json.dumps(frame))
        return json.loads(await asyncio.wait_for(client.recv(), timeout=5))

    async def scenario() -> None:
        async with connect(url) as client, EventPublisher() as publisher:
            assert (await send(client, {"type": "subscribe", "channel": "prices/ACME", "id": 1}))[
                "type"
            ] == "ack"
            assert (await send(client, {"type": "subscribe", "channel": "prices/GLOBEX", "id": 2}))[
                "type"
            ] == "ack"
            seen["both"] = await asyncio.to_thread(_bindings, slug)
            assert (await send(client, {"type": "unsubscribe", "channel": "prices/ACME", "id": 3}))[
                "type"
            ] == "ack"
            seen["after unsubscribe"] = await asyncio.to_thread(_bindings, slug)
            for symbol in ("ACME", "GLOBEX"):
                await publisher.publish(api=slug, version="1.0.0", address=f"prices/{symbol}", payload=symbol)
            seen["event"] = json.loads(await asyncio.wait_for(client.recv(), timeout=5))["channel"]

    asyncio.run(scenario())
    assert seen["both"] == {acme, globex}, gateway_server.log()
    assert seen["after unsubscribe"] == {globex}
    assert seen["event"] == "prices/GLOBEX"
    assert _wait_for(lambda: not _bindings(slug)), "the last binding goes when the client does"
    assert "Traceback" not in gateway_server.log()
