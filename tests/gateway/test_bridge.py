"""The broker bridge against the real RabbitMQ: bindings follow local demand, one frame is shared
by all local subscribers, the connection recovers when RabbitMQ drops it; and the meter's flush."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from asgiref.sync import sync_to_async

from analytics.services import usage_for_subscription
from gateway.bridge import Bridge, ReplayBuffer, sse_event
from gateway.delivery import ChannelFeed, Outbox
from gateway.metering import Meter
from gateway.publishing import EventPublisher, amqp_connect, event_message, exchange_declare, routing_key


class Collector:
    """A bridge subscriber that keeps what it is given."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def deliver(self, message: dict[str, Any], size: int, minute: int) -> None:
        self.messages.append(message)
        self.arrived.set()

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        await asyncio.wait_for(self.arrived.wait(), timeout)
        self.arrived.clear()
        return self.messages[-1]


@pytest.fixture
async def bridge():
    bridge = Bridge()
    yield bridge
    await bridge.close()


async def is_routed(key: str) -> bool:
    """Whether RabbitMQ routes ``key`` to any queue (a mandatory publish comes back if not)."""
    connection = await amqp_connect(name="eventgate-test-probe")
    try:
        exchange = await exchange_declare(
            await connection.channel(publisher_confirms=True, on_return_raises=True)
        )
        message = event_message(api="probe", version="0", address="probe", payload=None)
        try:
            await exchange.publish(message, routing_key=key, mandatory=True)
        except aio_pika.exceptions.DeliveryError:
            return False
        return True
    finally:
        await connection.close()


async def test_binding_exists_while_any_local_subscriber_needs_it(bridge):
    key = routing_key(api=f"bridge-{uuid.uuid4().hex[:8]}", version="1.0.0", address="prices/ACME")
    assert not await is_routed(key)
    await bridge.bind(key)
    await bridge.bind(key)
    assert await is_routed(key)
    await bridge.unbind(key)
    assert await is_routed(key), "one subscriber still needs the binding"
    await bridge.unbind(key)
    assert not await is_routed(key)


async def test_local_subscribers_share_one_frame_per_event(bridge):
    slug = f"bridge-{uuid.uuid4().hex[:8]}"
    key = routing_key(api=slug, version="1.0.0", address="prices/ACME")
    first, second = Collector(), Collector()
    await bridge.bind(key)
    bridge.attach(key, "prices/ACME", first)
    bridge.attach(key, "prices/ACME", second)
    async with EventPublisher() as publisher:
        await publisher.publish(api=slug, version="1.0.0", address="prices/ACME", payload={"n": 1})
        assert (await first.next()) is (await second.next())
        bridge.detach(key, second)
        await publisher.publish(api=slug, version="1.0.0", address="prices/ACME", payload={"n": 2})
        assert '"payload":{"n":2}' in (await first.next())["text"]
    assert len(second.messages) == 1


@pytest.mark.skipif(not shutil.which("rabbitmqctl"), reason="needs rabbitmqctl to drop the connection")
async def test_bridge_recovers_after_rabbitmq_drops_its_connection(bridge):
    slug = f"bridge-{uuid.uuid4().hex[:8]}"
    key = routing_key(api=slug, version="1.0.0", address="prices/ACME")
    collector = Collector()
    await bridge.bind(key)
    bridge.attach(key, "prices/ACME", collector)
    await asyncio.to_thread(close_connection, f"eventgate-gateway pid={os.getpid()}")
    async with EventPublisher() as publisher:
        for _ in range(60):  # the bridge reconnects after 1 s and restores queue and binding
            await publisher.publish(
                api=slug, version="1.0.0", address="prices/ACME", payload={"after": "drop"}
            )
            try:
                await collector.next(timeout=0.5)
                break
            except TimeoutError:
                continue
    assert collector.messages, "no event arrived after the connection was dropped"


def close_connection(name: str) -> None:
    """Make RabbitMQ close (CONNECTION_FORCED) the client connection called ``name``."""
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    pids = [
        line.split("\t")[0] for line in listing.splitlines() if f'"{name}"' in line or f'<<"{name}">>' in line
    ]
    assert pids, f"no RabbitMQ connection named {name!r}:\n{listing}"
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test"], check=True, timeout=30)


@pytest.mark.django_db(transaction=True)
async def test_meter_flush_adds_counts_to_usage_and_keeps_nothing_twice(bob_subscribed):
    meter = Meter()
    subscription = bob_subscribed.subscription
    minute = int(datetime(2026, 11, 29, 12, 0, tzinfo=UTC).timestamp()) // 60
    for size in (100, 120, 80):
        meter.add((subscription.pk, "prices/{symbol}", "out", minute), size)
    assert await meter.flush() == 1
    assert await meter.flush() == 0
    meter.add((subscription.pk, "prices/{symbol}", "out", minute), 50)
    await meter.stop()
    totals = await sync_to_async(usage_for_subscription)(subscription=subscription)
    assert (totals.events, totals.bytes) == (4, 350)


async def publish_bodies(slug: str, bodies: list[bytes], address: str = "prices/ACME") -> list[str]:
    async with EventPublisher() as publisher:
        return [
            await publisher.publish(api=slug, version="1.0.0", address=address, payload=body)
            for body in bodies
        ]


async def test_oversize_events_are_dropped_counted_and_never_stop_the_others(bridge):
    """GATEWAY_MAX_MESSAGE_BYTES bounds the frame a client gets, as it bounds the frames a client
    sends: a body over it, or one whose frame would be over it, reaches no subscriber."""
    slug = f"bridge-{uuid.uuid4().hex[:8]}"
    key = routing_key(api=slug, version="1.0.0", address="prices/ACME")
    bridge.max_bytes = 200
    first, second = Collector(), Collector()
    await bridge.bind(key)
    bridge.attach(key, "prices/ACME", first)
    bridge.attach(key, "prices/ACME", second)
    body_over = b'"' + b"x" * 250 + b'"'
    frame_over = b'"' + b"y" * 150 + b'"'  # 152 bytes of body, over 200 once framed
    await publish_bodies(slug, [body_over, b'{"ok":1}', frame_over, b'{"ok":2}'])
    for collector in (first, second):
        while len(collector.messages) < 2:
            await collector.next()
    texts = [message["text"] for message in first.messages]
    assert ['"payload":{"ok":1}' in texts[0], '"payload":{"ok":2}' in texts[1]] == [True, True]
    assert first.messages == second.messages
    assert all(len(text.encode()) <= 200 for text in texts)
    assert bridge.dropped["oversize"] == 2 and bridge.status()["dropped"]["oversize"] == 2


async def test_sse_subscribers_share_one_chunk_carrying_the_event_id(bridge):
    slug = f"bridge-{uuid.uuid4().hex[:8]}"
    key = routing_key(api=slug, version="1.0.0", address="prices/ACME")
    websocket, first, second = Collector(), Collector(), Collector()
    await bridge.bind(key)
    bridge.attach(key, "prices/ACME", websocket)
    bridge.attach(key, "prices/ACME", first, framing="sse")
    bridge.attach(key, "prices/ACME", second, framing="sse")
    [event_id] = await publish_bodies(slug, [b'{\n  "pretty": true\n}'])
    chunk = await first.next()
    assert chunk is await second.next()
    frame = (await websocket.next())["text"]
    assert chunk["type"] == "http.response.body" and chunk["more_body"] is True
    assert chunk["body"] == f"id: {event_id}\ndata: {frame.replace(chr(10), chr(10) + 'data: ')}\n\n".encode()
    assert chunk["body"].count(b"\ndata: ") == 3, "the body's line breaks become further data lines"


def test_sse_event_leaves_out_an_id_it_cannot_carry():
    assert sse_event("a\nb", '{"x":1}') == b'data: {"x":1}\n\n'
    assert sse_event("", "1") == b"data: 1\n\n"
    assert sse_event("e1", "1\r\n2") == b"id: e1\ndata: 1\ndata: 2\n\n"


async def test_replay_holds_recent_sse_events_within_its_bounds(bridge):
    slug = f"bridge-{uuid.uuid4().hex[:8]}"
    key = routing_key(api=slug, version="1.0.0", address="prices/ACME")
    bridge.replay_events = 3
    sse = Collector()
    await bridge.bind(key)
    bridge.attach(key, "prices/ACME", sse, framing="sse")
    ids = await publish_bodies(slug, [str(n).encode() for n in range(5)])
    while len(sse.messages) < 5:
        await sse.next()
    held = bridge.replay_since(key, ids[2])
    assert held is not None and [item[0] for item in held] == ids[3:]
    assert bridge.replay_since(key, ids[4]) == []
    assert bridge.replay_since(key, ids[1]) is None, "only 3 events are held: the 2nd is forgotten"
    assert bridge.replay_since(key, "never-seen") is None


def test_replay_buffer_forgets_by_bytes_and_age():
    buffer = ReplayBuffer(max_events=100, max_bytes=30, max_age=0.2)
    for n in range(4):
        buffer.append(f"e{n}", {"body": b"x" * 10}, 10)
    assert [item[0] for item in buffer.events] == ["e1", "e2", "e3"] and buffer.bytes == 30
    assert buffer.since("e1") is not None
    time.sleep(0.25)
    assert buffer.since("e2") is None and buffer.bytes == 0


async def test_a_lingering_binding_stays_until_its_delay_and_survives_a_returning_client(bridge):
    slug = f"bridge-{uuid.uuid4().hex[:8]}"
    key = routing_key(api=slug, version="1.0.0", address="prices/ACME")
    sse = Collector()
    await bridge.bind(key)
    bridge.attach(key, "prices/ACME", sse, framing="sse")
    bridge.detach(key, sse)
    bridge.unbind_later(key, 0.5)
    assert await is_routed(key) and key in bridge.routes, "lingering: binding and replay buffer kept"
    await bridge.bind(key)  # a client comes back within the delay
    await asyncio.sleep(0.8)
    assert await is_routed(key), "the returning client still needs the binding"
    bridge.unbind_later(key, 0.3)
    await asyncio.sleep(0.6)
    assert not await is_routed(key) and key not in bridge.routes
    assert bridge.status()["bindings"] == 0 and bridge.status()["lingering"] == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("gateway_cleanup")
async def test_channel_feeds_get_events_without_waiting_and_meter_after_sending(bridge, bob_subscribed):
    slug = f"bridge-{uuid.uuid4().hex[:8]}"
    key = routing_key(api=slug, version="1.0.0", address="prices/ACME")
    sent: list[dict[str, Any]] = []
    gate = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        await gate.wait()
        sent.append(message)

    async def close(code: int, reason: str) -> None:
        raise AssertionError("policy drop never closes")

    outbox = Outbox(send=send, close=close, maxsize=2, policy="drop")
    subscription_id = bob_subscribed.subscription.pk
    feed = ChannelFeed(outbox, subscription_id=subscription_id, channel_template="prices/{symbol}")
    outbox.start()
    await bridge.bind(key)
    bridge.attach(key, "prices/ACME", feed)
    probe = Collector()
    bridge.attach(key, "prices/ACME", probe)  # attached after: it gets each event once the feed took it
    await publish_bodies(slug, [str(n).encode() for n in range(5)])
    while len(probe.messages) < 5:
        await probe.next()
    meter = outbox._meter
    assert sent == [] and outbox.dropped == 2, "1 in the writer's send, 2 queued, 2 dropped"
    gate.set()
    await asyncio.sleep(0.1)
    assert [message["text"] for message in sent] == [message["text"] for message in probe.messages[:3]]
    minute_rows = [v for k, v in meter.counts.items() if k[0] == subscription_id]
    assert [sum(row[0] for row in minute_rows)] == [3]
    assert meter.dropped[(subscription_id, "prices/{symbol}")] >= 2
    outbox.stop()


class SSECollector(Collector):
    """An SSE subscriber that also takes the bridge's unmetered notices."""

    def __init__(self) -> None:
        super().__init__()
        self.notices: list[dict[str, Any]] = []

    def notice(self, message: dict[str, Any]) -> None:
        self.notices.append(message)


@pytest.mark.skipif(not shutil.which("rabbitmqctl"), reason="needs rabbitmqctl to drop the connection")
async def test_sse_streams_are_told_of_the_gap_a_lost_connection_left(bridge):
    slug = f"bridge-{uuid.uuid4().hex[:8]}"
    key = routing_key(api=slug, version="1.0.0", address="prices/ACME")
    sse = SSECollector()
    await bridge.bind(key)
    bridge.attach(key, "prices/ACME", sse, framing="sse")
    [before] = await publish_bodies(slug, [b"1"])
    await sse.next()
    await asyncio.to_thread(close_connection, f"eventgate-gateway pid={os.getpid()}")
    for _ in range(100):
        if sse.notices:
            break
        await asyncio.sleep(0.1)
    [notice] = sse.notices
    assert notice["body"].startswith(b"event: eventgate.gap\ndata: ")
    assert json.loads(notice["body"].split(b"data: ", 1)[1])["last_event_id"] == before
    held = bridge.replay_since(key, before)
    assert held is not None and [item[1] for item in held] == [notice], "resuming clients see it too"
    # aio-pika marks the connection up before it runs the bridge's reconnect callback: wait for
    # the callback (the count), not only for the flag.
    for _ in range(100):
        if bridge.connected and bridge.status()["reconnects"]:
            break
        await asyncio.sleep(0.1)
    assert bridge.status()["reconnects"] == 1
