"""Throttling end to end across gateway processes and through Redis outages (issue 6,
``gateway.throttling``): real ``manage.py serve`` processes, real ``websockets`` clients, events
published to the real RabbitMQ, counters in a real Redis.

- Two processes share one subscription's window: leases never let them deliver more than the
  limit (overshoot 0) and stop them at most ``undershoot_bound(policy, 2)`` events early;
  with a limit below 100 (lease 1) the total is exact. Connection slots are shared as well.
- Redis killed mid-stream (a private ``redis-server``, tests/fixtures/redis_server.py):
  ``GATEWAY_THROTTLE_REDIS_DOWN=open`` keeps delivering and adds what it delivered to the
  counters when Redis is back; ``closed`` stops counted events (notice ``"unavailable"``) until
  Redis answers again. Neither crashes nor logs a traceback.
- Quota "stop" against "overage": what the client gets, what analytics record and what the
  invoice charges (throttled events are never billed).
- Redis restarted empty while connections stay open: the month's quota and the connection
  slots held must not be forgotten.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import websockets
from django.db.models import Sum
from django.utils import timezone
from websockets.asyncio.client import ClientConnection, connect

from analytics.models import UsageRecord
from billing.models import InvoiceLine
from billing.services import billing_period_containing, invoice_period_close
from gateway import throttling
from gateway.publishing import EventPublisher
from gateway.throttling import Policy, lease_events, policy_limits, undershoot_bound
from portal.models import APIKey, BusinessPlan
from tests.factories import ApplicationFactory, BusinessPlanFactory, SubscriptionFactory
from tests.fixtures.redis_server import RedisServer, redis_private  # noqa: F401 - fixture
from tests.fixtures.servers import ServerProcess, gateway_assert_idle, gateway_start, gateway_status

pytestmark = pytest.mark.e2e

# Seconds without a frame after which a client is taken to have received everything.
SILENCE = 1.5


# --- helpers ------------------------------------------------------------------------------------


def ws_url(server: ServerProcess, slug: str, secret: str, address: str = "prices/ACME") -> str:
    return f"{server.ws_url}/ws/{slug}/1.0.0/{address}?access_token={secret}"


@dataclass
class Collector:
    """Reads every frame of one WebSocket client in a task: events (frames with a payload) and
    throttling notices, in order; ``closed`` is the close frame received, if any."""

    client: ClientConnection
    frames: list[dict] = field(default_factory=list)
    closed: tuple[int, str] | None = None
    last: float = field(default_factory=time.monotonic)
    task: asyncio.Task | None = None

    def start(self) -> Collector:
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        try:
            async for raw in self.client:
                self.frames.append(json.loads(raw))
                self.last = time.monotonic()
        except websockets.ConnectionClosed:
            pass
        rcvd = self.client.protocol.close_rcvd
        self.closed = (rcvd.code, rcvd.reason) if rcvd is not None else None

    @property
    def events(self) -> list[dict]:
        return [frame for frame in self.frames if "payload" in frame]

    @property
    def notices(self) -> list[dict]:
        return [frame for frame in self.frames if frame.get("type") == "throttled"]

    def numbers(self) -> list[int]:
        return [frame["payload"]["n"] for frame in self.events]

    async def stop(self) -> None:
        await self.client.close()
        if self.task is not None:
            await self.task


async def quiet(collectors: list[Collector], silence: float = SILENCE, timeout: float = 60.0) -> None:
    """Wait until no collector got a frame for ``silence`` seconds (at most ``timeout``)."""
    deadline = time.monotonic() + timeout
    await asyncio.sleep(silence)
    while time.monotonic() < deadline:
        newest = max(collector.last for collector in collectors)
        if time.monotonic() - newest >= silence:
            return
        await asyncio.sleep(0.1)


async def publish(slug: str, numbers: range | list[int], address: str = "prices/ACME") -> None:
    async with EventPublisher() as publisher:
        for n in numbers:
            await publisher.publish(api=slug, version="1.0.0", address=address, payload={"n": n})


async def attempt(url: str) -> tuple[str, int | None, str]:
    """Open a WebSocket; ("open", None, "") when the gateway keeps it open 0.5 s (it is closed
    again here), else ("closed", code, reason) of the refusal."""
    async with connect(url) as client:
        try:
            await asyncio.wait_for(client.recv(), timeout=0.5)
        except TimeoutError:
            return "open", None, ""
        except websockets.ConnectionClosed as closed:
            rcvd = closed.rcvd
            return "closed", rcvd.code if rcvd else None, rcvd.reason if rcvd else ""
    return "open", None, ""


def set_plan(plan: BusinessPlan, **fields) -> Policy:
    for name, value in fields.items():
        setattr(plan, name, value)
    plan.save()
    return Policy.from_plan(plan)


def usage_rows(subscription) -> dict[str, int]:
    """Events, throttled events (server → client) analytics recorded for ``subscription``."""
    totals = UsageRecord.objects.filter(subscription=subscription, direction="out").aggregate(
        events=Sum("events"), throttled=Sum("throttled_events")
    )
    return {"events": totals["events"] or 0, "throttled": totals["throttled"] or 0}


def wait_usage(subscription, expected: dict[str, int], timeout: float = 10.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        rows = usage_rows(subscription)
        if rows == expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


# A WARNING the credential cache logs with its traceback on purpose when Redis is unreachable
# (gateway/credentials.py, ``exc_info=True``): expected during an outage, not a crash.
_EXPECTED_TRACEBACKS = ("Credential cache unreachable",)
_LOG_RECORD = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} ", re.MULTILINE)


def assert_no_traceback(*servers: ServerProcess) -> None:
    """No server answered an HTTP request with a 5xx, logged an ERROR, or logged a traceback
    other than the credential cache's outage warnings."""
    for server in servers:
        log = server.log()
        starts = [match.start() for match in _LOG_RECORD.finditer(log)] + [len(log)]
        records = [log[start:end] for start, end in zip(starts, starts[1:], strict=False)]
        bad = [
            record
            for record in records
            if (" ERROR " in record.split("\n", 1)[0] or " CRITICAL " in record.split("\n", 1)[0])
            or ("Traceback" in record and not any(text in record for text in _EXPECTED_TRACEBACKS))
            or re.search(r'HTTP/1\.1" 5\d\d', record)
        ]
        if "Traceback" in log[: starts[0]]:
            bad.insert(0, log[: starts[0]])
        assert not bad, "\n".join(bad)[-6000:]


@pytest.fixture
def two_gateways(transactional_db, tmp_path: Path):
    """Two gateway processes on the test's database, Redis and RabbitMQ."""
    servers: list[ServerProcess] = []
    try:
        servers.append(gateway_start(tmp_path / "gateway-a.log"))
        servers.append(gateway_start(tmp_path / "gateway-b.log"))
        yield servers
        for server in servers:
            gateway_assert_idle(server)
    finally:
        for server in servers:
            server.stop()


# --- two processes, one subscription --------------------------------------------------------------


def test_two_processes_never_deliver_more_than_the_rate_limit_and_stop_within_the_undershoot_bound(
    two_gateways, stream_api, bob_subscribed
):
    """N = 2000 events per hour (lease 20): one client of the subscription on each process,
    both on prices/ACME; 1500 events published = 3000 deliveries asked, past N."""
    limit = 2000
    policy = set_plan(
        bob_subscribed.subscription.plan, rate_limit_events=limit, rate_limit_unit=BusinessPlan.RateUnit.HOUR
    )
    lease = lease_events(policy_limits(policy, bob_subscribed.subscription.pk))
    assert lease == 20
    bound = undershoot_bound(policy, 2)
    server_a, server_b = two_gateways
    slug, secret = stream_api.slug, bob_subscribed.secret

    async def scenario() -> tuple[Collector, Collector]:
        a = Collector(await connect(ws_url(server_a, slug, secret), max_queue=None)).start()
        b = Collector(await connect(ws_url(server_b, slug, secret), max_queue=None)).start()
        await publish(slug, range(1500))
        await quiet([a, b])
        await a.stop()
        await b.stop()
        return a, b

    a, b = asyncio.run(scenario())
    delivered = len(a.events) + len(b.events)
    statuses = [gateway_status(server) for server in two_gateways]
    print(
        f"\nrate {limit}/hour, lease {lease}, 2 processes: delivered A={len(a.events)} "
        f"B={len(b.events)} total={delivered}; overshoot={max(0, delivered - limit)}, "
        f"undershoot={max(0, limit - delivered)} (bound {bound}); notices A={a.notices} B={b.notices}; "
        f"slow-consumer drops={[status['slow_consumer_dropped']['total'] for status in statuses]}"
    )
    assert [status["slow_consumer_dropped"]["total"] for status in statuses] == [0, 0]
    assert delivered <= limit, "overshoot is 0"
    assert delivered >= limit - bound, f"undershoot {limit - delivered} > bound {bound}"
    for collector in (a, b):
        assert collector.numbers() == sorted(collector.numbers()), "order kept"
        assert [notice["limit"] for notice in collector.notices] == ["rate"]
        assert collector.notices[0]["reason"] == (
            f"rate limit of plan 'Free' reached ({limit:,} events per hour)"
        )
        assert 0 < collector.notices[0]["retry_after"] <= 3600
        # The notice comes after the client's last delivered event: nothing once stopped.
        assert collector.frames[-1]["type"] == "throttled"
    # The shared counter holds exactly the limit: leases taken, none beyond it.
    usage = {
        row.kind: row for row in throttling.subscription_limits_usage(policy, bob_subscribed.subscription.pk)
    }
    assert (usage["rate"].used, usage["rate"].remaining) == (limit, 0)
    expected = {"events": delivered, "throttled": 3000 - delivered}
    assert wait_usage(bob_subscribed.subscription, expected) == expected
    assert_no_traceback(*two_gateways)


def test_two_processes_deliver_exactly_a_small_rate_limit(two_gateways, stream_api, bob_subscribed):
    """N = 5 per hour (lease 1): 8 events to one client on each process = 16 deliveries asked,
    exactly 5 made in total."""
    policy = set_plan(
        bob_subscribed.subscription.plan, rate_limit_events=5, rate_limit_unit=BusinessPlan.RateUnit.HOUR
    )
    assert lease_events(policy_limits(policy, bob_subscribed.subscription.pk)) == 1
    assert undershoot_bound(policy, 2) == 2 * (1 + 0 + 1)
    server_a, server_b = two_gateways
    slug, secret = stream_api.slug, bob_subscribed.secret

    async def scenario() -> tuple[Collector, Collector]:
        a = Collector(await connect(ws_url(server_a, slug, secret))).start()
        b = Collector(await connect(ws_url(server_b, slug, secret))).start()
        await publish(slug, range(8))
        await quiet([a, b])
        await a.stop()
        await b.stop()
        return a, b

    a, b = asyncio.run(scenario())
    print(f"\nrate 5/hour, lease 1, 2 processes: A got {a.numbers()}, B got {b.numbers()}")
    assert len(a.events) + len(b.events) == 5
    for collector in (a, b):
        assert collector.numbers() == sorted(collector.numbers())
        if len(collector.events) < 8:
            assert [notice["limit"] for notice in collector.notices] == ["rate"]
    usage = {
        row.kind: row for row in throttling.subscription_limits_usage(policy, bob_subscribed.subscription.pk)
    }
    assert (usage["rate"].used, usage["rate"].remaining) == (5, 0)
    expected = {"events": 5, "throttled": 11}
    assert wait_usage(bob_subscribed.subscription, expected) == expected
    assert_no_traceback(*two_gateways)


def test_connection_limit_is_shared_by_two_processes(two_gateways, stream_api, bob_subscribed):
    """max_connections = 2: one connection on each process; a third on either is refused with
    4429 naming the limit; closing one frees its slot for a connection on the other process."""
    set_plan(bob_subscribed.subscription.plan, max_connections=2)
    server_a, server_b = two_gateways
    url_a = ws_url(server_a, stream_api.slug, bob_subscribed.secret)
    url_b = ws_url(server_b, stream_api.slug, bob_subscribed.secret)
    reason = "plan 'Free' allows 2 concurrent connections per subscription"

    async def scenario() -> dict:
        outcome: dict = {}
        first = await connect(url_a)
        second = await connect(url_b)
        outcome["open"] = [await attempt_open(first), await attempt_open(second)]
        outcome["third_a"] = await attempt(url_a)
        outcome["third_b"] = await attempt(url_b)
        await first.close()
        deadline = time.monotonic() + 10
        while True:  # the slot is given back by a task of process A: poll
            outcome["after_close"] = await attempt(url_b)
            if outcome["after_close"][0] == "open" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        await second.close()
        return outcome

    async def attempt_open(client: ClientConnection) -> bool:
        try:
            await asyncio.wait_for(client.recv(), timeout=0.3)
        except TimeoutError:
            return True
        except websockets.ConnectionClosed:
            return False
        return True

    outcome = asyncio.run(scenario())
    assert outcome["open"] == [True, True]
    assert outcome["third_a"] == ("closed", 4429, reason)
    assert outcome["third_b"] == ("closed", 4429, reason)
    assert outcome["after_close"] == ("open", None, "")
    assert_no_traceback(*two_gateways)


# --- Redis killed mid-stream ---------------------------------------------------------------------


@pytest.fixture
def private_redis_settings(redis_private: RedisServer, settings, monkeypatch):  # noqa: F811
    """Point this test process's throttling reads (``subscription_limits_usage``) at the
    private Redis (DB 6 there: the server is ours alone)."""
    settings.REDIS_URL = redis_private.url(6)
    monkeypatch.setattr(throttling, "_sync_limiter", None)
    return redis_private


def private_usage(policy: Policy, subscription_id: int) -> dict[str, int] | None:
    """{kind: used} of the subscription's counters in the private Redis (None: unreachable).
    A new limiter each time: the storage's connections do not outlive a Redis restart."""
    throttling._sync_limiter = None
    usage = throttling.subscription_limits_usage(policy, subscription_id)
    return None if usage is None else {row.kind: row.used for row in usage}


async def until(predicate, timeout: float = 15.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


def test_redis_killed_mid_stream_fail_open_keeps_delivering_and_counts_the_outage(
    private_redis_settings, tmp_path, stream_api, bob_subscribed
):
    """GATEWAY_THROTTLE_REDIS_DOWN=open, 10 events per hour (lease 1). 4 events delivered; Redis
    killed: of 6 more published at once, one local lease (1 event) is delivered, then events
    stop until the next attempt a second later (one notice, "unavailable"): the documented
    bound of one lease per process per second. New handshakes are told to try again later
    (1013). Redis started again (empty, no persistence): the event delivered during the outage
    is added to the new window, and the next 6 are delivered."""
    redis_server = private_redis_settings
    policy = set_plan(
        bob_subscribed.subscription.plan, rate_limit_events=10, rate_limit_unit=BusinessPlan.RateUnit.HOUR
    )
    sub_id = bob_subscribed.subscription.pk
    server = gateway_start(
        tmp_path / "gateway.log", REDIS_URL=redis_server.url(6), GATEWAY_THROTTLE_REDIS_DOWN="open"
    )
    url = ws_url(server, stream_api.slug, bob_subscribed.secret)

    async def scenario() -> dict:
        outcome: dict = {}
        client = Collector(await connect(url)).start()
        await publish(stream_api.slug, range(4))
        assert await until(lambda: len(client.events) == 4), client.frames
        outcome["used_before"] = private_usage(policy, sub_id)
        redis_server.kill()
        outcome["used_down"] = private_usage(policy, sub_id)
        await publish(stream_api.slug, range(4, 10))
        await until(lambda: len(client.notices) == 1)
        await asyncio.sleep(0.3)
        outcome["during"] = client.numbers()[4:]
        outcome["notices_during"] = [notice["limit"] for notice in client.notices]
        outcome["handshake_down"] = await attempt(url)
        outcome["status_down"] = await asyncio.to_thread(gateway_status, server)
        redis_server.start()
        outcome["used_restarted"] = private_usage(policy, sub_id)
        await asyncio.sleep(1.1)  # past the outage's retry time (REDIS_RETRY_SECONDS)
        await publish(stream_api.slug, range(10, 16))
        await quiet([client])
        outcome["after"] = client.numbers()[5:]
        outcome["notices"] = list(client.notices)
        outcome["used_after"] = private_usage(policy, sub_id)
        # New handshakes work again once the control channel is back (polled: its retry loop).
        deadline = time.monotonic() + 15
        while (result := await attempt(url))[0] != "open" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        outcome["handshake_after"] = result
        await client.stop()
        outcome["open_after"] = client.closed
        return outcome

    try:
        outcome = asyncio.run(scenario())
        print(f"\nfail open: {outcome}")
        assert outcome["used_before"] == {"rate": 4}
        assert outcome["used_down"] is None
        assert outcome["during"] == [4], "fail open: one local lease per second while Redis is down"
        assert outcome["notices_during"] == ["unavailable"]
        assert outcome["handshake_down"][:2] == ("closed", 1013)
        assert outcome["status_down"]["connections"]["total"] == 1
        assert outcome["used_restarted"] == {"rate": 0}, "a restarted Redis without persistence is empty"
        # The event delivered during the outage was added to the new window when Redis came
        # back: the next 6 fit (1 + 6 of 10).
        assert outcome["after"] == [10, 11, 12, 13, 14, 15]
        assert [notice["limit"] for notice in outcome["notices"]] == ["unavailable"]
        assert outcome["used_after"] == {"rate": 7}
        assert outcome["handshake_after"] == ("open", None, "")
        # Analytics saw it all: 16 events published, 11 delivered, 5 throttled.
        expected = {"events": 11, "throttled": 5}
        assert wait_usage(bob_subscribed.subscription, expected) == expected
        gateway_assert_idle(server)
    finally:
        server.stop()
    assert "Throttling storage unreachable" in server.log()
    assert_no_traceback(server)


def test_redis_killed_mid_stream_fail_closed_throttles_until_it_is_back(
    private_redis_settings, tmp_path, stream_api, bob_subscribed
):
    """GATEWAY_THROTTLE_REDIS_DOWN=closed, 100 events per hour: 2 events delivered; Redis
    killed: counted events are stopped (notice "unavailable"), the connection stays open;
    Redis back: events are delivered again."""
    redis_server = private_redis_settings
    policy = set_plan(
        bob_subscribed.subscription.plan, rate_limit_events=100, rate_limit_unit=BusinessPlan.RateUnit.HOUR
    )
    sub_id = bob_subscribed.subscription.pk
    server = gateway_start(
        tmp_path / "gateway.log", REDIS_URL=redis_server.url(6), GATEWAY_THROTTLE_REDIS_DOWN="closed"
    )
    url = ws_url(server, stream_api.slug, bob_subscribed.secret)

    async def scenario() -> dict:
        outcome: dict = {}
        client = Collector(await connect(url)).start()
        await publish(stream_api.slug, range(2))
        assert await until(lambda: len(client.events) == 2), client.frames
        redis_server.kill()
        await publish(stream_api.slug, range(2, 5))
        await until(lambda: client.notices)
        await quiet([client])
        outcome["during"] = client.numbers()[2:]
        outcome["notices_during"] = list(client.notices)
        outcome["handshake_down"] = await attempt(url)
        outcome["status_down"] = await asyncio.to_thread(gateway_status, server)
        redis_server.start()
        # The stop lasts REDIS_RETRY_SECONDS past the last failed attempt: probe until an
        # event gets through, then 3 more must all be delivered.
        probe = 100
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            seen = len(client.events)
            await publish(stream_api.slug, [probe])
            probe += 1
            if await until(lambda seen=seen: len(client.events) > seen, timeout=0.5):
                break
        outcome["probes"] = probe - 100
        await publish(stream_api.slug, range(5, 8))
        await quiet([client])
        outcome["after"] = [n for n in client.numbers() if 5 <= n < 8]
        outcome["published"] = 2 + 3 + outcome["probes"] + 3
        outcome["delivered"] = len(client.events)
        outcome["used_after"] = private_usage(policy, sub_id)
        await client.stop()
        return outcome

    try:
        outcome = asyncio.run(scenario())
        print(f"\nfail closed: {outcome}")
        assert outcome["during"] == [], "fail closed: nothing delivered while Redis is down"
        notices = outcome["notices_during"]
        assert notices and {notice["limit"] for notice in notices} == {"unavailable"}
        assert notices[0]["reason"] == (
            "throttling unavailable (Redis unreachable); events stopped until it is back"
        )
        assert outcome["handshake_down"][:2] == ("closed", 1013)
        assert outcome["status_down"]["connections"]["total"] == 1
        assert outcome["after"] == [5, 6, 7]
        assert outcome["used_after"]["rate"] >= 4  # a probe and the 3 events, counted again
        # Stopped events are recorded as throttled: the 3 of the outage and any probe stopped.
        expected = {
            "events": outcome["delivered"],
            "throttled": outcome["published"] - outcome["delivered"],
        }
        assert outcome["published"] - outcome["delivered"] >= 3
        assert wait_usage(bob_subscribed.subscription, expected) == expected
        gateway_assert_idle(server)
    finally:
        server.stop()
    assert_no_traceback(server)


# --- quota: stop against overage -----------------------------------------------------------------


def test_quota_stop_throttles_and_overage_delivers_and_analytics_record_both(
    gateway_server, stream_api, bob_subscribed, bob
):
    """Plan A: 3 events a month, "stop"; plan B: 3 events a month, "overage" at 10.00 per 1000
    events. 5 events to one client of each: A gets 3 and a "quota" notice (2 throttled,
    never billed); B gets all 5 (5 counted, 2 of them over the quota)."""
    plan_a = bob_subscribed.subscription.plan
    set_plan(plan_a, quota_events=3, quota_action=BusinessPlan.QuotaAction.STOP)
    plan_b = BusinessPlanFactory(
        api=stream_api,
        name="Metered",
        quota_events=3,
        quota_action=BusinessPlan.QuotaAction.OVERAGE,
        overage_price_per_1000_events_minor=1000,
    )
    application_b = ApplicationFactory(owner=bob, name="Bob's metered app")
    subscription_b = SubscriptionFactory(application=application_b, plan=plan_b)
    _, secret_b = APIKey.generate(application=application_b)
    slug = stream_api.slug

    async def scenario() -> tuple[Collector, Collector]:
        a = Collector(await connect(ws_url(gateway_server, slug, bob_subscribed.secret))).start()
        b = Collector(await connect(ws_url(gateway_server, slug, secret_b))).start()
        await publish(slug, range(5))
        await quiet([a, b])
        await a.stop()
        await b.stop()
        return a, b

    a, b = asyncio.run(scenario())
    assert a.numbers() == [0, 1, 2]
    assert [notice["limit"] for notice in a.notices] == ["quota"]
    assert a.notices[0]["reason"] == "events quota of plan 'Free' used up this month (3 events)"
    assert b.numbers() == [0, 1, 2, 3, 4] and b.notices == []
    assert wait_usage(bob_subscribed.subscription, {"events": 3, "throttled": 2}) == {
        "events": 3,
        "throttled": 2,
    }
    assert wait_usage(subscription_b, {"events": 5, "throttled": 0}) == {"events": 5, "throttled": 0}
    assert_no_traceback(gateway_server)

    # Billing (the current month, closed early on purpose): A's plan charges nothing and its
    # throttled events are never billed; B pays one started block of 1,000 events over quota.
    start, end = billing_period_containing(timezone.now())
    invoices = invoice_period_close(period_start=start, period_end=end, allow_open=True)
    lines = list(InvoiceLine.objects.filter(invoice__in=invoices).order_by("pk"))
    assert [line for line in lines if line.subscription_id == bob_subscribed.subscription.pk] == []
    overage = [
        (line.kind, line.events, line.quantity, line.unit_amount_minor, line.amount_minor)
        for line in lines
        if line.subscription_id == subscription_b.pk
    ]
    assert overage == [(InvoiceLine.Kind.EVENTS_OVERAGE, 5, 1, 1000, 1000)]


# --- Redis restarted empty: what the gateway must not forget --------------------------------------


def test_quota_still_holds_after_redis_restarts_empty(
    private_redis_settings, tmp_path, stream_api, bob_subscribed
):
    """A month's quota of 10 events ("stop"). 6 delivered (and recorded by analytics); Redis
    restarts empty (no persistence) while the connection stays open; of 10 more events only
    the 4 left in the quota may be delivered: the month's usage is in analytics, and the
    quota's overshoot is 0 (gateway.throttling: ``seed`` brings the counters up to analytics
    "in case Redis lost them (a restart)")."""
    redis_server = private_redis_settings
    set_plan(bob_subscribed.subscription.plan, quota_events=10, quota_action=BusinessPlan.QuotaAction.STOP)
    server = gateway_start(tmp_path / "gateway.log", REDIS_URL=redis_server.url(6))
    url = ws_url(server, stream_api.slug, bob_subscribed.secret)

    async def scenario() -> Collector:
        client = Collector(await connect(url)).start()
        await publish(stream_api.slug, range(6))
        assert await until(lambda: len(client.events) == 6), client.frames
        recorded = await asyncio.to_thread(
            wait_usage, bob_subscribed.subscription, {"events": 6, "throttled": 0}
        )
        assert recorded == {"events": 6, "throttled": 0}
        redis_server.kill()
        redis_server.start()
        await publish(stream_api.slug, range(6, 16))
        await quiet([client])
        await client.stop()
        return client

    try:
        client = asyncio.run(scenario())
        print(
            f"\nquota 10 after an empty Redis restart: delivered {client.numbers()}, notices {client.notices}"
        )
        delivered = len(client.events)
        assert delivered <= 10, f"quota overshoot of {delivered - 10} events after a Redis restart"
        assert client.numbers() == list(range(10))
        assert [notice["limit"] for notice in client.notices] == ["quota"]
        gateway_assert_idle(server)
    finally:
        server.stop()
    assert_no_traceback(server)


def test_connection_slots_held_before_a_redis_restart_are_counted_again(private_redis_settings, monkeypatch):
    """max_connections = 1; one connection holds its slot; Redis restarts empty. Within a few
    heartbeats of the process holding it, the slot is back and a second connection is refused
    (``ConnectionSlots``: "members are refreshed every SLOT_HEARTBEAT_SECONDS"), in a real
    Redis, in this process (heartbeat shortened to 0.2 s)."""
    monkeypatch.setattr(throttling, "SLOT_HEARTBEAT_SECONDS", 0.2)
    redis_server = private_redis_settings
    policy = Policy(plan_id=1, plan_name="Solo", max_connections=1)

    async def scenario() -> dict:
        slots = throttling.ConnectionSlots()
        outcome: dict = {}
        try:
            held, _ = await slots.admit(policy, 9001, 9002)
            outcome["before"] = await slots.admit(policy, 9001, 9002)
            redis_server.kill()
            redis_server.start()
            await asyncio.sleep(1.0)  # five heartbeats of 0.2 s
            member, refusal = await slots.admit(policy, 9001, 9002)
            outcome["after"] = (member is not None, refusal)
            slots.release(member)
            slots.release(held)
            await asyncio.sleep(0.1)
        finally:
            if slots._heartbeat is not None:
                slots._heartbeat.cancel()
            if slots._client is not None:
                await slots._client.aclose()
        return outcome

    outcome = asyncio.run(scenario())
    reason = "plan 'Solo' allows 1 concurrent connection per subscription"
    assert outcome["before"] == (None, reason)
    assert outcome["after"] == (False, reason), "the open connection's slot was never given back to Redis"


def test_connection_slot_sets_outlive_their_open_connections(private_redis_settings, monkeypatch):
    """A subscription's slot set must live as long as its connections do: each heartbeat of the
    process holding them must keep the set from expiring. The set's expiry is set only at an
    admission (SLOT_TTL_SECONDS + 60 s): measured here with a 0.2 s heartbeat, the set's
    remaining life must not shrink between heartbeats (else the set, and with it the limit,
    is gone ~150 s after the last handshake while the connections stay open)."""
    import redis

    monkeypatch.setattr(throttling, "SLOT_HEARTBEAT_SECONDS", 0.2)
    redis_server = private_redis_settings
    policy = Policy(plan_id=1, plan_name="Solo", max_connections=1)
    key = throttling.slot_keys(9101, 9102)[0]
    client = redis.Redis.from_url(redis_server.url(6))

    async def scenario() -> tuple[int, int]:
        slots = throttling.ConnectionSlots()
        try:
            held, _ = await slots.admit(policy, 9101, 9102)
            first = client.pttl(key)
            await asyncio.sleep(1.5)  # seven heartbeats
            later = client.pttl(key)
            slots.release(held)
            await asyncio.sleep(0.1)
        finally:
            if slots._heartbeat is not None:
                slots._heartbeat.cancel()
            if slots._client is not None:
                await slots._client.aclose()
        return first, later

    try:
        first, later = asyncio.run(scenario())
    finally:
        client.close()
    print(f"\nslot set PTTL right after admission {first} ms, 1.5 s later {later} ms")
    assert later >= first - 500, (
        f"the slot set's expiry is not refreshed by heartbeats ({first} → {later} ms)"
    )
