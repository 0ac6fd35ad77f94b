"""Throttling policies end to end on one gateway process (docs/throttling.md, gateway.throttling).

A real server process (``manage.py serve``, the ``gateway_server`` fixture), real ``websockets``
and SSE clients, events published to the real RabbitMQ through ``gateway.publishing``, counters
in the real Redis, usage flushed to analytics every 0.5 s. The plan of ``bob_subscribed`` (Free)
is the subscription's policy; it is set before the first handshake (a grant keeps its policy).

Every figure is exact: with a limit of N, N events are delivered, the client gets ONE notice
(``{"type": "throttled", "limit": ...}``) and nothing after it. The multi-process bounds
(overshoot 0, undershoot) are tests/gateway/test_throttling_processes.py's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import pytest
import websockets
from django.db.models import Sum
from websockets.asyncio.client import ClientConnection, connect

from analytics.models import UsageRecord
from gateway.publishing import EventPublisher
from gateway.throttling import billing_period, period_end
from portal.models import APIKey, BusinessPlan, Subscription
from tests.factories import (
    APIFactory,
    APIVersionFactory,
    ApplicationFactory,
    BusinessPlanFactory,
    ChannelFactory,
    OperationFactory,
    SubscriptionFactory,
)
from tests.fixtures.servers import sse_open

pytestmark = pytest.mark.e2e

# Seconds without a frame after which a client is taken to have received everything sent to it.
SILENCE = 1.2
VERSION = "1.0.0"


# --- helpers ---------------------------------------------------------------------------------


def plan_set(subscription: Subscription, **fields: Any) -> BusinessPlan:
    """Set throttling ``fields`` on ``subscription``'s business plan (saved); returns the plan.
    Call before the subscription's first handshake: a grant carries the policy it was given."""
    plan = subscription.plan
    for name, value in fields.items():
        setattr(plan, name, value)
    plan.save()
    return plan


def ws_url(server, slug: str, secret: str, address: str | None = "prices/ACME") -> str:
    """The WebSocket URL of ``address`` (None: multiplexed mode) of API ``slug`` 1.0.0."""
    path = f"/ws/{slug}/{VERSION}" + (f"/{address}" if address else "")
    return f"{server.ws_url}{path}?access_token={secret}"


@dataclasses.dataclass
class Received:
    """What one WebSocket client got until ``SILENCE`` (or the close): event frames (raw text
    and parsed), throttling notices, ack and error frames, and the close (code, reason)."""

    frames: list[str] = dataclasses.field(default_factory=list)
    events: list[dict] = dataclasses.field(default_factory=list)
    notices: list[dict] = dataclasses.field(default_factory=list)
    acks: list[dict] = dataclasses.field(default_factory=list)
    errors: list[dict] = dataclasses.field(default_factory=list)
    order: list[str] = dataclasses.field(default_factory=list)  # "event" | "throttled" | "ack" | "error"
    closed: tuple[int, str] | None = None

    @property
    def payloads(self) -> list[Any]:
        return [event["payload"] for event in self.events]


async def read_until_silence(
    client: ClientConnection, silence: float = SILENCE, into: Received | None = None
):
    """Read frames until ``silence`` seconds pass without one, or the connection closes."""
    received = into or Received()
    while True:
        try:
            text = await asyncio.wait_for(client.recv(), timeout=silence)
        except TimeoutError:
            return received
        except websockets.ConnectionClosed as closed:
            rcvd = closed.rcvd
            received.closed = (rcvd.code, rcvd.reason) if rcvd else (1006, "")
            return received
        frame = json.loads(text)
        kind = frame.get("type", "event")
        received.order.append(kind)
        if kind == "event":
            received.frames.append(text)
            received.events.append(frame)
        elif kind == "throttled":
            received.notices.append(frame)
        elif kind == "ack":
            received.acks.append(frame)
        elif kind == "error":
            received.errors.append(frame)
        else:
            raise AssertionError(f"unexpected frame {text!r}")


async def handshake_refusal(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """Open ``url`` and return the (code, reason) it is closed with at once (the refusal
    contract: accepted, then closed). Fails if a frame comes instead."""
    async with connect(url) as client:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            frame = await asyncio.wait_for(client.recv(), timeout=timeout)
            raise AssertionError(f"a frame came instead of a refusal: {frame!r}")
    rcvd = closed.value.rcvd
    assert rcvd is not None
    return rcvd.code, rcvd.reason


async def publish(publisher: EventPublisher, slug: str, numbers, address: str = "prices/ACME") -> list[str]:
    """Publish ``{"n": n}`` for each n of ``numbers`` on ``address``; returns the event ids."""
    return [
        await publisher.publish(api=slug, version=VERSION, address=address, payload={"n": n}) for n in numbers
    ]


def usage_totals(subscription: Subscription, direction: str = "out") -> dict[str, int]:
    """Sums of the subscription's usage rows of ``direction``: events, bytes, throttled_*."""
    totals = UsageRecord.objects.filter(subscription=subscription, direction=direction).aggregate(
        events=Sum("events"),
        bytes=Sum("bytes"),
        throttled_events=Sum("throttled_events"),
        throttled_bytes=Sum("throttled_bytes"),
    )
    return {name: value or 0 for name, value in totals.items()}


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy or ``timeout`` passes; returns its
    last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def rate_reason(limit: int, unit: str, burst: int = 0) -> str:
    burst_text = f" + {burst:,} burst" if burst else ""
    return f"rate limit of plan 'Free' reached ({limit:,}{burst_text} events per {unit})"


def second_application(bob, api) -> tuple[Subscription, str]:
    """Another application of bob's subscribed to ``api``'s Free plan; (subscription, secret)."""
    application = ApplicationFactory(owner=bob, name="Bob's second app")
    subscription = SubscriptionFactory(application=application, plan=api.plans.get(name="Free"))
    _, secret = APIKey.generate(application=application)
    return subscription, secret


# --- 1. exact boundaries per unit ------------------------------------------------------------


@pytest.mark.parametrize("unit", ["second", "minute", "hour", "day", "month"])
def test_rate_limit_delivers_exactly_n_per_unit_then_one_notice(
    gateway_server, stream_api, bob_subscribed, unit
):
    plan_set(bob_subscribed.subscription, rate_limit_events=3, rate_limit_unit=unit)
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret)

    async def scenario() -> tuple[Received, Received | None]:
        async with EventPublisher() as publisher, connect(url) as client:
            await publish(publisher, stream_api.slug, range(5))
            first = await read_until_silence(client)
            if unit != "second":
                return first, None
            # The window resets one second after it started: wait for the notice's resets_at.
            assert first.notices, first
            await asyncio.sleep(max(0.0, first.notices[0]["resets_at"] - time.time()) + 0.05)
            await publish(publisher, stream_api.slug, range(5, 9))
            return first, await read_until_silence(client)

    first, after_reset = asyncio.run(scenario())
    assert first.payloads == [{"n": 0}, {"n": 1}, {"n": 2}], gateway_server.log()
    assert first.order == ["event", "event", "event", "throttled"]
    notice = first.notices[0]
    assert set(notice) == {"type", "limit", "reason", "retry_after", "resets_at"}
    assert (notice["type"], notice["limit"], notice["reason"]) == ("throttled", "rate", rate_reason(3, unit))
    assert first.closed is None
    if unit == "second":
        assert notice["retry_after"] == 1
        assert after_reset is not None
        assert after_reset.payloads == [{"n": 5}, {"n": 6}, {"n": 7}]
        assert after_reset.order == ["event", "event", "event", "throttled"]
        assert after_reset.notices[0]["limit"] == "rate"


def test_a_burst_is_cut_at_exactly_n_in_publication_order(gateway_server, stream_api, bob_subscribed):
    """50 per minute (leases of one event), 60 events published back to back: events 0-49 in
    order, one notice, nothing after. A later event never takes the allowance of an earlier one
    (gateway.delivery), so no event goes missing in the middle."""
    plan_set(bob_subscribed.subscription, rate_limit_events=50)
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret)

    async def scenario() -> Received:
        async with EventPublisher() as publisher, connect(url) as client:
            await publish(publisher, stream_api.slug, range(60))
            return await read_until_silence(client)

    received = asyncio.run(scenario())
    assert [payload["n"] for payload in received.payloads] == list(range(50)), received.order
    assert received.order == ["event"] * 50 + ["throttled"]
    wait_for(lambda: usage_totals(bob_subscribed.subscription)["throttled_events"] == 10)
    totals = usage_totals(bob_subscribed.subscription)
    assert (totals["events"], totals["throttled_events"]) == (50, 10)


def test_connections_of_one_subscription_share_the_rate_without_gaps(
    gateway_server, stream_api, bob_subscribed
):
    """5 connections of one application, 50 per minute (leases of one event), 20 events: 100
    deliveries, 50 made. Which connection gets how many depends on who asks first, but each gets
    a gap-free prefix (events 0..k in order) and then one notice: an event is never stopped
    while a later one of the same connection is delivered, and never silently."""
    plan_set(bob_subscribed.subscription, rate_limit_events=50)
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret)

    async def scenario() -> list[Received]:
        clients = [await connect(url) for _ in range(5)]
        try:
            async with EventPublisher() as publisher:
                await publish(publisher, stream_api.slug, range(20))
                return list(await asyncio.gather(*(read_until_silence(client) for client in clients)))
        finally:
            for client in clients:
                await client.close()

    received = asyncio.run(scenario())
    got = [[payload["n"] for payload in one.payloads] for one in received]
    details = "; ".join(
        f"{numbers} + {len(one.notices)} notice(s)" for numbers, one in zip(got, received, strict=True)
    )
    assert sum(len(numbers) for numbers in got) == 50, details
    for numbers, one in zip(got, received, strict=True):
        assert numbers == list(range(len(numbers))), details
        # A connection that got all 20 had nothing stopped: no notice.
        notice = ["throttled"] if len(numbers) < 20 else []
        assert one.order == ["event"] * len(numbers) + notice, details
    wait_for(lambda: usage_totals(bob_subscribed.subscription)["throttled_events"] == 50)
    totals = usage_totals(bob_subscribed.subscription)
    assert (totals["events"], totals["throttled_events"]) == (50, 50)


def test_rate_window_end_is_exact_and_events_flow_right_after_it(gateway_server, stream_api, bob_subscribed):
    """3 per minute. The notice's ``resets_at`` is when the window really ends (the Redis key's
    expiry, to the millisecond), and a client that waits for it gets events again at once.

    To not wait a minute, the window (started by the handshake's first lease) is shortened to
    2.3 s in Redis right after the handshake: the state a connection is in 57.7 s into it."""
    import redis
    from django.conf import settings

    plan_set(bob_subscribed.subscription, rate_limit_events=3, rate_limit_unit="minute")
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret)
    client_redis = redis.Redis.from_url(settings.REDIS_URL)
    key = f"LIMITS:eventgate/sub/{bob_subscribed.subscription.pk}/rate/3/1/minute"

    async def scenario() -> tuple[float, Received, Received, Received]:
        async with EventPublisher() as publisher, connect(url) as client:
            assert client_redis.exists(key), "the handshake's lease starts the window"
            client_redis.pexpire(key, 2300)
            window_end = time.time() + 2.3
            await publish(publisher, stream_api.slug, range(4))
            first = await read_until_silence(client, silence=0.5)
            # A client that obeys the notice: back when it says the window resets.
            resets_at = first.notices[0]["resets_at"] if first.notices else window_end
            await asyncio.sleep(max(0.0, resets_at - time.time()) + 0.05)
            await publish(publisher, stream_api.slug, [4])
            retried = await read_until_silence(client, silence=0.3)
            # The old window has certainly ended in Redis now (n=4, if delivered, started the
            # next one).
            await asyncio.sleep(max(0.0, window_end - time.time()) + 0.2)
            await publish(publisher, stream_api.slug, range(5, 8))
            after = await read_until_silence(client, silence=0.5)
            return window_end, first, retried, after

    window_end, first, retried, after = asyncio.run(scenario())
    assert first.payloads == [{"n": 0}, {"n": 1}, {"n": 2}], gateway_server.log()
    assert first.order == ["event", "event", "event", "throttled"]
    notice = first.notices[0]
    details = (
        f"window end {window_end:.3f}; first notice {notice}; at its resets_at: {retried.order} "
        f"{retried.notices}; after the window end: {after.order} {after.notices}"
    )
    assert abs(notice["resets_at"] - window_end) < 0.1, details
    # n=4 was published when the notice said the window resets: stopped if that was still in
    # the old window, else the new window's first. Either way the new window delivers 3.
    delivered = [payload["n"] for payload in retried.payloads + after.payloads]
    assert delivered in ([5, 6, 7], [4, 5, 6]), details


# --- 2. burst -----------------------------------------------------------------------------------


def test_burst_allows_rate_plus_burst_in_the_first_window(gateway_server, stream_api, bob_subscribed):
    """2 per minute + 3 burst: 5 in the first minute (the sustained item, 20 per 10 minutes,
    still has room), then the "rate" item stops the 6th."""
    plan_set(bob_subscribed.subscription, rate_limit_events=2, rate_limit_unit="minute", burst_events=3)
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret)

    async def scenario() -> Received:
        async with EventPublisher() as publisher, connect(url) as client:
            await publish(publisher, stream_api.slug, range(8))
            return await read_until_silence(client)

    received = asyncio.run(scenario())
    assert received.payloads == [{"n": n} for n in range(5)], gateway_server.log()
    assert received.order == ["event"] * 5 + ["throttled"]
    assert received.notices[0]["limit"] == "rate"
    assert received.notices[0]["reason"] == rate_reason(2, "minute", burst=3)


# --- 3. bytes quota -------------------------------------------------------------------------------


def test_bytes_quota_stops_after_three_frames_and_refuses_new_handshakes(
    gateway_server, stream_api, bob_subscribed, bob
):
    # A frame's size, measured on another subscription (its own counters) before any limit.
    probe_subscription, probe_secret = second_application(bob, stream_api)

    async def measure() -> int:
        url = ws_url(gateway_server, stream_api.slug, probe_secret)
        async with EventPublisher() as publisher, connect(url) as client:
            await publish(publisher, stream_api.slug, [0])
            return len((await asyncio.wait_for(client.recv(), timeout=10)).encode())

    size = asyncio.run(measure())
    # Frames differ by a byte or two (the publication time's digits): 3.5 frames is 3 of them.
    quota = 3 * size + size // 2
    plan_set(bob_subscribed.subscription, quota_bytes=quota)
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret)

    async def scenario() -> tuple[Received, tuple[int, str]]:
        async with EventPublisher() as publisher, connect(url) as client:
            await publish(publisher, stream_api.slug, range(5))
            received = await read_until_silence(client)
        return received, await handshake_refusal(url)

    received, (code, reason) = asyncio.run(scenario())
    assert received.payloads == [{"n": 0}, {"n": 1}, {"n": 2}], gateway_server.log()
    assert received.order == ["event", "event", "event", "throttled"]
    notice = received.notices[0]
    expected = f"bytes quota of plan 'Free' used up this month ({quota:,} bytes)"
    assert (notice["limit"], notice["reason"]) == ("bytes", expected)
    assert code == 4429
    assert reason.startswith(expected), reason
    # The quota is the calendar month's: it resets when the billing period ends.
    assert notice["resets_at"] == period_end(billing_period()), notice
    wait_for(lambda: usage_totals(bob_subscribed.subscription)["throttled_events"] == 2)
    totals = usage_totals(bob_subscribed.subscription)
    assert (totals["events"], totals["bytes"]) == (3, sum(len(frame.encode()) for frame in received.frames))
    assert totals["throttled_events"] == 2


# --- 4. events quota -------------------------------------------------------------------------------


def test_events_quota_stops_after_three_events_and_refuses_new_handshakes(
    gateway_server, stream_api, bob_subscribed
):
    plan_set(bob_subscribed.subscription, quota_events=3, quota_action="stop")
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret)
    expected = "events quota of plan 'Free' used up this month (3 events)"

    async def scenario() -> tuple[Received, tuple[int, str]]:
        async with EventPublisher() as publisher, connect(url) as client:
            await publish(publisher, stream_api.slug, range(5))
            received = await read_until_silence(client)
        return received, await handshake_refusal(url)

    received, (code, reason) = asyncio.run(scenario())
    assert received.payloads == [{"n": 0}, {"n": 1}, {"n": 2}], gateway_server.log()
    assert received.order == ["event", "event", "event", "throttled"]
    notice = received.notices[0]
    assert (notice["limit"], notice["reason"]) == ("quota", expected)
    # The audit (every 0.5 s) closes the open connection once the flushed usage shows the quota.
    assert received.closed in (None, (4429, expected)), received.closed
    assert code == 4429 and reason.startswith(expected), reason
    assert notice["resets_at"] == period_end(billing_period()), notice


# --- 5. directions ----------------------------------------------------------------------------------


async def ask(client: ClientConnection, frame: dict) -> dict:
    """Send a multiplexed control frame; return its reply (ack or error)."""
    await client.send(json.dumps(frame))
    while True:
        reply = json.loads(await asyncio.wait_for(client.recv(), timeout=10))
        if reply.get("type") in ("ack", "error") and reply.get("id") == frame["id"]:
            return reply


def order_frame(n: int) -> dict:
    return {
        "type": "publish",
        "channel": "orders",
        "payload": {"symbol": "ACME", "quantity": n},
        "id": f"o{n}",
    }


def test_both_directions_share_the_rate(gateway_server, stream_api, bob_subscribed):
    """counted_directions "both", 3 per minute: 2 sent + 1 received use the 3; then a sent event
    gets an error frame 4429 and a received one is stopped with a notice."""
    plan_set(bob_subscribed.subscription, rate_limit_events=3, counted_directions="both")
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret, address=None)

    async def scenario() -> tuple[list[dict], Received, dict, Received]:
        async with EventPublisher() as publisher, connect(url) as client:
            subscribed = await ask(client, {"type": "subscribe", "channel": "prices/ACME", "id": "s"})
            assert subscribed == {"type": "ack", "id": "s", "channel": "prices/ACME"}
            replies = [await ask(client, order_frame(n)) for n in (1, 2)]
            await publish(publisher, stream_api.slug, [0])
            delivered = await read_until_silence(client)
            refused = await ask(client, order_frame(3))
            await publish(publisher, stream_api.slug, [1, 2])
            stopped = await read_until_silence(client)
            return replies, delivered, refused, stopped

    replies, delivered, refused, stopped = asyncio.run(scenario())
    assert [reply["type"] for reply in replies] == ["ack", "ack"], replies
    assert delivered.payloads == [{"n": 0}] and delivered.order == ["event"], gateway_server.log()
    assert refused["type"] == "error" and refused["code"] == 4429, refused
    assert (refused["id"], refused["channel"]) == ("o3", "orders")
    assert refused["reason"].startswith(rate_reason(3, "minute") + "; retry after "), refused
    assert stopped.order == ["throttled"] and stopped.notices[0]["limit"] == "rate"
    wait_for(lambda: usage_totals(bob_subscribed.subscription, "in")["throttled_events"] == 1)
    assert usage_totals(bob_subscribed.subscription, "in")["events"] == 2
    assert usage_totals(bob_subscribed.subscription, "in")["throttled_events"] == 1


def test_counting_out_only_never_counts_sends(gateway_server, stream_api, bob_subscribed):
    plan_set(bob_subscribed.subscription, rate_limit_events=3, counted_directions="out")
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret, address=None)

    async def scenario() -> tuple[list[dict], Received]:
        async with EventPublisher() as publisher, connect(url) as client:
            await ask(client, {"type": "subscribe", "channel": "prices/ACME", "id": "s"})
            replies = [await ask(client, order_frame(n)) for n in range(1, 6)]
            await publish(publisher, stream_api.slug, range(5))
            return replies, await read_until_silence(client)

    replies, received = asyncio.run(scenario())
    assert [reply["type"] for reply in replies] == ["ack"] * 5, replies
    assert received.payloads == [{"n": 0}, {"n": 1}, {"n": 2}], gateway_server.log()
    assert received.order == ["event", "event", "event", "throttled"]


def test_counting_in_only_never_counts_deliveries(gateway_server, stream_api, bob_subscribed):
    plan_set(bob_subscribed.subscription, rate_limit_events=3, counted_directions="in")
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret, address=None)

    async def scenario() -> tuple[Received, list[dict]]:
        async with EventPublisher() as publisher, connect(url) as client:
            await ask(client, {"type": "subscribe", "channel": "prices/ACME", "id": "s"})
            await publish(publisher, stream_api.slug, range(5))
            received = await read_until_silence(client)
            replies = [await ask(client, order_frame(n)) for n in range(1, 6)]
            return received, replies

    received, replies = asyncio.run(scenario())
    assert received.payloads == [{"n": n} for n in range(5)], gateway_server.log()
    assert received.order == ["event"] * 5
    assert [reply["type"] for reply in replies] == ["ack", "ack", "ack", "error", "error"], replies
    assert {reply["code"] for reply in replies[3:]} == {4429}


# --- 6. reconnecting ---------------------------------------------------------------------------------


def test_reconnecting_does_not_reset_the_window(gateway_server, stream_api, bob_subscribed):
    plan_set(bob_subscribed.subscription, rate_limit_events=3)
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret)

    async def scenario() -> tuple[Received, Received]:
        async with EventPublisher() as publisher:
            async with connect(url) as client:
                await publish(publisher, stream_api.slug, range(3))
                first = await read_until_silence(client)
            async with connect(url) as client:
                await publish(publisher, stream_api.slug, [3])
                second = await read_until_silence(client)
            return first, second

    first, second = asyncio.run(scenario())
    assert first.payloads == [{"n": 0}, {"n": 1}, {"n": 2}] and first.order == ["event"] * 3
    assert second.order == ["throttled"], gateway_server.log()
    assert second.notices[0]["limit"] == "rate"


# --- 7. what shares a bucket --------------------------------------------------------------------------


def test_two_applications_of_one_owner_have_their_own_buckets(
    gateway_server, stream_api, bob_subscribed, bob
):
    plan_set(bob_subscribed.subscription, rate_limit_events=3)
    _, other_secret = second_application(bob, stream_api)
    urls = [
        ws_url(gateway_server, stream_api.slug, secret) for secret in (bob_subscribed.secret, other_secret)
    ]

    async def scenario() -> list[Received]:
        async with EventPublisher() as publisher, connect(urls[0]) as first, connect(urls[1]) as second:
            await publish(publisher, stream_api.slug, range(5))
            return list(await asyncio.gather(read_until_silence(first), read_until_silence(second)))

    for received in asyncio.run(scenario()):
        assert received.payloads == [{"n": 0}, {"n": 1}, {"n": 2}], gateway_server.log()
        assert received.order == ["event", "event", "event", "throttled"]


def test_two_keys_of_one_application_share_its_bucket(gateway_server, stream_api, bob_subscribed):
    plan_set(bob_subscribed.subscription, rate_limit_events=3)
    _, second_secret = APIKey.generate(application=bob_subscribed.application)
    urls = [ws_url(gateway_server, stream_api.slug, s) for s in (bob_subscribed.secret, second_secret)]

    async def scenario() -> list[Received]:
        async with EventPublisher() as publisher, connect(urls[0]) as first, connect(urls[1]) as second:
            await publish(publisher, stream_api.slug, range(5))
            return list(await asyncio.gather(read_until_silence(first), read_until_silence(second)))

    received = asyncio.run(scenario())
    assert sum(len(r.events) for r in received) == 3, (received, gateway_server.log())
    for one in received:
        assert one.order == ["event"] * len(one.events) + ["throttled"], one
        assert one.notices[0]["limit"] == "rate"


# --- 8. throttled events are counted ------------------------------------------------------------------


def test_throttled_deliveries_are_counted_in_usage(gateway_server, stream_api, bob_subscribed):
    """Two connections of one application on prices/ACME, 3 per minute, 5 events: 10
    deliveries, 3 made, 7 stopped, all in the subscription's usage rows."""
    plan_set(bob_subscribed.subscription, rate_limit_events=3)
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret)

    async def scenario() -> list[Received]:
        async with EventPublisher() as publisher, connect(url) as first, connect(url) as second:
            await publish(publisher, stream_api.slug, range(5))
            return list(await asyncio.gather(read_until_silence(first), read_until_silence(second)))

    received = asyncio.run(scenario())
    frames = [frame for one in received for frame in one.frames]
    assert len(frames) == 3, gateway_server.log()
    totals = wait_for(
        lambda: (t := usage_totals(bob_subscribed.subscription))["throttled_events"] == 7 and t, timeout=10
    )
    assert totals, (usage_totals(bob_subscribed.subscription), gateway_server.log())
    assert (totals["events"], totals["bytes"]) == (3, sum(len(frame.encode()) for frame in frames))
    assert totals["throttled_events"] == 7
    # Throttled frames are as large as delivered ones, to a byte or two (publication time digits).
    sizes = [len(frame.encode()) for frame in frames]
    assert 7 * (min(sizes) - 2) <= totals["throttled_bytes"] <= 7 * (max(sizes) + 2), totals
    rows = UsageRecord.objects.filter(subscription=bob_subscribed.subscription)
    assert {(row.channel, row.direction) for row in rows} == {("prices/{symbol}", "out")}


# --- 9. limit_notice "close" ----------------------------------------------------------------------------


def test_close_notice_closes_with_4429_and_refuses_new_handshakes(gateway_server, stream_api, bob_subscribed):
    plan_set(bob_subscribed.subscription, rate_limit_events=3, limit_notice="close")
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret)
    prefix = rate_reason(3, "minute") + "; retry after "

    async def scenario() -> tuple[Received, tuple[int, str]]:
        async with EventPublisher() as publisher, connect(url) as client:
            await publish(publisher, stream_api.slug, range(5))
            received = await read_until_silence(client, silence=5)
        return received, await handshake_refusal(url)

    received, (code, reason) = asyncio.run(scenario())
    assert received.payloads == [{"n": 0}, {"n": 1}, {"n": 2}], gateway_server.log()
    assert received.order == ["event"] * 3
    assert received.closed is not None and received.closed[0] == 4429, received.closed
    assert received.closed[1].startswith(prefix) and received.closed[1].endswith(" s"), received.closed
    assert 0 < int(received.closed[1].removeprefix(prefix).removesuffix(" s")) <= 60
    assert code == 4429 and reason.startswith(prefix), reason


# --- 10. SSE -----------------------------------------------------------------------------------------


def test_sse_stream_gets_three_events_then_one_throttled_event(gateway_server, stream_api, bob_subscribed):
    plan_set(bob_subscribed.subscription, rate_limit_events=3)
    path = f"/sse/{stream_api.slug}/{VERSION}/prices/ACME?access_token={bob_subscribed.secret}"

    async def scenario() -> list:
        async with EventPublisher() as publisher:
            stream = await sse_open(gateway_server.url, path)
            try:
                assert stream.status == 200
                await publish(publisher, stream_api.slug, range(5))
                events = []
                while True:
                    try:
                        events.append(await stream.next_event(timeout=SILENCE))
                    except TimeoutError:
                        return events
            finally:
                await stream.close()

    events = asyncio.run(scenario())
    assert [event.event for event in events] == ["message"] * 3 + ["eventgate.throttled"], events
    assert [json.loads(event.data)["payload"] for event in events[:3]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    notice = json.loads(events[3].data)
    assert (notice["type"], notice["limit"], notice["reason"]) == (
        "throttled",
        "rate",
        rate_reason(3, "minute"),
    )


def test_sse_resume_takes_the_replay_from_the_rate_limit(gateway_server, stream_api, bob_subscribed):
    """3 per minute: 3 events, then the notice. A resume with ``Last-Event-ID`` of the first
    event would replay the 4 held after it; the window is used up, so the replay stops at once:
    only the notice, nothing replayed, and the replayed events count as throttled."""
    plan_set(bob_subscribed.subscription, rate_limit_events=3)
    path = f"/sse/{stream_api.slug}/{VERSION}/prices/ACME?access_token={bob_subscribed.secret}"

    async def read(stream) -> list:
        events = []
        while True:
            try:
                events.append(await stream.next_event(timeout=SILENCE))
            except TimeoutError:
                return events

    async def scenario() -> tuple[list, list]:
        async with EventPublisher() as publisher:
            stream = await sse_open(gateway_server.url, path)
            try:
                await publish(publisher, stream_api.slug, range(5))
                first = await read(stream)
            finally:
                await stream.close()
            resumed = await sse_open(gateway_server.url, path, headers={"Last-Event-ID": first[0].id})
            try:
                assert resumed.status == 200
                return first, await read(resumed)
            finally:
                await resumed.close()

    first, resumed = asyncio.run(scenario())
    assert [event.event for event in first] == ["message"] * 3 + ["eventgate.throttled"], first
    assert [event.event for event in resumed] == ["eventgate.throttled"], resumed
    # 2 stopped live, then the 4 held after the first event stopped in the replay.
    wait_for(lambda: usage_totals(bob_subscribed.subscription)["throttled_events"] == 6)
    assert usage_totals(bob_subscribed.subscription)["events"] == 3


# --- 11. connection duration -------------------------------------------------------------------------


def test_connection_duration_limit_closes_with_4408_and_reconnect_works(
    gateway_server, stream_api, bob_subscribed
):
    # One connection at a time: the reconnect right after 4408 must find the slot free.
    plan_set(bob_subscribed.subscription, max_connection_seconds=1, max_connections=1)
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret)

    async def scenario() -> tuple[Received, Received]:
        async with connect(url) as client:
            closed = await read_until_silence(client, silence=5)
        async with EventPublisher() as publisher, connect(url) as client:
            await publish(publisher, stream_api.slug, [7])
            event = json.loads(await asyncio.wait_for(client.recv(), timeout=5))
            again = await read_until_silence(client, silence=5)
        return closed, Received(events=[event], closed=again.closed)

    closed, reconnected = asyncio.run(scenario())
    assert closed.closed == (4408, "Connection duration limit reached (1 s); reconnect to continue.")
    assert reconnected.payloads == [{"n": 7}], gateway_server.log()
    assert reconnected.closed == (4408, "Connection duration limit reached (1 s); reconnect to continue.")


# --- 12. concurrent connections ------------------------------------------------------------------------


async def accepted(url: str, timeout: float = 10.0) -> tuple[ClientConnection, list[tuple[int, str]]]:
    """Connect to ``url`` until a handshake is not refused (a refusal closes at once); returns
    the open client (close it) and the refusals seen meanwhile."""
    refusals = []
    deadline = time.monotonic() + timeout
    while True:
        client = await connect(url)
        try:
            await asyncio.wait_for(client.recv(), timeout=0.3)
        except TimeoutError:
            return client, refusals
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None
            refusals.append((closed.rcvd.code, closed.rcvd.reason))
        await client.close()
        if time.monotonic() > deadline:
            raise AssertionError(f"every handshake refused: {refusals[-3:]}")
        await asyncio.sleep(0.05)


def test_max_connections_per_subscription(gateway_server, stream_api, bob_subscribed):
    plan_set(bob_subscribed.subscription, max_connections=1)
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret)
    _, other_secret = APIKey.generate(application=bob_subscribed.application)
    other_url = ws_url(gateway_server, stream_api.slug, other_secret)

    async def scenario():
        async with connect(url) as first:
            refused = [await handshake_refusal(url), await handshake_refusal(other_url)]
            await publish_one_and_receive(first)
        client, _ = await accepted(other_url)  # the slot is given back asynchronously
        try:
            await publish_one_and_receive(client)
        finally:
            await client.close()
        return refused

    async def publish_one_and_receive(client: ClientConnection) -> None:
        async with EventPublisher() as publisher:
            await publish(publisher, stream_api.slug, [1])
            assert json.loads(await asyncio.wait_for(client.recv(), timeout=5))["payload"] == {"n": 1}

    refused = asyncio.run(scenario())
    reason = "plan 'Free' allows 1 concurrent connection per subscription"
    assert refused == [(4429, reason), (4429, reason)], gateway_server.log()


def test_sse_refused_for_a_connection_limit_names_it(gateway_server, stream_api, bob_subscribed):
    plan_set(bob_subscribed.subscription, max_connections=1)
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret)
    path = f"/sse/{stream_api.slug}/{VERSION}/prices/ACME?access_token={bob_subscribed.secret}"

    async def scenario() -> tuple[int, dict[str, str], dict]:
        async with connect(url):
            stream = await sse_open(gateway_server.url, path)
            try:
                return stream.status, stream.headers, json.loads(await stream.body())
            finally:
                await stream.close()

    status, headers, body = asyncio.run(scenario())
    assert status == 429 and headers["retry-after"] == "5"
    assert body == {
        "error": "connection_limit",
        "detail": "plan 'Free' allows 1 concurrent connection per subscription",
        "close_code": 4429,
    }


def test_max_connections_per_application_spans_its_subscriptions(
    gateway_server, stream_api, bob_subscribed, alice
):
    plan_set(bob_subscribed.subscription, max_connections_per_application=2)
    other_api = APIFactory(provider=alice, name="Other stream", slug=f"{stream_api.slug}-b")
    version = APIVersionFactory(api=other_api, version=VERSION)
    OperationFactory(channel=ChannelFactory(api_version=version, key="prices", address="prices/{symbol}"))
    other_plan = BusinessPlanFactory(api=other_api, name="Free", max_connections_per_application=2)
    SubscriptionFactory(application=bob_subscribed.application, plan=other_plan)
    first_url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret)
    other_url = ws_url(gateway_server, other_api.slug, bob_subscribed.secret)

    async def scenario() -> list[tuple[int, str]]:
        async with connect(first_url) as one, connect(other_url) as two:
            refused = [await handshake_refusal(first_url), await handshake_refusal(other_url)]
            for client in (one, two):
                assert (await read_until_silence(client, silence=0.3)).closed is None
        return refused

    reason = "plan 'Free' allows 2 concurrent connections per application"
    assert asyncio.run(scenario()) == [(4429, reason), (4429, reason)], gateway_server.log()


# --- 13. overage ------------------------------------------------------------------------------------------


def test_overage_keeps_delivering_past_the_quota_and_meters_everything(
    gateway_server, stream_api, bob_subscribed
):
    plan_set(bob_subscribed.subscription, quota_events=2, quota_action="overage")
    url = ws_url(gateway_server, stream_api.slug, bob_subscribed.secret)

    async def scenario() -> Received:
        async with EventPublisher() as publisher, connect(url) as client:
            await publish(publisher, stream_api.slug, range(4))
            return await read_until_silence(client)

    received = asyncio.run(scenario())
    assert received.payloads == [{"n": n} for n in range(4)], gateway_server.log()
    assert received.order == ["event"] * 4 and received.closed is None
    totals = wait_for(lambda: (t := usage_totals(bob_subscribed.subscription))["events"] == 4 and t)
    assert totals and (totals["events"], totals["throttled_events"]) == (4, 0), usage_totals(
        bob_subscribed.subscription
    )
