"""Per-connection delivery: a bounded outbox and one writer task, so fan-out never waits on a client.

The bridge (``gateway.bridge``) hands each event to every local subscriber of its channel, in
the event loop, one after the other. Under uvicorn, ``await send(...)`` to a client that stops
reading blocks once the socket's write buffer is full (backpressure). So the fan-out never
awaits a client's send: a ``ChannelFeed`` only appends the event to its connection's ``Outbox``
(a deque, no await), and the outbox's writer task awaits the sends one at a time.

::

    bridge ──deliver()──▶ ChannelFeed ──append──▶ Outbox (≤ GATEWAY_OUTBOX_EVENTS) ──writer──▶ send()
                                                     │ full                                   │ ok
                                                     ▼                                        ▼
                                        policy "drop": skip + count          meter (subscription, channel
                                        policy "close": close(1013)          template, "out", minute)

- Overflow policy (``settings.GATEWAY_SLOW_CONSUMER_POLICY``): ``"drop"`` skips the new event
  and counts it as dropped for its (subscription, channel template) in process memory
  (``gateway.metering.Meter.drop``); ``"close"`` discards what is queued and closes the
  connection with 1013 (try again later, RFC 6455 §7.4.1). Dropped events are never metered.
- Throttling (``gateway.throttling``): when the feed has a throttle, ``put`` first takes the
  event from the subscription's local lease (no I/O). A stopped event is counted as throttled
  (``Meter.throttle``, never billed) and the connection is told once per stop
  (``Outbox.on_throttled``); an event that must wait for the next lease is queued and the
  writer awaits the lease before sending it, so order holds.
- Metering happens in the writer *after* ``send`` returned, so what is billed is what was
  handed to the socket: events discarded by ``stop`` (client gone), by a failed send or by the
  close policy are not metered.
- Memory per connection is bounded: at most ``maxsize`` queued events, and the queued messages
  are the bridge's shared per-event dicts (one frame per event, not one per subscriber).
- Fast path (``gateway.wire``): when nothing is queued or being sent and the connection's
  transport is below its high-water mark, ``put`` writes the event's pre-built frame (the
  message's ``"wire"`` bytes, built once per event by the bridge) straight to the transport and
  counts it on its ``ChannelFeed`` (events and bytes of the current minute, moved into the
  process's meter at each flush and when the minute or connection ends). Otherwise the event
  takes the queue above, so order, backpressure and policy are unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

from gateway.metering import LATENCY_BUCKETS, Meter, get_meter, latency_bucket
from gateway.throttling import ALLOW, THROTTLE, WAIT, SubscriptionThrottle
from gateway.wire import DirectSocket, direct_socket

log = logging.getLogger(__name__)

CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455 §7.4.1 (registered by RFC 6455's IANA registry)
SLOW_CONSUMER_POLICIES = ("drop", "close")
REASON_SLOW_CONSUMER = "Slow consumer: outbound buffer full; reconnect and read faster."

Send = Callable[[dict[str, Any]], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]
# The ``events`` of a queued event that still needs its throttling lease (one event).
_NEEDS_LEASE = -1


class Outbox:
    """One per connection: bounded queue (GATEWAY_OUTBOX_EVENTS) + one writer task that awaits
    send(message). Overflow: policy "drop" (skip the event, count it per subscription+channel as
    dropped, not metered) or "close" (await close(1013, reason)).

    ``send`` is the connection's ASGI send (``websocket.send`` or ``http.response.body``
    messages, passed through unchanged); ``close(code, reason)`` ends the connection. ``maxsize``
    is in events (default ``settings.GATEWAY_OUTBOX_EVENTS``), ``policy`` ``"drop"`` or
    ``"close"`` (default ``settings.GATEWAY_SLOW_CONSUMER_POLICY``); raises ``ValueError`` for
    another policy or a ``maxsize`` under 1.

    After a failed send (the client went away) or an overflow under ``"close"`` the outbox is
    closed: later events are ignored. ``sent`` and ``dropped`` count this connection's events.
    """

    def __init__(
        self,
        *,
        send: Send,
        close: Close,
        maxsize: int | None = None,
        policy: str | None = None,
    ) -> None:
        self.maxsize = int(settings.GATEWAY_OUTBOX_EVENTS if maxsize is None else maxsize)
        self.policy = policy or settings.GATEWAY_SLOW_CONSUMER_POLICY
        if self.policy not in SLOW_CONSUMER_POLICIES:
            raise ValueError(f"slow consumer policy {self.policy!r} is not one of {SLOW_CONSUMER_POLICIES}")
        if self.maxsize < 1:
            raise ValueError(f"outbox size {self.maxsize} must be at least 1 event")
        self._send = send
        self._close = close
        self._meter = get_meter()
        # (message, bytes, minute, feed or None for unmetered messages, events)
        self._queue: deque[tuple[dict[str, Any], int, int, ChannelFeed | None, int]] = deque()
        self._wakeup = asyncio.Event()
        self._direct: DirectSocket | None = None  # the fast path, from start() on
        self._busy = False  # the writer holds a message it has not finished sending
        self._lease_waits = 0  # queued events waiting for a throttling lease
        # Attached feeds, which tally fast-path deliveries: settled at stop.
        self.feeds: dict[int, ChannelFeed] = {}
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self.closed = False
        # Events (bytes) sent by the writer and settled from the feeds' fast-path tallies:
        # ``sent``/``sent_bytes`` add the tallies not settled yet.
        self._sent = 0
        self._sent_bytes = 0
        self.dropped = 0
        self.throttled = 0
        # Called once per stop (a throttle's new ``blocked_until``) with the throttle: the
        # consumer tells its client (gateway.throttling notices) or closes with 4429.
        self.on_throttled: Callable[[SubscriptionThrottle], None] | None = None
        self._notified = 0.0

    def start(self) -> None:
        """Start the writer task on the running loop (and the meter's periodic flush); call once
        the connection is accepted. From then on the fast path applies where it can
        (``gateway.wire.direct_socket``)."""
        if self._writer is None and not self.closed:
            self._meter.ensure_flushing()
            self._direct = direct_socket(self._send)
            loop = asyncio.get_running_loop()
            self._writer = loop.create_task(self._write_forever(), name="eventgate-outbox")

    def stop(self) -> None:
        """Cancel the writer; queued events are discarded, not metered. Idempotent; call it when
        the connection ends, whatever the reason."""
        self.closed = True
        self._direct = None
        self._queue.clear()
        self._lease_waits = 0
        for feed in self.feeds.values():
            feed.settle()
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None

    def __len__(self) -> int:
        """Events (and control messages) waiting for the writer."""
        return len(self._queue)

    @property
    def sent(self) -> int:
        """Events this connection was sent (the writer's and the fast path's)."""
        return self._sent + sum(feed.events for feed in self.feeds.values())

    @property
    def sent_bytes(self) -> int:
        """Bytes of ``sent``."""
        return self._sent_bytes + sum(feed.bytes for feed in self.feeds.values())

    def put(self, message: dict[str, Any], size: int, minute: int, feed: ChannelFeed) -> None:
        """Hand one event of ``feed`` on (hot path: no await): written to the transport at once
        on the fast path (``message["wire"]``, see the module docstring), else queued for the
        writer. Applies the policy when ``maxsize`` events are already waiting."""
        if self.closed:
            return
        queue = self._queue
        throttle = feed.throttle
        if throttle is not None:
            left = throttle.left
            if (
                left > throttle.low
                and throttle.bytes_left - size > throttle.low_bytes
                and not self._lease_waits
            ):
                # ``SubscriptionThrottle.take`` inlined for its common case (well inside the
                # lease, no refill due): one method call less per delivery.
                throttle.left = left - 1
                throttle.bytes_left -= size
                taken = ALLOW
            else:
                # Behind an event that waits for a lease, wait too: an event never takes the
                # allowance of an earlier one of the same connection.
                taken = throttle.take(size) if not self._lease_waits else WAIT
            if taken != ALLOW:
                if taken == THROTTLE:
                    self._throttled(feed, size, minute, throttle)
                elif len(queue) >= self.maxsize:
                    self._overflow(feed, minute)
                else:  # the next lease is on its way: the writer waits for it, in order
                    queue.append((message, size, minute, feed, _NEEDS_LEASE))
                    self._lease_waits += 1
                    self._wakeup.set()
                return
        direct = self._direct
        if direct is not None and not queue and not self._busy and direct.ready():
            wire = message.get("wire")
            if wire is not None:
                direct.write(wire)
                feed.tally(size, minute, message["lat"])
                return
        if len(queue) >= self.maxsize:
            self._overflow(feed, minute)
            return
        queue.append((message, size, minute, feed, 1))
        self._wakeup.set()

    def put_batch(
        self, message: dict[str, Any], events: int, size: int, minute: int, feed: ChannelFeed
    ) -> None:
        """Queue one message carrying ``events`` events of ``size`` bytes in all (an SSE replay
        sent as one chunk), metered as that many events after its send. One queue place:
        a resume never overflows the outbox however many events it replays."""
        if self.closed:
            return
        self._queue.append((message, size, minute, feed, events))
        self._wakeup.set()

    def enqueue(self, message: dict[str, Any]) -> bool:
        """Queue an unmetered message (an ack or error frame, an SSE comment) behind the events
        already waiting, so it keeps its order. Returns False, queuing nothing, when the outbox
        is closed or full (the caller decides: an SSE keep-alive is simply skipped)."""
        if self.closed or len(self._queue) >= self.maxsize:
            return False
        self._queue.append((message, 0, 0, None, 0))
        self._wakeup.set()
        return True

    def _throttled(self, feed: ChannelFeed, size: int, minute: int, throttle: SubscriptionThrottle) -> None:
        """Count one event the throttling policy stopped (never metered as delivered) and tell
        the client once per stop."""
        self.throttled += 1
        self._meter.throttle((feed.subscription_id, feed.channel_template, "out", minute), size)
        if self._notified != throttle.blocked_until:
            self._notified = throttle.blocked_until
            if self.on_throttled is not None:
                self.on_throttled(throttle)

    def _overflow(self, feed: ChannelFeed, minute: int) -> None:
        self.dropped += 1
        self._meter.drop((feed.subscription_id, feed.channel_template, "out", minute))
        if self.policy == "close":
            self.stop()
            # A task: close() sends a close frame, which waits on the same full socket buffer
            # (bounded by the server's close timeout); the fan-out must not wait for it.
            loop = asyncio.get_running_loop()
            self._closer = loop.create_task(self._close_slow(), name="eventgate-outbox-close")

    async def _close_slow(self) -> None:
        log.info("Closing a slow consumer (%d events queued) with 1013", self.maxsize)
        try:
            await self._close(CLOSE_TRY_AGAIN_LATER, REASON_SLOW_CONSUMER)
        except Exception as exc:  # noqa: BLE001 - the client is gone already: nothing to close
            log.debug("Closing a slow consumer failed: %r", exc)

    async def _write_forever(self) -> None:
        queue, wakeup, send, meter = self._queue, self._wakeup, self._send, self._meter
        try:
            while True:
                while queue:
                    message, size, minute, feed, events = queue.popleft()
                    self._busy = True  # until sent: the fast path must not overtake it
                    if events == _NEEDS_LEASE:
                        assert feed is not None and feed.throttle is not None
                        allowed = await feed.throttle.wait(size)
                        # Only now: meanwhile later events queue behind this one (``put``).
                        self._lease_waits = max(0, self._lease_waits - 1)
                        if not allowed:
                            self._busy = False
                            self._throttled(feed, size, minute, feed.throttle)
                            continue
                        events = 1
                    try:
                        await send(message)
                    except (UnicodeError, TypeError) as exc:  # this message is bad, not the socket
                        log.error("Outbox skipped a message it cannot send: %r", exc)
                        continue
                    finally:
                        self._busy = False
                    if feed is not None:
                        key = (feed.subscription_id, feed.channel_template, "out", minute)
                        meter.add(key, size, events)
                        self._sent += events
                        self._sent_bytes += size
                        published = message.get("published_at")
                        if published is not None and events == 1:
                            meter.latency_add(key, latency_bucket(published, time.time()))
                wakeup.clear()
                await wakeup.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a send on a closed socket ends this outbox only
            log.debug("Outbox writer stopped: %r", exc)
            self.closed = True
            queue.clear()
            self._lease_waits = 0
            self._writer = None


class ChannelFeed:
    """One per (connection, channel): bridge.attach(routing_key, address, feed). deliver() only
    enqueues on the outbox (never waits on the client); the writer meters the event
    (subscription_id, channel_template, "out", minute) after the send succeeds.

    A ``gateway.bridge.Subscriber``. ``channel_template`` is the AsyncAPI address template
    (``prices/{symbol}``), the key usage and drops are counted under.
    """

    __slots__ = (
        "outbox",
        "subscription_id",
        "channel_template",
        "throttle",
        "minute",
        "events",
        "bytes",
        "latency",
        "_meter",
        "__weakref__",
    )

    def __init__(
        self,
        outbox: Outbox,
        *,
        subscription_id: int,
        channel_template: str,
        throttle: SubscriptionThrottle | None = None,
    ) -> None:
        self.outbox = outbox
        self.subscription_id = subscription_id
        self.channel_template = channel_template
        # The subscription's throttle when its policy counts server → client events.
        self.throttle = throttle
        # Fast-path deliveries not yet in the meter: ``events`` of ``bytes`` in ``minute``.
        self.minute = 0
        self.events = 0
        self.bytes = 0
        # Fast-path deliveries per latency histogram bucket (gateway.metering.latency_bucket);
        # one more slot, the last, takes those of unknown latency (bucket -1) and is never read.
        self.latency = [0] * (LATENCY_BUCKETS + 1)
        self._meter: Meter = outbox._meter
        outbox.feeds[id(self)] = self
        self._meter.feed_register(self)

    def tally(self, size: int, minute: int, latency: int = -1) -> None:
        """Count one event of ``size`` bytes handed to the socket in ``minute`` (Unix time //
        60) by the fast path, in latency histogram bucket ``latency`` (-1: unknown). Hot path:
        no dict, no tuple; a new minute settles the previous."""
        if minute != self.minute:
            self.settle()
            self.minute = minute
        self.events += 1
        self.bytes += size
        self.latency[latency] += 1

    def detach(self) -> None:
        """The connection stopped receiving this channel (multiplexed ``unsubscribe``): settle
        its tally and let the outbox forget it. Call after ``Bridge.detach``."""
        self.settle()
        self.outbox.feeds.pop(id(self), None)

    def settle(self) -> None:
        """Move the tallied events into the process's meter under (subscription, channel
        template, "out", minute). Called by the meter before each flush and by ``Outbox.stop``."""
        if self.events:
            key = (self.subscription_id, self.channel_template, "out", self.minute)
            self._meter.add(key, self.bytes, self.events)
            outbox = self.outbox
            outbox._sent += self.events
            outbox._sent_bytes += self.bytes
            self.events = self.bytes = 0
            latency = self.latency
            for bucket in range(LATENCY_BUCKETS):
                if latency[bucket]:
                    self._meter.latency_add(key, bucket, latency[bucket])
            latency[:] = [0] * (LATENCY_BUCKETS + 1)

    async def deliver(self, message: dict[str, Any], size: int, minute: int) -> None:
        """Queue ``message`` (the bridge's shared ASGI message) of ``size`` bytes for the writer;
        ``minute`` is Unix time // 60 (the usage bucket). Returns at once."""
        self.outbox.put(message, size, minute, self)

    def deliver_nowait(self, message: dict[str, Any], size: int, minute: int) -> None:
        """``deliver`` without a coroutine: the bridge's fast path."""
        self.outbox.put(message, size, minute, self)

    def notice(self, message: dict[str, Any]) -> None:
        """Queue an unmetered message from the bridge (an SSE gap notice); skipped when full."""
        self.outbox.enqueue(message)
