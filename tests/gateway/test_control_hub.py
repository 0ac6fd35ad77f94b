"""The control hub (``gateway.control.ControlHub``): one channel and one receive loop per gateway
process, whatever its number of connections.

In process, with real Redis: members of a group get its messages and others do not; the layer
sees one group add per group, not per member; a group no member needs is left after the linger;
the hub survives a Redis restart (Redis comes back empty: the hub adds its channel to its groups
again, so later revocations still arrive) and refuses joins meanwhile. Against a real server:
many connections of one key cost the layer 4 group adds, and one revocation closes them all.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import websockets
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from django.db import connection as db_connection
from websockets.asyncio.client import connect

from gateway.control import ControlHub, ControlUnavailable, api_key_group
from tests.fixtures.servers import free_port, gateway_status


class Member:
    """A stand-in for a live connection: records the control messages handed to it."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    def control_message(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.arrived.set()


def in_thread(fn, /, *args, **kwargs):
    """``fn`` for ``asyncio.to_thread``, closing the thread's database connection afterwards
    (the executor's thread ends with the loop; its connection would linger until collected)."""
    try:
        return fn(*args, **kwargs)
    finally:
        db_connection.close()


def layer_for(url: str) -> RedisChannelLayer:
    return RedisChannelLayer(hosts=[{"address": url, "socket_timeout": 15}])


async def send(layer: RedisChannelLayer, group: str, kind: str = "gateway.revoke") -> None:
    """What ``gateway.control`` sends: the message names its group."""
    await layer.group_send(group, {"type": kind, "group": group})


async def received(member: Member, timeout: float = 5.0) -> dict[str, Any]:
    await asyncio.wait_for(member.arrived.wait(), timeout)
    member.arrived.clear()
    return member.messages[-1]


async def _until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


needs_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis (REDIS_URL)")


@needs_redis
async def test_members_get_their_groups_messages_and_the_layer_sees_one_add_per_group():
    layer = layer_for(settings.REDIS_URL)
    hub = ControlHub(layer, linger=0.0)
    suffix = time.monotonic_ns()
    key_group, other_group = f"gateway.apikey.t{suffix}", f"gateway.apikey.u{suffix}"
    first, second, elsewhere = Member(), Member(), Member()
    try:
        await hub.join(first, [key_group])
        await hub.join(second, [key_group])
        await hub.join(elsewhere, [other_group])
        third = Member()
        assert hub.join_held(third, [key_group]), "a held group is joined without the layer"
        assert not hub.join_held(Member(), ["gateway.api.none"])
        assert hub.status()["layer_group_adds"] == 2, "one add per group, not per member"

        since = hub.tick
        await send(layer, key_group)
        assert (await received(first))["type"] == "gateway.revoke"
        assert (await received(second))["group"] == key_group
        assert (await received(third))["type"] == "gateway.revoke"
        assert not elsewhere.messages
        assert not hub.unchanged([key_group], since), "a message marks its group changed"
        assert hub.unchanged([other_group], since)

        # The last member leaves: the hub leaves the group in the layer after the linger (0 here).
        for member in (first, second, third):
            hub.leave(member, [key_group])
        assert await _until(lambda: hub.status()["layer_group_discards"] == 1)
        assert hub.changed(key_group) is None
        connection = layer.connection(layer.consistent_hash(key_group))
        assert not await connection.zrange(layer._group_key(key_group), 0, -1)
    finally:
        for task in hub._tasks:
            task.cancel()
        await layer.group_discard(other_group, hub.channel_name)
        await layer.close_pools()


@pytest.fixture
def own_redis(tmp_path: Path):
    """A redis-server of this test on a free port (never the machine's Redis), restartable:
    yields ``(url, start, stop)``."""
    port = free_port()
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
        )
        processes.append(process)
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout != b"PONG\n":
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop() -> None:
        for process in processes:
            if process.poll() is None:
                process.kill()  # by PID: this test's own redis-server
                process.wait(5)

    start()
    try:
        yield f"redis://127.0.0.1:{port}/0", start, stop
    finally:
        stop()


async def test_the_hub_survives_a_redis_restart_and_refuses_joins_meanwhile(own_redis):
    url, start, stop = own_redis
    layer = layer_for(url)
    hub = ControlHub(layer, linger=60.0)
    group = api_key_group(12345)
    member = Member()
    try:
        await hub.join(member, [group])
        await asyncio.sleep(0.2)  # the receive loop is waiting on Redis
        stop()  # Redis goes away, with every group membership it held
        assert await _until(lambda: not hub.available), "the receive loop notices the outage"
        with pytest.raises(ControlUnavailable):
            await hub.join(Member(), ["gateway.api.1"])
        assert not hub.join_held(Member(), [group]), "no join may rely on a group while Redis is away"
        assert not hub.unchanged([group], hub.tick)

        start()  # an empty Redis: without the hub's rejoin, nothing would reach the member again
        assert await _until(lambda: hub.available, timeout=15), "the receive loop recovers"
        sender = layer_for(url)  # another process's layer, as the portal's
        await send(sender, group)
        assert (await received(member))["type"] == "gateway.revoke"
        assert hub.status()["outages"] == 1
        await sender.close_pools()
    finally:
        for task in hub._tasks:
            task.cancel()
        await layer.close_pools()


def test_many_connections_of_one_key_cost_four_group_adds_and_one_revocation_closes_them_all(
    gateway_server, stream_api, bob_subscribed
):
    from portal.services.credentials import api_key_revoke

    url = (
        f"{gateway_server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"
    )

    async def scenario() -> tuple[dict, list[tuple[int | None, str]]]:
        clients = [await connect(url) for _ in range(30)]
        try:
            status = gateway_status(gateway_server)
            await asyncio.to_thread(in_thread, api_key_revoke, key=bob_subscribed.key)
            closes = []
            for client in clients:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(client.recv(), timeout=5)
                rcvd = closed.value.rcvd
                closes.append((rcvd.code if rcvd else None, rcvd.reason if rcvd else ""))
            return status, closes
        finally:
            for client in clients:
                await client.close()

    status, closes = asyncio.run(scenario())
    assert status["connections"]["websocket"] == 30
    control = status["control"]
    # Credential, subscription, API and version: each added once for the 30 connections.
    assert (control["groups"], control["layer_group_adds"]) == (4, 4), control
    assert set(closes) == {(4401, "API key revoked.")}, gateway_server.log()[-3000:]


def test_a_full_grant_cache_drops_the_grants_it_no_longer_trusts_first(monkeypatch, settings):
    from gateway import connections
    from gateway.auth import Grant
    from gateway.credentials import Credential

    monkeypatch.setattr(connections, "GRANT_CACHE_ENTRIES", 3)
    settings.GATEWAY_GRANT_CACHE_SECONDS = 60
    hub = ControlHub(layer=None, linger=0.0)  # type: ignore[arg-type] - no layer needed here
    for group in ("a", "b"):
        hub.tick += 1
        hub._changed[group] = hub.tick
    cache = connections.GrantCache(hub)

    def entry(group: str) -> connections._CachedGrant:
        credential = Credential("api_key", 1, 1, None, None)
        grant = Grant(credential, 1, 1, 1, 1, 1, "api", "1", False)
        return connections._CachedGrant(grant, (group,), hub.tick, time.monotonic())

    cache.put(("k1", "api", "1"), entry("a"))
    cache.put(("k2", "api", "1"), entry("b"))
    cache.put(("k3", "api", "1"), entry("b"))
    hub._dispatch({"type": "gateway.revoke", "group": "a"})  # k1's group had a message
    cache.put(("k4", "api", "1"), entry("b"))
    assert sorted(cache.entries) == [("k2", "api", "1"), ("k3", "api", "1"), ("k4", "api", "1")]
    assert cache.get(("k2", "api", "1")) is not None and cache.get(("k1", "api", "1")) is None


def test_a_gateway_that_shuts_down_leaves_its_control_groups(tmp_path, stream_api, bob_subscribed):
    """After SIGTERM no group in Redis still names the stopped process's channel: channels-redis
    would keep it for 24 h and write every later control message of those groups to it."""
    import redis

    from gateway.control import api_group, api_version_group, subscription_group
    from tests.fixtures.servers import gateway_start

    server = gateway_start(tmp_path / "gateway.log")
    groups = [
        api_key_group(bob_subscribed.key.id),
        subscription_group(bob_subscribed.subscription.id),
        api_group(stream_api.id),
        api_version_group(stream_api.versions.get().id),
    ]
    client = redis.Redis.from_url(settings.REDIS_URL)

    def members() -> list[set[bytes]]:
        # Other processes (earlier runs sharing this Redis) may be members too: compare sets.
        return [set(client.zrange(f"asgi:group:{group}", 0, -1)) for group in groups]

    before = members()

    async def connected() -> list[set[bytes]]:
        url = f"{server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"
        async with connect(url):
            return members()

    try:
        during = asyncio.run(connected())
    finally:
        server.stop()
    added = [now - then for now, then in zip(during, before, strict=True)]
    assert all(len(new) == 1 for new in added) and len(set.union(*added)) == 1, (
        "the process's one channel joined each of the grant's groups"
    )
    assert members() == before, server.log()[-3000:]
