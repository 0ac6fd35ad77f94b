"""Baseline (b) of the gateway benchmark: a real Pushpin (Debian package) with its GRIP backend,
real ``websockets`` clients, events published through Pushpin's HTTP publish API. Skipped when
Pushpin is not installed (``apt-get install -y pushpin``)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from gateway.bench.pushpin import PushpinTarget, alive, publish, pushpin_available

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(pushpin_available() is not None, reason=pushpin_available() or ""),
]

CHANNELS = ["ticks/1", "ticks/2"]
CLIENTS_PER_CHANNEL = 5
EVENTS_PER_CHANNEL = 10
WARM_UP = "warm-up"


@pytest.fixture
def pushpin() -> Iterator[PushpinTarget]:
    target = PushpinTarget()
    target.start(channels=CHANNELS)
    try:
        yield target
    finally:
        target.stop()


def processes_using(folder: Path) -> list[int]:
    """Live processes whose command line names ``folder`` (this target's config or rundir)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if entry.isdigit() and str(folder).encode() in cmdline and alive(int(entry)):
            found.append(int(entry))
    return found


async def subscribed(pushpin: PushpinTarget, clients: dict[str, list]) -> None:
    """Publish a warm-up frame on each channel until every client got one: Pushpin registers a
    subscription just after the handshake, so an event published at once could miss it."""
    pending = {(channel, n) for channel, group in clients.items() for n in range(len(group))}
    for _ in range(50):
        await asyncio.to_thread(publish, pushpin.publish_url, [(channel, WARM_UP) for channel in clients])
        for channel, n in list(pending):
            try:
                if await asyncio.wait_for(clients[channel][n].recv(), timeout=0.05) == WARM_UP:
                    pending.discard((channel, n))
            except TimeoutError:
                pass
        if not pending:
            return
    raise AssertionError(f"never subscribed: {sorted(pending)}")


async def received_events(client, count: int) -> list[str]:
    """The next ``count`` frames after any leftover warm-up frames, then proof nothing else comes."""
    frames: list[str] = []
    while len(frames) < count:
        frame = await asyncio.wait_for(client.recv(), timeout=5)
        if frame != WARM_UP or frames:
            frames.append(frame)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.recv(), timeout=0.3)
    return frames


async def test_each_client_receives_its_channels_events_in_order_and_stop_leaves_no_process(pushpin):
    clients = {
        channel: [
            await connect(pushpin.client_spec(channel, n).url, compression=None)
            for n in range(CLIENTS_PER_CHANNEL)
        ]
        for channel in CHANNELS
    }
    await subscribed(pushpin, clients)

    sent: dict[str, list[str]] = {channel: [] for channel in CHANNELS}
    items = []
    for seq in range(EVENTS_PER_CHANNEL):
        for channel in CHANNELS:  # interleaved, as the benchmark's publisher sends a tick
            body = json.dumps({"published_at": time.time(), "seq": seq, "channel": channel})
            sent[channel].append(body)
            items.append((channel, body))
    half = len(items) // 2
    await asyncio.to_thread(publish, pushpin.publish_url, items[:half])
    await asyncio.to_thread(publish, pushpin.publish_url, items[half:])

    for channel, group in clients.items():
        for client in group:
            assert await received_events(client, EVENTS_PER_CHANNEL) == sent[channel]
            await client.close()

    pids, folder = pushpin.server_pids(), pushpin.folder
    names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in pids}
    assert {"pushpin", "condure", "zurl", "pushpin-proxy", "pushpin-handler"} <= names
    pushpin.stop()
    assert [pid for pid in pids if alive(pid)] == []
    assert processes_using(folder) == []
    assert not folder.exists()
