"""RabbitMQ restarts mid-stream (issue 4, "Broker bridge"): the gateway's bridge reconnects by
itself and re-establishes its queue, consumer and bindings; connected WebSocket and SSE clients
stay connected and receive the events published after the recovery (SSE streams are told of the
gap first); while RabbitMQ is away, new handshakes are told to try again later (1013 / HTTP 503)
(docs/delivery.md).

This stops the whole RabbitMQ application (``rabbitmqctl stop_app``/``start_app``), which every
other process on this machine notices: always restarted in ``finally``."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import connect

from gateway.publishing import EventPublisher, routing_key
from tests.fixtures.servers import (
    gateway_start,
    gateway_status,
    rabbitmq_bindings,
    rabbitmq_consumers,
    sse_open,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not shutil.which("rabbitmqctl"), reason="needs rabbitmqctl to restart RabbitMQ"),
]


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


@contextmanager
def rabbitmq_stopped() -> Iterator[None]:
    """RabbitMQ's application stopped (connections closed, non-durable state gone), then
    started again whatever happens in between."""
    rabbitmqctl("stop_app")
    try:
        yield
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")


@pytest.fixture
def server(transactional_db, tmp_path: Path):
    server = gateway_start(tmp_path / "gateway.log", GATEWAY_SSE_LINGER_SECONDS="0.5")
    try:
        yield server
    finally:
        server.stop()


async def wait_status(server, predicate, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = await asyncio.to_thread(gateway_status, server)
        if predicate(status) or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.2)


def test_clients_stay_connected_across_a_rabbitmq_restart_and_get_later_events(
    server, stream_api, bob_subscribed
):
    slug, secret = stream_api.slug, bob_subscribed.secret
    ws_url = f"{server.ws_url}/ws/{slug}/1.0.0/prices/ACME?access_token={secret}"
    sse_path = f"/sse/{slug}/1.0.0/prices/ACME?access_token={secret}"
    key = routing_key(api=slug, version="1.0.0", address="prices/ACME")

    async def publish(payload: dict) -> str:
        async with EventPublisher() as publisher:
            return await publisher.publish(api=slug, version="1.0.0", address="prices/ACME", payload=payload)

    async def scenario() -> dict:
        ws = await connect(ws_url)
        sse = await sse_open(server.url, sse_path)
        before = await publish({"when": "before"})
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["id"] == before
        assert (await sse.next_event()).id == before
        queue = (await wait_status(server, lambda s: s["bridge"]["bindings"] == 1))["bridge"]["queue"]
        outcome: dict = {"queue": queue}
        with rabbitmq_stopped():
            down = await wait_status(server, lambda s: not s["bridge"]["connected"])
            outcome["down"] = down["bridge"]["connected"] is False
            # While RabbitMQ is away: new handshakes are told to try again later.
            started = time.monotonic()
            async with connect(ws_url) as refused:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(refused.recv(), 30)
            outcome["ws_refused"] = closed.value.rcvd.code if closed.value.rcvd else None
            refused_sse = await sse_open(server.url, sse_path)
            outcome["sse_refused"] = (refused_sse.status, json.loads(await refused_sse.body()))
            await refused_sse.close()
            outcome["refusal_took"] = time.monotonic() - started
        up = await wait_status(server, lambda s: s["bridge"]["connected"] and s["bridge"]["reconnects"] >= 1)
        outcome["up"] = up["bridge"]
        outcome["bindings_after"] = await asyncio.to_thread(rabbitmq_bindings, queue=queue)
        outcome["consumers_after"] = await asyncio.to_thread(rabbitmq_consumers, queue=queue)
        after = [await publish({"when": "after", "n": n}) for n in range(3)]
        outcome["ws_after"] = [json.loads(await asyncio.wait_for(ws.recv(), 10))["id"] for _ in after]
        outcome["sse_gap"] = await sse.next_event(timeout=10)
        outcome["sse_after"] = [(await sse.next_event(timeout=10)).id for _ in after]
        outcome["after"] = after
        # A client resuming from before the outage learns of the gap where it happened.
        resumed = await sse_open(server.url, sse_path, headers={"Last-Event-ID": before})
        outcome["resumed"] = [await resumed.next_event() for _ in range(4)]
        await resumed.close()
        outcome["before"] = before
        async with connect(ws_url) as newcomer:  # new handshakes work again
            later = await publish({"when": "later"})
            outcome["newcomer"] = json.loads(await asyncio.wait_for(newcomer.recv(), 10))["id"] == later
        await ws.close()
        await sse.close()
        return outcome

    outcome = asyncio.run(scenario())
    assert outcome["down"], "the bridge noticed RabbitMQ went away"
    assert outcome["ws_refused"] == 1013
    status, body = outcome["sse_refused"]
    assert (status, body["close_code"]) == (503, 1013), body
    assert outcome["refusal_took"] < 25
    assert outcome["up"]["queue"] == outcome["queue"], "the same queue name, declared again"
    assert outcome["bindings_after"] == [key] and outcome["consumers_after"] == 1
    assert outcome["ws_after"] == outcome["after"], "the WebSocket stayed open and gets later events"
    gap = outcome["sse_gap"]
    assert gap.event == "eventgate.gap" and json.loads(gap.data)["last_event_id"] == outcome["before"]
    assert outcome["sse_after"] == outcome["after"], "the SSE stream stayed open and gets later events"
    resumed = outcome["resumed"]
    assert [event.event for event in resumed] == ["eventgate.gap"] + ["message"] * 3
    assert [event.id for event in resumed[1:]] == outcome["after"]
    assert outcome["newcomer"]
    status_after = gateway_status(server)
    deadline = time.monotonic() + 10
    while (
        status_after["connections"]["total"] or status_after["bridge"]["bindings"]
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
        status_after = gateway_status(server)
    assert status_after["connections"]["total"] == 0 and status_after["bridge"]["bindings"] == 0, status_after
    assert rabbitmq_bindings(queue=outcome["queue"]) == []
