"""The broker bridge against the real RabbitMQ: bindings follow local demand, one frame is shared
by all local subscribers, the connection recovers when RabbitMQ drops it; and the meter's flush."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from asgiref.sync import sync_to_async

from analytics.services import usage_for_subscription
from gateway.bridge import Bridge
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
