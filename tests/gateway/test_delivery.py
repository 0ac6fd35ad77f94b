"""The outbox: fan-out never waits on a client, overflow follows the slow-consumer policy, and
only events whose send succeeded are metered.

``GatedSocket`` stands in for a client socket whose write buffer is full until the test opens
the gate (what uvicorn's ``send`` does under backpressure); the end-to-end behaviour with a real
server and real clients is in ``test_slow_consumer.py``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.delivery import REASON_SLOW_CONSUMER, ChannelFeed, Outbox
from gateway.metering import get_meter

pytestmark = pytest.mark.usefixtures("gateway_cleanup")

TEMPLATE = "prices/{symbol}"
MINUTE = 29_573_333


class GatedSocket:
    """Records sent messages; ``send`` waits while the gate is shut; raises once ``broken``."""

    def __init__(self, *, open_: bool = True) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closes: list[tuple[int, str]] = []
        self.gate = asyncio.Event()
        if open_:
            self.gate.set()
        self.broken = False

    async def send(self, message: dict[str, Any]) -> None:
        await self.gate.wait()
        if self.broken:
            raise RuntimeError("Unexpected ASGI message 'websocket.send', after sending 'websocket.close'")
        self.sent.append(message)

    async def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))


def event(n: int) -> dict[str, Any]:
    return {"type": "websocket.send", "text": f'{{"id":"{n}","payload":{n}}}'}


def metered(subscription_id: int = 7) -> list[int]:
    return get_meter().counts.get((subscription_id, TEMPLATE, "out", MINUTE), [0, 0])


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_events_are_sent_in_order_and_metered_after_the_send():
    socket = GatedSocket(open_=False)
    outbox = Outbox(send=socket.send, close=socket.close, maxsize=10, policy="drop")
    feed = ChannelFeed(outbox, subscription_id=7, channel_template=TEMPLATE)
    outbox.start()
    for n in range(3):
        await feed.deliver(event(n), 100 + n, MINUTE)  # returns although the socket is blocked
    await settle()
    assert socket.sent == [] and metered() == [0, 0], "nothing is metered before its send returned"
    socket.gate.set()
    await settle()
    assert socket.sent == [event(0), event(1), event(2)]
    assert metered() == [3, 303]
    outbox.stop()


async def test_full_outbox_drops_new_events_counts_them_and_does_not_meter_them():
    socket = GatedSocket(open_=False)
    outbox = Outbox(send=socket.send, close=socket.close, maxsize=4, policy="drop")
    feed = ChannelFeed(outbox, subscription_id=8, channel_template=TEMPLATE)
    other = ChannelFeed(outbox, subscription_id=9, channel_template=TEMPLATE)
    outbox.start()
    before = dict(get_meter().dropped)
    await feed.deliver(event(0), 10, MINUTE)
    await settle()  # the writer took event 0 and waits in send: 4 more fit in the queue
    for n in range(1, 8):
        feed.deliver_nowait(event(n), 10, MINUTE)
    await other.deliver(event(99), 10, MINUTE)
    dropped = {key: n - before.get(key, 0) for key, n in get_meter().dropped.items()}
    assert dropped[(8, TEMPLATE)] == 3 and dropped[(9, TEMPLATE)] == 1
    # ... and as dropped events of their minute, flushed to analytics (UsageRecord.dropped_events)
    assert get_meter().errors[(8, TEMPLATE, "out", MINUTE)][0] >= 3
    assert outbox.dropped == 4 and len(outbox) == 4
    socket.gate.set()
    await settle()
    assert socket.sent == [event(n) for n in range(5)]
    assert metered(8) == [5, 50] and metered(9) == [0, 0]
    assert socket.closes == [], "policy drop never closes"
    await feed.deliver(event(8), 10, MINUTE)  # room again: delivered
    await settle()
    assert socket.sent[-1] == event(8)
    outbox.stop()


async def test_close_policy_closes_with_1013_and_discards_what_was_queued():
    socket = GatedSocket(open_=False)
    outbox = Outbox(send=socket.send, close=socket.close, maxsize=2, policy="close")
    feed = ChannelFeed(outbox, subscription_id=10, channel_template=TEMPLATE)
    outbox.start()
    for n in range(4):  # 1 in the writer's send, 2 queued, the 4th overflows
        await feed.deliver(event(n), 10, MINUTE)
        await settle()
    assert socket.closes == [(1013, REASON_SLOW_CONSUMER)]
    assert len(REASON_SLOW_CONSUMER.encode()) <= 123  # RFC 6455 §5.5: close reason fits a control frame
    socket.gate.set()
    await feed.deliver(event(5), 10, MINUTE)
    await settle()
    assert socket.sent == [] and metered(10) == [0, 0] and len(outbox) == 0
    assert outbox.closed and outbox.dropped == 1


async def test_failed_send_stops_the_outbox_and_meters_nothing_more():
    socket = GatedSocket()
    outbox = Outbox(send=socket.send, close=socket.close, maxsize=10, policy="drop")
    feed = ChannelFeed(outbox, subscription_id=11, channel_template=TEMPLATE)
    outbox.start()
    await feed.deliver(event(0), 10, MINUTE)
    await settle()
    socket.broken = True
    await feed.deliver(event(1), 10, MINUTE)
    await feed.deliver(event(2), 10, MINUTE)
    await settle()
    assert outbox.closed and len(outbox) == 0
    await feed.deliver(event(3), 10, MINUTE)
    assert len(outbox) == 0
    assert socket.sent == [event(0)] and metered(11) == [1, 10]


async def test_stop_discards_queued_events_unmetered():
    socket = GatedSocket(open_=False)
    outbox = Outbox(send=socket.send, close=socket.close, maxsize=10, policy="drop")
    feed = ChannelFeed(outbox, subscription_id=12, channel_template=TEMPLATE)
    outbox.start()
    for n in range(5):
        await feed.deliver(event(n), 10, MINUTE)
    await settle()
    outbox.stop()
    socket.gate.set()
    await settle()
    assert socket.sent == [] and metered(12) == [0, 0] and len(outbox) == 0
    assert outbox.enqueue({"type": "websocket.send", "text": "late"}) is False


async def test_control_messages_keep_their_place_and_are_not_metered():
    socket = GatedSocket(open_=False)
    outbox = Outbox(send=socket.send, close=socket.close, maxsize=3, policy="drop")
    feed = ChannelFeed(outbox, subscription_id=13, channel_template=TEMPLATE)
    outbox.start()
    ack = {"type": "websocket.send", "text": '{"type":"ack","id":"c1"}'}
    await feed.deliver(event(0), 10, MINUTE)
    await settle()
    assert outbox.enqueue(ack) is True
    await feed.deliver(event(1), 10, MINUTE)
    await feed.deliver(event(2), 10, MINUTE)
    assert outbox.enqueue(ack) is False, "full: the caller decides"
    socket.gate.set()
    await settle()
    assert socket.sent == [event(0), ack, event(1), event(2)]
    assert metered(13) == [3, 30]
    outbox.stop()


def test_unknown_policy_or_size_is_refused():
    async def noop(*args: Any) -> None:
        return None

    with pytest.raises(ValueError, match="policy"):
        Outbox(send=noop, close=noop, policy="block")
    with pytest.raises(ValueError, match="at least 1"):
        Outbox(send=noop, close=noop, maxsize=0)


async def test_drops_are_summarised_in_the_log(caplog):
    meter = get_meter()
    meter.drops_log()
    meter.drop((14, TEMPLATE, "out", MINUTE))
    meter.drop((14, TEMPLATE, "out", MINUTE))
    with caplog.at_level("WARNING", logger="gateway.metering"):
        assert meter.drops_log() == 2
        assert meter.drops_log() == 0
    assert "2 events dropped" in caplog.text and "subscription 14 on prices/{symbol}: 2" in caplog.text


async def test_a_batch_takes_one_place_and_is_metered_as_its_events():
    socket = GatedSocket(open_=False)
    outbox = Outbox(send=socket.send, close=socket.close, maxsize=1, policy="drop")
    feed = ChannelFeed(outbox, subscription_id=15, channel_template=TEMPLATE)
    outbox.start()
    replay = {
        "type": "http.response.body",
        "body": b"id: 1\ndata: 1\n\nid: 2\ndata: 2\n\n",
        "more_body": True,
    }
    outbox.put_batch(replay, 2, 20, MINUTE, feed)
    await settle()  # the writer waits in the batch's send: the one place is free again
    await feed.deliver(event(3), 10, MINUTE)
    await settle()
    assert metered(15) == [0, 0]
    socket.gate.set()
    await settle()
    assert socket.sent == [replay, event(3)]
    assert metered(15) == [3, 30] and outbox.sent == 3 and outbox.dropped == 0
    outbox.stop()


async def test_a_detached_feed_settles_its_fast_path_tally_and_is_forgotten():
    """Multiplexed ``unsubscribe``: what the fast path tallied on the feed reaches the meter at
    once, and a connection that subscribes and unsubscribes for hours keeps no dead feeds."""
    socket = GatedSocket()
    outbox = Outbox(send=socket.send, close=socket.close)
    feed = ChannelFeed(outbox, subscription_id=16, channel_template=TEMPLATE)
    feed.tally(10, MINUTE)
    feed.tally(5, MINUTE)
    assert metered(16) == [0, 0], "tallied on the feed until settled"
    feed.detach()
    assert metered(16) == [2, 15]
    assert outbox.feeds == {}
