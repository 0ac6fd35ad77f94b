"""Handshake storms against a real gateway process (behaviour, no timing assertions).

- 300 concurrent handshakes with one API key are all accepted, and once its grant was checked
  a handshake costs no database query, no Redis command (credential cache or channel layer):
  the process reuses the grant while its control groups are held with no message since
  (``gateway.connections``; counters of ``/gateway/status``);
- 300 concurrent handshakes with 300 never-used keys, on an API whose channels have parameter
  patterns, are all accepted: no spurious 4400 "took too long to match";
- the matching budget counts the matching thread's own CPU time, so other threads holding the
  GIL or the cores cannot exhaust it (``gateway.schemas.MatchBudget``), while a pathological
  pattern is still stopped;
- what sends no control message still reaches handshakes within ``GATEWAY_GRANT_CACHE_SECONDS``
  (a quota used up: 4429), and a reused grant never outlives its credential (4401).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import regex
import websockets
from django.utils import timezone
from websockets.asyncio.client import connect

from analytics.models import UsageRecord
from gateway.auth import month_start
from gateway.schemas import MatchBudget
from portal.models import APIKey
from tests.factories import (
    APIFactory,
    APIVersionFactory,
    ApplicationFactory,
    BusinessPlanFactory,
    ChannelFactory,
    OperationFactory,
    SubscriptionFactory,
)
from tests.fixtures.servers import gateway_start, gateway_status
from tests.gateway.test_control_hub import in_thread

pytestmark = pytest.mark.e2e

STORM = 300


async def _storm(urls: list[str]) -> tuple[list, list[tuple[int | None, str]]]:
    """Open every URL at once; wait a second; returns (open clients, close codes of the others)."""
    clients = await asyncio.gather(*(connect(url, open_timeout=60) for url in urls))
    await asyncio.sleep(1.0)  # a refused handshake is closed at once: time for its close frame
    closed = []
    for client in clients:
        if client.protocol.state.name != "OPEN":
            rcvd = client.protocol.close_rcvd
            closed.append((rcvd.code if rcvd else None, rcvd.reason if rcvd else ""))
    return clients, closed


async def _close_all(clients: list) -> None:
    await asyncio.gather(*(client.close() for client in clients))


@pytest.fixture
def quiet_server(transactional_db, tmp_path: Path):
    """A gateway whose audit does not run during the test (its queries would blur the count)."""
    server = gateway_start(tmp_path / "gateway.log", GATEWAY_AUDIT_INTERVAL="600")
    try:
        yield server
    finally:
        server.stop()


def test_a_storm_of_one_keys_handshakes_is_accepted_and_costs_no_query_and_no_redis_command(
    quiet_server, stream_api, bob_subscribed
):
    url = f"{quiet_server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"

    async def scenario() -> tuple[dict, dict, list]:
        async with connect(url):  # the first handshake checks the grant against the database
            before = gateway_status(quiet_server)
            clients, closed = await _storm([url] * STORM)
            after = gateway_status(quiet_server)
            await _close_all(clients)
        return before, after, closed

    before, after, closed = asyncio.run(scenario())
    assert closed == [], quiet_server.log()[-3000:]
    assert after["connections"]["websocket"] == STORM + 1
    grown = {name: after["handshakes"][name] - before["handshakes"][name] for name in before["handshakes"]}
    assert grown == {
        "cached": STORM,
        "checked": 0,
        "refused": 0,
        "database_queries": 0,
        "credential_cache_reads": 0,
    }, grown
    assert after["control"]["layer_group_adds"] == before["control"]["layer_group_adds"] == 4


@pytest.fixture
def patterned_api(alice, transactional_db):
    """A published API whose 31 channels have parameter patterns (every handshake matches its
    address against all of them), with one application subscribed."""
    api = APIFactory(provider=alice, slug=f"patterned-{uuid.uuid4().hex[:8]}")
    version = APIVersionFactory(api=api, version="1.0.0")
    symbol = {"symbol": {"schema": {"type": "string", "pattern": "^[A-Z]{1,8}$"}}}
    OperationFactory(
        channel=ChannelFactory(api_version=version, address="prices/{symbol}", parameters=symbol)
    )
    for n in range(30):
        slot = {"a": {"schema": {"type": "string", "pattern": "^[a-z0-9-]{1,30}$"}}}
        OperationFactory(
            channel=ChannelFactory(
                api_version=version, key=f"c{n}", address=f"c{n}/{{a}}/{{b}}", parameters=slot
            )
        )
    application = ApplicationFactory()
    SubscriptionFactory(application=application, plan=BusinessPlanFactory(api=api, name="Free"))
    return api, application


def test_a_storm_of_never_used_keys_gets_no_spurious_4400(gateway_server, patterned_api):
    api, application = patterned_api
    secrets = [APIKey.generate(application=application)[1] for _ in range(STORM)]
    base = f"{gateway_server.ws_url}/ws/{api.slug}/1.0.0/prices/ACME?access_token="

    async def scenario() -> tuple[list, dict]:
        clients, closed = await _storm([base + secret for secret in secrets])
        status = gateway_status(gateway_server)
        await _close_all(clients)
        return closed, status

    closed, status = asyncio.run(scenario())
    assert closed == [], gateway_server.log()[-3000:]
    assert status["handshakes"]["checked"] >= STORM  # each key was checked against the database


def test_other_threads_cannot_spend_a_handshakes_matching_budget():
    """Before the fix, the budget counted wall time, GIL waits included: with three busy threads
    most of these budgets ran out on ordinary addresses (a spurious 4400 at the handshake)."""
    stop = threading.Event()

    def busy() -> None:  # pure Python: holds the GIL as long as the interpreter lets it
        count = 0
        while not stop.is_set():
            count += 1

    template, pattern = regex.compile(r"c12/(?P<a>[^/]+)/(?P<b>[^/]+)"), regex.compile(r"^[A-Z]{1,8}$")
    threads = [threading.Thread(target=busy) for _ in range(3)]
    for thread in threads:
        thread.start()
    exhausted = 0
    try:
        for _ in range(20):  # 20 handshakes of an API with 40 templates, each with a pattern
            budget = MatchBudget()
            try:
                for _ in range(40):
                    budget.run(template, "c12/some-value-here/x" * 3)
                    budget.run(pattern, "ACMEACME", search=True)
            except TimeoutError:
                exhausted += 1
        # A pattern that backtracks exponentially is still stopped, however busy the process.
        with pytest.raises(TimeoutError):
            MatchBudget().run(regex.compile(r"^(a|aa)+$"), "a" * 60 + "!")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert exhausted == 0


def test_a_quota_used_up_without_a_message_is_refused_within_the_grant_cache_time_and_expiry_holds(
    transactional_db, tmp_path: Path, stream_api, bob_subscribed
):
    server = gateway_start(
        tmp_path / "gateway.log", GATEWAY_GRANT_CACHE_SECONDS="1", GATEWAY_AUDIT_INTERVAL="600"
    )
    subscription = bob_subscribed.subscription
    subscription.plan.quota_events = 100
    subscription.plan.save()
    expiring, expiring_secret = APIKey.generate(application=bob_subscribed.application)
    expiring.expires_at = timezone.now() + timedelta(seconds=3)
    expiring.save()
    base = f"{server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token="

    async def refusal(secret: str) -> tuple[int | None, str]:
        async with connect(base + secret) as client:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(client.recv(), timeout=5)
        rcvd = closed.value.rcvd
        return (rcvd.code if rcvd else None, rcvd.reason if rcvd else "")

    async def scenario() -> dict:
        seen = {}
        async with connect(base + bob_subscribed.secret), connect(base + expiring_secret):
            # The quota is used up by a write that sends no control message (as the meter's).
            await asyncio.to_thread(
                in_thread,
                UsageRecord.objects.create,
                subscription=subscription,
                bucket_start=month_start(),
                channel="prices/{symbol}",
                events=100,
            )
            await asyncio.sleep(1.2)  # GATEWAY_GRANT_CACHE_SECONDS
            seen["quota"] = await refusal(bob_subscribed.secret)
            await asyncio.sleep(max(0.0, expiring.expires_at.timestamp() - time.time()) + 0.2)
            seen["expired"] = await refusal(expiring_secret)
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        server.stop()
    assert seen["quota"] == (4429, "events quota of plan 'Free' used up this month (100 events)"), (
        server.log()
    )
    assert seen["expired"][0] == 4401, seen
