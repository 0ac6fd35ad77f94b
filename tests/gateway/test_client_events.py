"""Client → server events (docs/gateway.md, "Client → server events"): scope checked on every
frame, payloads validated against the send operation's message schemas when the provider turns
that on, published to the inbound exchange with headers naming the application and
subscription, metered as direction "in".

A real server process and real ``websockets`` clients publish; an aio-pika consumer on the
inbound exchange checks what arrives. Validation details run in-process (fast).
"""

from __future__ import annotations

import asyncio
import json
import time

import aio_pika
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from websockets.asyncio.client import connect

from analytics.services import usage_for_subscription
from gateway.inbound import _publishers
from gateway.metering import get_meter
from portal.asgi import application
from portal.models import API, APIVersion, Operation
from tests.factories import ChannelFactory, OperationFactory
from tests.gateway.conftest import oauth_token_issue

ORDER_SCHEMA = {
    "type": "object",
    "required": ["symbol", "quantity"],
    "properties": {
        "symbol": {"type": "string", "pattern": "^[A-Z]+$"},
        "quantity": {"type": "integer", "minimum": 1},
        "legs": {"type": "array", "items": {"type": "object", "properties": {"price": {"type": "number"}}}},
        # A provider pattern that backtracks exponentially: only the time budget stops it.
        "note": {"type": "string", "pattern": "^(a|aa)+$"},
    },
}


@pytest.fixture
def send_api(stream_api) -> API:
    """``stream_api`` with a schema on ``orders`` (send) and ``chat/{room}`` (receive and send)."""
    Operation.objects.filter(channel__api_version__api=stream_api, action="send").update(
        messages=[{"name": "order", "payload": ORDER_SCHEMA}]
    )
    chat = ChannelFactory(
        api_version=stream_api.versions.get(), key="chat", address="chat/{room}", parameters={}
    )
    OperationFactory(channel=chat, key="receiveChat", action="receive")
    OperationFactory(channel=chat, key="sendChat", action="send")
    return stream_api


@pytest.fixture
async def inbound_cleanup():
    yield
    publisher = _publishers.pop(asyncio.get_running_loop(), None)
    if publisher is not None:
        await publisher.close()


async def inbound_queue(slug: str):
    """A connection and an exclusive queue bound to the inbound exchange for ``slug``'s events."""
    connection = await aio_pika.connect(settings.AMQP_URL)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(
        settings.EVENTGATE_INBOUND_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, f"{slug}.#")
    return connection, queue


async def inbound_messages(queue, count: int) -> list[aio_pika.abc.AbstractIncomingMessage]:
    messages = []
    async with queue.iterator() as iterator:
        async for message in iterator:
            await message.ack()
            messages.append(message)
            if len(messages) == count:
                return messages
    return messages


def test_client_events_reach_the_inbound_exchange_with_headers_and_are_metered(
    gateway_server, send_api, bob_subscribed
):
    slug, secret = send_api.slug, bob_subscribed.secret
    receive_only = oauth_token_issue(bob_subscribed.application, f"{slug}:receive")
    base = f"{gateway_server.ws_url}/ws/{slug}/1.0.0"
    order = {"symbol": "ACME", "quantity": 3}
    seen: dict[str, object] = {}

    async def scenario() -> list:
        connection, queue = await inbound_queue(slug)
        try:
            async with (
                connect(f"{base}/orders?access_token={secret}") as single,
                connect(f"{base}?access_token={secret}") as multiplexed,
                connect(
                    f"{base}/chat/lobby", additional_headers={"Authorization": f"Bearer {receive_only}"}
                ) as chat,
            ):
                started = time.time()
                await single.send(json.dumps(order))
                await multiplexed.send(
                    json.dumps({"type": "publish", "channel": "orders", "payload": order, "id": "o1"})
                )
                seen["ack"] = json.loads(await asyncio.wait_for(multiplexed.recv(), timeout=5))
                # The token may receive on chat but not send: every frame is checked, none closes.
                for text in ('{"hello": 1}', '{"hello": 2}'):
                    await chat.send(text)
                    seen.setdefault("chat", []).append(
                        json.loads(await asyncio.wait_for(chat.recv(), timeout=5))
                    )
                messages = await asyncio.wait_for(inbound_messages(queue, 2), timeout=10)
                seen["window"] = (started, time.time())
                with pytest.raises(TimeoutError):  # nothing from the refused chat frames
                    await asyncio.wait_for(inbound_messages(queue, 1), timeout=0.5)
                return messages
        finally:
            await connection.close()

    messages = asyncio.run(scenario())
    assert seen["ack"] == {"type": "ack", "id": "o1", "channel": "orders"}
    assert [frame["code"] for frame in seen["chat"]] == [4405, 4405], seen["chat"]
    assert seen["chat"][0]["reason"] == "the credential's scope does not allow send on 'chat/{room}'"
    started, ended = seen["window"]
    for message in messages:
        assert json.loads(message.body) == order
        assert message.routing_key == f"{slug}.1%2E0%2E0.orders"
        assert message.content_type == "application/json" and message.message_id
        headers = dict(message.headers)
        assert started <= float(headers.pop("eg-published-at")) <= ended
        assert headers == {
            "eg-api": slug,
            "eg-version": "1.0.0",
            "eg-channel": "orders",
            "eg-application": bob_subscribed.application.pk,
            "eg-subscription": bob_subscribed.subscription.pk,
        }
    # Single-channel mode publishes the frame's text as sent; a publish frame's payload compactly.
    expected_bytes = len(json.dumps(order)) + len(json.dumps(order, separators=(",", ":")))

    def metered():
        usage = usage_for_subscription(subscription=bob_subscribed.subscription, direction="in")
        return usage if usage.events == 2 else None

    deadline = time.monotonic() + 5
    while (usage := metered()) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert usage is not None and usage.bytes == expected_bytes, gateway_server.log()
    assert usage_for_subscription(subscription=bob_subscribed.subscription).events == 0  # nothing "out"
    assert secret not in gateway_server.log() and receive_only not in gateway_server.log()


async def single_channel(api, secret: str, address: str = "orders") -> WebsocketCommunicator:
    client = WebsocketCommunicator(
        application,
        f"/ws/{api.slug}/1.0.0/{address}?access_token={secret}",
        headers=[(b"origin", b"http://testserver")],
    )
    assert (await client.connect())[0]
    return client


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("gateway_cleanup", "inbound_cleanup")
async def test_payloads_are_validated_against_the_message_schema_when_the_version_asks(
    send_api, bob_subscribed
):
    await sync_to_async(APIVersion.objects.filter(api=send_api).update)(validate_payloads=True)
    connection, queue = await inbound_queue(send_api.slug)
    client = await single_channel(send_api, bob_subscribed.secret)
    cases = [
        (
            {"symbol": "ACME", "quantity": 0},
            "/quantity",
            "payload at /quantity: 0 is less than the minimum 1",
        ),
        (
            {"symbol": "acme", "quantity": 1},
            "/symbol",
            "payload at /symbol: 'acme' does not match the pattern '^[A-Z]+$'",
        ),
        ({"symbol": "ACME"}, "", "payload: 'quantity' is a required property"),
        (
            {"symbol": "ACME", "quantity": 1, "legs": [{"price": 1}, {"price": "x"}]},
            "/legs/1/price",
            "'x' is not of type number",
        ),
        (
            {"symbol": "ACME", "quantity": 1, "note": "a" * 40 + "!"},
            "",
            "payload took too long to validate (over 0.1 s)",
        ),
    ]
    try:
        for payload, pointer, reason in cases:
            await client.send_to(text_data=json.dumps(payload))
            error = json.loads(await client.receive_from(timeout=5))
            assert (error["code"], error["pointer"]) == (4400, pointer), error
            assert reason in error["reason"], error
        await client.send_to(text_data="{'single': 'quotes'}")
        error = json.loads(await client.receive_from(timeout=5))
        assert error["code"] == 4400 and error["reason"].startswith("payload is not JSON"), error
        await client.send_to(text_data='{"symbol": "ACME", "quantity": 2}')
        message = (await asyncio.wait_for(inbound_messages(queue, 1), timeout=5))[0]
        assert json.loads(message.body) == {"symbol": "ACME", "quantity": 2}
        assert await client.receive_nothing(timeout=0.2), "a taken event gets no reply"
    finally:
        await client.disconnect()
        await connection.close()
    counted = {key[:3]: value for key, value in get_meter().counts.items()}
    assert counted == {
        (bob_subscribed.subscription.pk, "orders", "in"): [1, len('{"symbol": "ACME", "quantity": 2}')]
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("gateway_cleanup", "inbound_cleanup")
async def test_without_validation_any_json_value_is_taken(send_api, bob_subscribed):
    connection, queue = await inbound_queue(send_api.slug)
    client = await single_channel(send_api, bob_subscribed.secret)
    try:
        await client.send_to(text_data='{"whatever": [1, 2, 3]}')
        message = (await asyncio.wait_for(inbound_messages(queue, 1), timeout=5))[0]
        assert message.body == b'{"whatever": [1, 2, 3]}'
        await client.send_to(text_data="NaN")
        error = json.loads(await client.receive_from(timeout=5))
        assert (error["code"], error["reason"]) == (4400, "NaN is not JSON")
    finally:
        await client.disconnect()
        await connection.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("gateway_cleanup", "inbound_cleanup")
async def test_an_expired_token_is_closed_with_4401_even_when_idle(send_api, bob_subscribed):
    token = await sync_to_async(oauth_token_issue)(
        bob_subscribed.application, f"{send_api.slug}:send", seconds=1
    )
    client = await single_channel(send_api, token)
    try:
        closed = await client.receive_output(timeout=3)
        assert (closed["type"], closed["code"], closed["reason"]) == (
            "websocket.close",
            4401,
            "Credential expired.",
        )
    finally:
        await client.disconnect()
