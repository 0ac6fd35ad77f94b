"""An orderly shutdown (SIGTERM, as honcho, systemd or Kubernetes send) writes the usage counted
since the last flush: ``manage.py serve`` leaves through ``SystemExit`` so the meter's ``atexit``
flush runs (uvicorn re-raises the signal after its graceful shutdown)."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect

from analytics.services import usage_for_subscription
from gateway.publishing import EventPublisher
from tests.fixtures.servers import gateway_start

pytestmark = pytest.mark.e2e

EVENTS = 7


def test_sigterm_flushes_the_usage_counted_since_the_last_flush(tmp_path, stream_api, bob_subscribed):
    # No periodic flush during the test: only the shutdown can write these counts.
    server = gateway_start(tmp_path / "gateway.log", GATEWAY_FLUSH_INTERVAL="3600")

    async def scenario() -> list[str]:
        path = f"/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"
        async with connect(server.ws_url + path) as client, EventPublisher() as publisher:
            for n in range(EVENTS):
                await publisher.publish(
                    api=stream_api.slug, version="1.0.0", address="prices/ACME", payload=n
                )
            return [await asyncio.wait_for(client.recv(), timeout=10) for _ in range(EVENTS)]

    try:
        frames = asyncio.run(scenario())
        assert usage_for_subscription(subscription=bob_subscribed.subscription).events == 0
    finally:
        server.stop()
    assert server.process.returncode == 143, server.log()  # 128 + SIGTERM: exited, not killed
    assert "lost its RabbitMQ connection" not in server.log(), "a planned stop is not a broker outage"
    usage = usage_for_subscription(subscription=bob_subscribed.subscription)
    assert (usage.events, usage.bytes) == (EVENTS, sum(len(frame.encode()) for frame in frames)), server.log()
