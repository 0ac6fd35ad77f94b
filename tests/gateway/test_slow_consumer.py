"""Slow consumers against a real gateway process (issue 4, "Slow consumers"): a client that stops
reading while ~500 events/s flow to it cannot slow the other clients of the channel, its drops are
counted and not billed, and the server's memory stays flat (docs/delivery.md)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import connect

from analytics.services import usage_for_subscription
from gateway.publishing import EventPublisher
from tests.fixtures.servers import gateway_start, gateway_status

pytestmark = pytest.mark.e2e

EVENTS = 4000
RATE = 500  # events per second
PAD = 4000  # bytes of padding per payload: 4000 events ≈ 16 MB for the slow client
P99_BOUND = 0.5  # seconds, publish → deliver, for the clients that keep reading
# Bytes. Measured: ~1.5 MB with the outbox's 256 events; ~14 MB with an unbounded one.
RSS_GROWTH_BOUND = 6 * 1024 * 1024


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (``VmRSS`` in /proc/<pid>/status, in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def small_window_socket(url: str) -> socket.socket:
    """A connected TCP socket whose receive buffer is small (set before connecting, so the
    window stays small): a client that stops reading fills its buffers quickly."""
    host, port = url.removeprefix("ws://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    return sock


async def slow_consumer_scenario(server, slug: str, secret: str) -> dict:
    url = f"{server.ws_url}/ws/{slug}/1.0.0/prices/ACME?access_token={secret}"
    pid = server.process.pid
    # max_queue=1: the client library stops reading from the socket once one frame waits.
    slow = await connect(url, sock=small_window_socket(server.ws_url), max_queue=1)
    fast = [await connect(url), await connect(url)]
    latencies: list[list[float]] = [[], []]
    received: list[list[int]] = [[], []]

    async def read(client, index: int) -> None:
        while len(received[index]) < EVENTS:
            frame = await client.recv()
            now = time.time()
            event = json.loads(frame)
            latencies[index].append(now - event["published_at"])
            received[index].append(event["payload"]["seq"])

    rss: list[int] = []
    sampling = True

    async def sample() -> None:
        while sampling:
            rss.append(rss_bytes(pid))
            await asyncio.sleep(0.25)

    readers = [asyncio.create_task(read(client, n)) for n, client in enumerate(fast)]
    sampler = asyncio.create_task(sample())
    pad = "x" * PAD
    async with EventPublisher(confirm=False) as publisher:
        started = time.monotonic()
        for seq in range(EVENTS):
            await publisher.publish(
                api=slug, version="1.0.0", address="prices/ACME", payload={"seq": seq, "pad": pad}
            )
            if seq % 10 == 9:  # pace: event seq is due at started + seq / RATE
                await asyncio.sleep(max(0.0, started + (seq + 1) / RATE - time.monotonic()))
        publishing_took = time.monotonic() - started
    await asyncio.wait_for(asyncio.gather(*readers), timeout=30)
    status_during = gateway_status(server)
    sampling = False
    await sampler
    # The slow client reads again: it gets what the gateway queued for it, nothing it dropped.
    slow_frames: list[str] = []
    while True:
        try:
            slow_frames.append(await asyncio.wait_for(slow.recv(), timeout=2))
        except TimeoutError:
            break
    for client in (slow, *fast):
        await client.close()
    return {
        "latencies": latencies,
        "received": received,
        "slow": [json.loads(frame)["payload"]["seq"] for frame in slow_frames],
        "slow_bytes": sum(len(frame.encode()) for frame in slow_frames),
        "rss": rss,
        "status": status_during,
        "publishing_took": publishing_took,
    }


@pytest.fixture
def drop_server(transactional_db, tmp_path: Path):
    server = gateway_start(tmp_path / "gateway.log", GATEWAY_SLOW_CONSUMER_POLICY="drop")
    try:
        yield server
    finally:
        server.stop()


def test_a_client_that_stops_reading_is_dropped_for_and_others_keep_low_latency(
    drop_server, stream_api, bob_subscribed
):
    result = asyncio.run(slow_consumer_scenario(drop_server, stream_api.slug, bob_subscribed.secret))

    # The two clients that keep reading got every event, in order, fast.
    for index in (0, 1):
        assert result["received"][index] == list(range(EVENTS))
        p99 = percentile(result["latencies"][index], 0.99)
        assert p99 < P99_BOUND, f"client {index}: p99 publish→deliver {p99:.3f} s"
    # The slow one lost events (counted as dropped), kept its order, and nothing was duplicated.
    slow = result["slow"]
    dropped = EVENTS - len(slow)
    assert dropped > 0 and slow == sorted(set(slow))
    subscription = bob_subscribed.subscription
    by_subscription = result["status"]["slow_consumer_dropped"]["by_subscription"]
    assert {
        "subscription": subscription.pk,
        "channel": "prices/{symbol}",
        "events": dropped,
    } in by_subscription
    # Memory: bounded by the outbox (256 events), not by what the slow client failed to read.
    baseline = min(result["rss"][:4])
    growth = max(result["rss"]) - baseline
    assert growth < RSS_GROWTH_BOUND, f"RSS grew by {growth / 1e6:.1f} MB (from {baseline / 1e6:.1f} MB)"
    # Billing: exactly what was handed to sockets; the dropped events are not in it.
    frame_bytes = 2 * sum(
        len(json.dumps({"seq": seq, "pad": "x" * PAD}, separators=(",", ":"))) for seq in range(EVENTS)
    )
    deadline = time.monotonic() + 10
    while True:
        usage = usage_for_subscription(subscription=subscription)
        if usage.events >= 2 * EVENTS + len(slow) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert usage.events == 2 * EVENTS + len(slow), f"{dropped} dropped events must not be billed"
    assert usage.bytes > frame_bytes + result["slow_bytes"] - 1  # envelopes add to the payloads
    assert "Slow consumers:" in drop_server.log() and "Traceback" not in drop_server.log()


@pytest.fixture
def close_server(transactional_db, tmp_path: Path):
    server = gateway_start(tmp_path / "gateway.log", GATEWAY_SLOW_CONSUMER_POLICY="close")
    try:
        yield server
    finally:
        server.stop()


def test_close_policy_closes_a_client_that_stops_reading_with_1013(close_server, stream_api, bob_subscribed):
    url = f"{close_server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"

    async def scenario() -> tuple[int | None, int, int]:
        slow = await connect(url, sock=small_window_socket(close_server.ws_url), max_queue=1)
        fast = await connect(url)

        async def read_fast() -> int:
            count = 0
            while count < 2000:
                await asyncio.wait_for(fast.recv(), 10)
                count += 1
            return count

        reader = asyncio.create_task(read_fast())
        pad = "x" * PAD
        async with EventPublisher(confirm=False) as publisher:
            for seq in range(2000):
                await publisher.publish(
                    api=stream_api.slug,
                    version="1.0.0",
                    address="prices/ACME",
                    payload={"seq": seq, "pad": pad},
                )
                if seq % 10 == 9:
                    await asyncio.sleep(0.01)
        fast_count = await reader
        slow_count = 0
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(slow.recv(), 15)
                slow_count += 1
        await fast.close()
        return (closed.value.rcvd.code if closed.value.rcvd else None), slow_count, fast_count

    code, slow_count, fast_count = asyncio.run(scenario())
    assert code == 1013 and slow_count < 2000 and fast_count == 2000
    deadline = time.monotonic() + 10
    while gateway_status(close_server)["connections"]["websocket"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gateway_status(close_server)["connections"]["websocket"] == 0


def test_close_policy_ends_an_sse_stream_that_stops_being_read(close_server, stream_api, bob_subscribed):
    """The stream's last event cannot be written to a client that does not read: the gateway
    gives up after a few seconds, ends the response and cleans up all the same."""
    path = f"/sse/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"

    async def scenario() -> tuple[int, bool]:
        host, port = close_server.url.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.connect((host, int(port)))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        pad = "x" * PAD
        async with EventPublisher(confirm=False) as publisher:
            for seq in range(2000):
                await publisher.publish(
                    api=stream_api.slug,
                    version="1.0.0",
                    address="prices/ACME",
                    payload={"seq": seq, "pad": pad},
                )
                if seq % 10 == 9:
                    await asyncio.sleep(0.01)
        deadline = time.monotonic() + 20
        while gateway_status(close_server)["connections"]["sse"] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        open_after = gateway_status(close_server)["connections"]["sse"]
        # Reading again: the stream ends (the server closed it), having delivered less than all.
        sock.settimeout(10)
        received = b""
        while chunk := sock.recv(1 << 20):
            received += chunk
        sock.close()
        return open_after, received.count(b"\nid: ") < 2000

    open_after, fewer = asyncio.run(scenario())
    assert open_after == 0 and fewer
    assert "Slow consumer" in close_server.log() or "1013" in close_server.log()
