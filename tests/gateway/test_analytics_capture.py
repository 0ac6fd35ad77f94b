"""Analytics capture end to end (issue 7): known traffic through a real gateway process, every
count, byte total, latency bucket, connection and handshake asserted exactly.

Scenario: 10 events of known sizes published on ``prices/ACME`` (3 on ``prices/GLOBEX``, which
nobody receives) with a publish timestamp 0.21 s in the past, to four subscribers of three
consumers: two WebSocket clients (closing with 1000 and 3001), one SSE stream (the client just
goes away) and one whose plan's quota stops after 4 events; one client event rejected (the
channel has no send operation); one handshake refused for a bad key.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from websockets.asyncio.client import connect

from analytics import live
from analytics.models import ConnectionRecord, HandshakeRecord
from analytics.queries import latency_histogram, percentiles, usage_totals
from analytics.services import usage_for_subscription
from gateway.publishing import EventPublisher
from portal.models import APIKey, BusinessPlan
from tests.factories import ApplicationFactory, BusinessPlanFactory, SubscriptionFactory, UserFactory
from tests.fixtures.servers import gateway_start, sse_open
from tests.gateway.test_slow_consumer import small_window_socket

pytestmark = pytest.mark.e2e

TEMPLATE = "prices/{symbol}"
AGENT = "eventgate-test/1.0"
DELAY = 0.21  # seconds between the publish timestamp and the publish: bucket (0.2, 0.3]


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def subscriber(owner, api, name: str, plan=None):
    application = ApplicationFactory(owner=owner, name=name)
    subscription = SubscriptionFactory(application=application, plan=plan or api.plans.get(name="Free"))
    _, secret = APIKey.generate(application=application)
    return application, subscription, secret


@pytest.fixture
def capture_server(transactional_db, tmp_path):
    server = gateway_start(tmp_path / "gateway.log", GATEWAY_LIVE_INTERVAL="0.3")
    try:
        yield server
    finally:
        server.stop()


def test_known_traffic_is_counted_exactly(capture_server, stream_api, bob):
    carol = UserFactory(email="carol@example.com")
    app_a, sub_a, secret_a = subscriber(bob, stream_api, "Bob's board")
    app_b, sub_b, secret_b = subscriber(carol, stream_api, "Carol's board")
    app_c, sub_c, secret_c = subscriber(bob, stream_api, "Bob's SSE feed")
    quota_plan = BusinessPlanFactory(
        api=stream_api, name="Tiny", quota_events=4, quota_action=BusinessPlan.QuotaAction.STOP
    )
    app_t, sub_t, secret_t = subscriber(carol, stream_api, "Carol's tiny app", plan=quota_plan)
    slug, server = stream_api.slug, capture_server
    path = f"/ws/{slug}/1.0.0/prices/ACME?access_token=%s"
    payloads = [{"n": n, "pad": "x" * (n * 37)} for n in range(10)]

    async def scenario() -> dict:
        opened = time.time()
        a = await connect(server.ws_url + path % secret_a, user_agent_header=AGENT)
        b = await connect(server.ws_url + path % secret_b, user_agent_header=AGENT)
        t = await connect(server.ws_url + path % secret_t, user_agent_header=AGENT)
        c = await sse_open(
            server.url, f"/sse/{slug}/1.0.0/prices/ACME?access_token={secret_c}", {"User-Agent": AGENT}
        )
        assert c.status == 200
        refused = await connect(server.ws_url + path % "not-a-key", user_agent_header=AGENT)
        with pytest.raises(Exception) as closed:
            await asyncio.wait_for(refused.recv(), 5)
        assert closed.value.rcvd.code == 4401
        async with EventPublisher() as publisher:
            for payload in payloads:
                await publisher.publish(
                    api=slug,
                    version="1.0.0",
                    address="prices/ACME",
                    payload=payload,
                    published_at=time.time() - DELAY,
                )
            for n in range(3):
                await publisher.publish(api=slug, version="1.0.0", address="prices/GLOBEX", payload=n)
        frames_a = [await asyncio.wait_for(a.recv(), 10) for _ in payloads]
        frames_b = [await asyncio.wait_for(b.recv(), 10) for _ in payloads]
        frames_t = [await asyncio.wait_for(t.recv(), 10) for _ in range(5)]  # 4 events + the notice
        events_c = [await c.next_event() for _ in payloads]
        await a.send(json.dumps({"not": "allowed"}))  # prices/{symbol} has no send operation
        error = json.loads(await asyncio.wait_for(a.recv(), 10))
        assert error["type"] == "error" and error["code"] == 4405
        # While they are open, the live snapshot shows each connection with its counts.
        snapshot = wait_for(
            lambda: [
                found
                for found in live.connections(subscription_ids={sub_a.pk})
                if found["events_out"] == len(payloads)
            ]
        )
        await a.close(1000)
        await b.close(3001, "bye")
        await t.close()
        await c.close()
        return {
            "opened": opened,
            "closed": time.time(),
            "a": frames_a,
            "b": frames_b,
            "t": frames_t,
            "c": [event.data for event in events_c],
            "snapshot": snapshot,
        }

    result = asyncio.run(scenario())
    size = sum(len(frame.encode()) for frame in result["a"])
    assert result["b"] == result["a"]
    assert sum(len(data.encode()) for data in result["c"]) == size

    # The live snapshot, while A was open.
    [snapshot] = result["snapshot"]
    assert snapshot["application"] == "Bob's board" and snapshot["channels"] == [TEMPLATE]
    assert snapshot["bytes_out"] == size and snapshot["protocol"] == "websocket"
    assert snapshot["api"] == slug and snapshot["client_ip"] == "127.0.0.1"

    # Usage: delivered, throttled and rejected, exactly, under the channel template.
    def counts(subscription, direction="out"):
        return usage_totals(subscriptions=[subscription.pk], direction=direction).as_dict()

    expected_a = {"events": 10, "bytes": size, "throttled_events": 0, "throttled_bytes": 0}
    wait_for(lambda: counts(sub_c)["events"] == 10 and counts(sub_a, "in")["rejected_events"] == 1)
    for subscription in (sub_a, sub_b, sub_c):
        assert counts(subscription) | expected_a == counts(subscription), subscription
        assert counts(subscription)["dropped_events"] == counts(subscription)["failed_events"] == 0
    assert counts(sub_a, "in")["rejected_events"] == 1 and counts(sub_a, "in")["events"] == 0
    throttled = counts(sub_t)
    sizes = [len(frame.encode()) for frame in result["a"]]
    assert (throttled["events"], throttled["bytes"]) == (4, sum(sizes[:4]))
    assert (throttled["throttled_events"], throttled["throttled_bytes"]) == (6, sum(sizes[4:]))
    assert usage_totals(subscriptions=[sub_a.pk], channel=TEMPLATE).events == 10
    # Billing reads the same numbers.
    assert usage_for_subscription(subscription=sub_a).events == 10

    # Latency: every delivered event in the histogram, all in the (0.2 s, 0.3 s] bucket.
    for subscription, events in ((sub_a, 10), (sub_c, 10), (sub_t, 4)):
        histogram = latency_histogram(subscriptions=[subscription.pk])[None]
        assert histogram == {300_000: events}, (subscription, histogram)
        assert percentiles(histogram) == {0.5: 0.3, 0.95: 0.3, 0.99: 0.3}

    # Connections: one record each, with close codes, durations and counts.
    assert wait_for(lambda: ConnectionRecord.objects.count() == 4), ConnectionRecord.objects.count()
    records = {record.subscription_id: record for record in ConnectionRecord.objects.all()}
    longest = result["closed"] - result["opened"]
    for subscription, code in ((sub_a, 1000), (sub_b, 3001), (sub_c, None)):
        record = records[subscription.pk]
        assert (record.events_out, record.bytes_out, record.close_code) == (10, size, code), record
        assert record.channels == TEMPLATE and record.client_ip == "127.0.0.1"
        assert record.user_agent == AGENT and record.api_id == stream_api.pk and record.version == "1.0.0"
        assert 0 < record.duration_seconds <= longest
        assert record.duration_seconds == pytest.approx(
            (record.closed_at - record.opened_at).total_seconds(), abs=0.002
        )
    assert records[sub_a.pk].close_reason == "closed by the client"
    assert records[sub_c.pk].protocol == "sse" and records[sub_a.pk].protocol == "websocket"
    assert (records[sub_t.pk].events_out, records[sub_t.pk].throttled_events) == (4, 6)
    assert records[sub_b.pk].application_id == app_b.pk

    # Handshakes: four accepted with their applications, one refused before any credential.
    assert wait_for(lambda: HandshakeRecord.objects.count() == 5)
    accepted = HandshakeRecord.objects.filter(outcome="accepted")
    assert sorted(accepted.values_list("subscription_id", flat=True)) == sorted(
        [sub_a.pk, sub_b.pk, sub_c.pk, sub_t.pk]
    )
    assert set(accepted.values_list("channel", "client_ip", "user_agent")) == {(TEMPLATE, "127.0.0.1", AGENT)}
    assert set(accepted.values_list("protocol", flat=True)) == {"websocket", "sse"}
    # A refusal before any credential still names the API and channel template (from the URL),
    # so the provider sees it; never the raw path.
    refused = HandshakeRecord.objects.exclude(outcome="accepted").get()
    assert refused.channel == TEMPLATE and refused.subscription_id is None
    assert (refused.outcome, refused.code, refused.application_id, refused.api_id) == (
        "invalid_token",
        4401,
        None,
        stream_api.pk,
    )
    assert refused.user_agent == AGENT and refused.client_ip == "127.0.0.1"
    assert "not-a-key" not in refused.channel + refused.detail, "a credential never reaches analytics"

    # Once closed, nothing is live any more.
    assert wait_for(lambda: not live.connections(api_ids={stream_api.pk}), timeout=5)


def test_a_slow_consumer_s_drops_are_counted_exactly(transactional_db, tmp_path, stream_api, bob_subscribed):
    """Events the outbox drops for a client that stopped reading are counted as dropped, the
    rest as delivered: together exactly what was published, on the usage rows and the
    connection's record."""
    server = gateway_start(tmp_path / "gateway.log", GATEWAY_OUTBOX_EVENTS="4")
    published = 1500  # × 12 KB: far more than the socket buffers hold
    url = f"{server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"

    async def scenario() -> list[str]:
        slow = await connect(url, sock=small_window_socket(server.ws_url), max_queue=1)
        async with EventPublisher(confirm=False) as publisher:
            for n in range(published):
                await publisher.publish(
                    api=stream_api.slug,
                    version="1.0.0",
                    address="prices/ACME",
                    payload={"n": n, "pad": "x" * 12000},
                )
        await asyncio.sleep(1)
        frames = []
        while True:
            try:
                frames.append(await asyncio.wait_for(slow.recv(), timeout=2))
            except TimeoutError:
                break
        await slow.close()
        return frames

    try:
        frames = asyncio.run(scenario())
        subscription = bob_subscribed.subscription
        assert 0 < len(frames) < published
        wait_for(lambda: ConnectionRecord.objects.filter(subscription=subscription).exists())
        totals = wait_for(
            lambda: (t := usage_totals(subscriptions=[subscription.pk])).events == len(frames) and t
        )
        assert totals and totals.bytes == sum(len(frame.encode()) for frame in frames)
        assert totals.dropped_events == published - len(frames)
        record = ConnectionRecord.objects.get(subscription=subscription)
        assert (record.events_out, record.dropped_events) == (len(frames), published - len(frames))
    finally:
        server.stop()


def test_sigterm_writes_counts_latency_connections_and_handshakes(tmp_path, stream_api, bob_subscribed):
    """With no periodic flush, an orderly shutdown alone writes everything counted: usage,
    latency, the handshake and the record of the connection the shutdown closed."""
    server = gateway_start(tmp_path / "gateway.log", GATEWAY_FLUSH_INTERVAL="3600")
    path = f"/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"

    async def scenario() -> list[str]:
        client = await connect(server.ws_url + path)
        async with EventPublisher() as publisher:
            for n in range(5):
                await publisher.publish(
                    api=stream_api.slug, version="1.0.0", address="prices/ACME", payload=n
                )
        frames = [await asyncio.wait_for(client.recv(), timeout=10) for _ in range(5)]
        server.stop()  # SIGTERM with the client still connected
        return frames

    subscription = bob_subscribed.subscription
    try:
        frames = asyncio.run(scenario())
    finally:
        server.stop()
    assert server.process.returncode == 143, server.log()
    totals = usage_totals(subscriptions=[subscription.pk])
    assert (totals.events, totals.bytes) == (5, sum(len(frame.encode()) for frame in frames))
    assert sum(latency_histogram(subscriptions=[subscription.pk])[None].values()) == 5
    record = ConnectionRecord.objects.get(subscription=subscription)
    assert record.events_out == 5 and record.close_code is not None, record.__dict__
    assert HandshakeRecord.objects.filter(subscription=subscription, outcome="accepted").count() == 1


def test_a_process_that_only_refuses_writes_its_log_and_a_bad_path_holds_nothing_back(
    capture_server, stream_api, bob_subscribed
):
    """Refusals alone start the periodic flush; a refused path with a NUL character (PostgreSQL
    text cannot hold one) is stored without it, and the records after it are written."""
    server, slug = capture_server, stream_api.slug

    async def refuse(path: str) -> int:
        client = await connect(server.ws_url + path)
        with pytest.raises(Exception) as closed:
            await asyncio.wait_for(client.recv(), 5)
        return closed.value.rcvd.code

    assert asyncio.run(refuse(f"/ws/{slug}/1.0.0/prices/%00x?access_token=bad")) == 4401
    assert asyncio.run(refuse(f"/ws/{slug}/9.9.9/prices/ACME?access_token={bob_subscribed.secret}")) == 4404
    assert wait_for(lambda: HandshakeRecord.objects.count() == 2), HandshakeRecord.objects.count()
    by_code = {record.code: record for record in HandshakeRecord.objects.all()}
    assert by_code[4401].api_id == stream_api.pk and by_code[4401].channel == ""
    # A credential that resolved: the application's subscription to the API is named.
    assert by_code[4404].subscription_id == bob_subscribed.subscription.pk
    assert by_code[4404].application_id == bob_subscribed.application.pk

    async def accepted() -> None:
        async with connect(
            f"{server.ws_url}/ws/{slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"
        ):
            pass

    asyncio.run(accepted())
    assert wait_for(lambda: ConnectionRecord.objects.count() == 1)
    assert HandshakeRecord.objects.filter(outcome="accepted").count() == 1
