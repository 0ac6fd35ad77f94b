"""The broker bridge: one AMQP connection per gateway process, local fan-out to WebSocket and SSE
connections.

Shape (see also ``docs/delivery.md``):

- one robust aio-pika connection per process and event loop, opened lazily by the first
  subscriber, reconnecting by itself (every second) after RabbitMQ drops it or restarts; aio-pika
  then re-declares the queue, restores its bindings and resumes consuming;
- one exclusive, auto-delete, server-local queue per process (RabbitMQ deletes it when the
  connection goes), consumed with ``no_ack`` (events are live data: nothing to redeliver);
- one binding per concrete channel (routing key, ``gateway.publishing.routing_key``) while at
  least one local subscriber needs it (reference-counted ``bind``/``unbind``); added before the
  handshake is accepted, so a client that saw its handshake complete receives every event
  published afterwards. SSE subscribers leave with ``unbind_later``: the binding and the
  channel's replay buffer linger so a client reconnecting with ``Last-Event-ID`` can resume;
- per event: one dict lookup by routing key, the size check, the client frame built once by
  string concatenation around the raw body, one ASGI message shared by all local WebSocket
  subscribers carrying also the WebSocket frame's bytes (``gateway.wire.text_frame``, written
  as is to each socket on the fast path), and one shared by all SSE subscribers, handed to each
  subscriber's outbox without waiting (``gateway.delivery``). No ORM, no Redis, no channel
  layer on this path.

Frame (one WebSocket text frame, RFC 6455 §5.6; the ``data`` of one SSE event)::

    {"id":"<event id>","channel":"prices/ACME","published_at":1764400000.123,"payload":<body>}

Events over ``GATEWAY_MAX_MESSAGE_BYTES`` (the frame's UTF-8 size, the same limit uvicorn applies
to client frames) and bodies that are not exactly one JSON value are dropped once, for every
subscriber of the process, and counted in ``Bridge.dropped`` by reason; they never reach a
client and are never metered. Events published while the connection is down are lost for this
process (they are live data).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
    AbstractRobustQueue,
)
from django.conf import settings

from gateway.metering import FAILED, REJECTED, get_meter, latency_bucket
from gateway.publishing import amqp_connect, exchange_declare
from gateway.wire import text_frame

log = logging.getLogger(__name__)

# ``json.dumps`` of a str without the dict machinery: escapes and quotes, ASCII only.
_json_str = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


class BrokerUnavailable(Exception):
    """RabbitMQ could not be reached or refused a declaration/binding."""


class Subscriber(Protocol):
    """What the bridge fans out to (``gateway.delivery.ChannelFeed``, test collectors).

    A subscriber may also offer ``deliver_nowait(message, size, minute)``, the same without a
    coroutine, which the bridge then calls (the fast path), and ``notice(message)``, an
    unmetered message such as an SSE ``eventgate.gap`` notice.
    """

    async def deliver(self, message: dict[str, Any], size: int, minute: int) -> None:
        """Take ``message`` (an ASGI message shared by all subscribers of that framing; do not
        mutate it) of ``size`` bytes (UTF-8 frame length); ``minute`` is Unix time // 60.
        Must not wait on the client."""


# (event id, ASGI http.response.body message, frame size in bytes, time.monotonic() when received)
ReplayItem = tuple[str, dict[str, Any], int, float]


class ReplayBuffer:
    """The recent SSE events of one channel, oldest first, for ``Last-Event-ID`` resume.

    Bounded by ``max_events`` events, ``max_bytes`` bytes of SSE text and ``max_age`` seconds
    (WHATWG HTML §9.2 Server-sent events: ``Last-Event-ID`` names the last event the client saw).
    Items are ``(event id, ASGI http.response.body message, frame size in bytes, monotonic time)``.
    """

    __slots__ = ("events", "bytes", "max_events", "max_bytes", "max_age")

    def __init__(self, *, max_events: int, max_bytes: int, max_age: float) -> None:
        self.events: deque[ReplayItem] = deque()
        self.bytes = 0
        self.max_events, self.max_bytes, self.max_age = max_events, max_bytes, max_age

    def append(self, event_id: str, message: dict[str, Any], size: int) -> None:
        """Hold one event; forget the oldest beyond the event and byte bounds."""
        events = self.events
        events.append((event_id, message, size, time.monotonic()))
        self.bytes += len(message["body"])
        while len(events) > self.max_events or self.bytes > self.max_bytes:
            self.bytes -= len(events.popleft()[1]["body"])

    def mark_gap(self, message: dict[str, Any]) -> None:
        """Hold an ``eventgate.gap`` notice (``sse_gap``) in order with the events: a client
        resuming from before it learns that events are missing there. Size 0: not an event."""
        self.append("", message, 0)

    @property
    def last_event_id(self) -> str | None:
        """The id of the newest event held (not counting gap notices), or None."""
        for event_id, _message, size, _received in reversed(self.events):
            if size:
                return event_id
        return None

    def since(self, last_event_id: str) -> list[ReplayItem] | None:
        """The events after ``last_event_id``, oldest first; None if that id is not held (never
        seen by this process, or forgotten: older than the bounds)."""
        events = self.events
        horizon = time.monotonic() - self.max_age
        while events and events[0][3] < horizon:
            self.bytes -= len(events.popleft()[1]["body"])
        for index in range(len(events) - 1, -1, -1):  # recent ids are the likely ones
            if events[index][0] == last_event_id:
                return list(events)[index + 1 :]
        return None


@dataclass(slots=True)
class Route:
    """Local subscribers of one concrete channel, and the frame text that follows the event id.

    Subscribers are kept by identity in insertion-ordered dicts, so ``attach`` and ``detach``
    cost O(1) however many share the channel (a handshake storm on one channel would otherwise
    cost O(N²)). The fan-out iterates over tuples of their delivery callables (``ws_calls`` /
    ``sse_calls``, and ``*_awaits`` for subscribers without ``deliver_nowait``), rebuilt at most
    once per event after a change (``refresh``) and replaced, never mutated, so a fan-out in
    progress keeps the tuple it started with.
    """

    channel_fragment: str  # ',"channel":"prices/ACME","published_at":'
    websocket: dict[int, Subscriber] = field(default_factory=dict)  # id(subscriber) → subscriber
    sse: dict[int, Subscriber] = field(default_factory=dict)
    ws_calls: tuple[Callable[..., Any], ...] = ()
    ws_awaits: tuple[Callable[..., Any], ...] = ()
    sse_calls: tuple[Callable[..., Any], ...] = ()
    sse_awaits: tuple[Callable[..., Any], ...] = ()
    stale: bool = False  # the tuples lag behind the dicts
    replay: ReplayBuffer | None = None  # from the first SSE subscriber until the route goes
    lingering: list[asyncio.TimerHandle] = field(default_factory=list)

    def refresh(self) -> None:
        """Rebuild the fan-out tuples from the dicts (O(subscribers)); the bridge calls it before
        a fan-out when ``stale``."""

        def split(subscribers: dict[int, Subscriber]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
            calls, awaits = [], []
            for subscriber in subscribers.values():
                call = getattr(subscriber, "deliver_nowait", None)
                if call is None:
                    awaits.append(subscriber.deliver)
                else:
                    calls.append(call)
            return tuple(calls), tuple(awaits)

        self.ws_calls, self.ws_awaits = split(self.websocket)
        self.sse_calls, self.sse_awaits = split(self.sse)
        self.stale = False

    @property
    def empty(self) -> bool:
        return not self.websocket and not self.sse


def published_seconds(value: Any) -> float | None:
    """The ``eg-published-at`` header as Unix seconds, or None if absent or not a finite number.

    Accepts the decimal string ``gateway.publishing`` sends (``"1764400000.123456"``, as str or
    bytes) and AMQP numbers from other clients.
    """
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) else None


def timestamp_json(value: Any) -> str:
    """The ``eg-published-at`` header (``published_seconds``) as a JSON number of seconds, or
    ``null`` if absent or bad."""
    seconds = published_seconds(value)
    return "null" if seconds is None else repr(seconds)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class EventTooLarge(ValueError):
    """An event whose frame would exceed ``GATEWAY_MAX_MESSAGE_BYTES``."""


def frame_build(
    *, event_id: str, channel_fragment: str, published_at: Any, body: bytes, max_bytes: int | None = None
) -> str:
    """The client frame for one event, by concatenation around the raw JSON ``body``.

    ``published_at`` is the ``eg-published-at`` header (see ``timestamp_json``). The body is
    parsed once (not re-serialized) so that only one whole JSON value is spliced in: a body such
    as ``0,"channel":"other"`` could otherwise forge frame fields. Raises ``EventTooLarge`` (a
    ``ValueError``) if the body alone is over ``max_bytes`` (default
    ``settings.GATEWAY_MAX_MESSAGE_BYTES``), checked before parsing so one huge event cannot stall
    the event loop; ``ValueError`` if the body is not UTF-8 (RFC 6455 §5.6: text frames are
    UTF-8) or not exactly one JSON value (RFC 8259: ``NaN`` and ``Infinity`` are not JSON;
    nesting too deep to parse is refused too). The caller checks the whole frame's size.
    """
    limit = settings.GATEWAY_MAX_MESSAGE_BYTES if max_bytes is None else max_bytes
    if len(body) > limit:
        raise EventTooLarge(f"body of {len(body):,} bytes is over the {limit:,}-byte limit")
    text = body.decode() if body else "null"
    try:
        json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("event body nested too deeply") from None
    head = '{"id":' + _json_str(event_id) + channel_fragment + timestamp_json(published_at)
    return head + ',"payload":' + text + "}"


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def sse_event(event_id: str, frame: str) -> bytes:
    """One Server-Sent Events event (WHATWG HTML §9.2.6) carrying ``frame`` as its data.

    ``id: <event id>`` lets the client resume with ``Last-Event-ID``; it is left out when the id
    holds a line break or NUL, which the format cannot carry. Line breaks in the frame (JSON
    whitespace from the provider's body; JSON strings cannot hold raw ones) become further
    ``data:`` lines, which the client joins with ``\\n``.
    """
    data = (
        "data: " + _LINE_BREAK.sub("\ndata: ", frame)
        if ("\n" in frame or "\r" in frame)
        else "data: " + frame
    )
    if event_id and not any(c in event_id for c in "\r\n\x00"):
        return ("id: " + event_id + "\n" + data + "\n\n").encode()
    return (data + "\n\n").encode()


def sse_gap(last_event_id: str | None, detail: str) -> dict[str, Any]:
    """The ``eventgate.gap`` SSE event (docs/sse.md) as an ASGI ``http.response.body`` message:
    events after ``last_event_id`` (None: unknown) may be missing from this stream."""
    data = json.dumps({"last_event_id": last_event_id[:200] if last_event_id else None, "detail": detail})
    return {
        "type": "http.response.body",
        "body": f"event: eventgate.gap\ndata: {data}\n\n".encode(),
        "more_body": True,
    }


REASON_GAP_BROKER = "RabbitMQ connection lost: events published until the gateway reconnected are missed."


class Bridge:
    """The process's AMQP connection, queue, bindings and local routing table."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self._demand: dict[str, int] = {}  # routing key → subscribers that asked for the binding
        self._bound: set[str] = set()  # routing keys bound on the broker (as far as we know)
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._queue: AbstractRobustQueue | None = None
        self._start_lock = asyncio.Lock()
        self._bind_lock = asyncio.Lock()
        self._pending: set[asyncio.Task[None]] = set()
        self.max_bytes = int(settings.GATEWAY_MAX_MESSAGE_BYTES)
        # Server-Sent Events resume (docs/sse.md).
        self.replay_events = int(settings.GATEWAY_SSE_REPLAY_EVENTS)
        self.replay_bytes = int(settings.GATEWAY_SSE_REPLAY_BYTES)
        self.replay_seconds = float(settings.GATEWAY_SSE_REPLAY_SECONDS)
        self.linger_seconds = float(settings.GATEWAY_SSE_LINGER_SECONDS)
        # Events dropped before fan-out, by reason: "oversize" (frame over max_bytes), "invalid"
        # (body not one JSON value), "failed" (a subscriber raised).
        self.dropped: dict[str, int] = {"oversize": 0, "invalid": 0, "failed": 0}
        self.reconnects = 0
        self._lost = False
        self._drop_logged_at = -60.0
        self.queue_name = f"eventgate.gateway.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"

    async def start(self) -> None:
        """Connect, declare the exchange and this process's queue, start consuming. Idempotent.

        Raises ``BrokerUnavailable`` if RabbitMQ cannot be reached (the next call tries again).
        """
        async with self._start_lock:
            if self._queue is not None:
                return
            try:
                connection = await amqp_connect(name=f"eventgate-gateway pid={os.getpid()}")
            except Exception as exc:
                raise BrokerUnavailable(f"cannot connect to RabbitMQ: {exc}") from exc
            try:
                channel = await connection.channel()
                self._exchange = await exchange_declare(channel)
                queue = await channel.declare_queue(self.queue_name, exclusive=True, auto_delete=True)
                await queue.consume(self._on_message, no_ack=True)
            except Exception as exc:
                await connection.close()
                raise BrokerUnavailable(f"cannot set up the gateway queue: {exc}") from exc
            connection.reconnect_callbacks.add(self._on_reconnect)
            connection.close_callbacks.add(self._on_connection_lost)
            self._connection, self._queue = connection, queue  # type: ignore[assignment]
            log.info("Gateway bridge connected; queue %s", self.queue_name)

    @property
    def connected(self) -> bool:
        """Whether the AMQP connection is up right now (False before ``start`` and while
        aio-pika reconnects)."""
        connection = self._connection
        return connection is not None and connection.connected.is_set()

    async def close(self) -> None:
        """Close the connection (RabbitMQ then deletes the queue and its bindings)."""
        for route in self.routes.values():
            for handle in route.lingering:
                handle.cancel()
            route.lingering.clear()
        if self._connection is not None:
            await self._connection.close()
        self._connection = self._exchange = self._queue = None
        self._bound.clear()

    async def bind(self, routing_key: str) -> None:
        """Ask for events of ``routing_key``; returns once the broker binding exists.

        Reference-counted: each ``bind`` needs one ``unbind`` (or ``unbind_later``). Raises
        ``BrokerUnavailable`` (and counts nothing) when RabbitMQ cannot be reached.
        """
        await self.start()
        if not self.connected:
            # Reconnecting: refuse now rather than accept a client no event can reach yet (an
            # existing binding would make the reconcile below a no-op). Clients retry (1013/503).
            raise BrokerUnavailable("RabbitMQ connection lost; reconnecting")
        self._demand[routing_key] = self._demand.get(routing_key, 0) + 1
        try:
            await self._reconcile(routing_key)
        except BrokerUnavailable:
            await self.unbind(routing_key)
            raise

    async def unbind(self, routing_key: str) -> None:
        """Give back one ``bind``; the broker binding goes when nobody needs it. Never raises."""
        remaining = self._demand.get(routing_key, 0) - 1
        if remaining > 0:
            self._demand[routing_key] = remaining
            return
        self._demand.pop(routing_key, None)
        route = self.routes.get(routing_key)
        if route is not None and route.empty:
            del self.routes[routing_key]
        try:
            await self._reconcile(routing_key)
        except BrokerUnavailable as exc:
            # Kept in _bound: the next reconnect or bind of this key retries the unbind.
            log.warning("Could not unbind %s: %s", routing_key, exc)

    def unbind_later(self, routing_key: str, delay: float | None = None) -> None:
        """``unbind`` after ``delay`` seconds (default ``GATEWAY_SSE_LINGER_SECONDS``): the
        binding, the route and its replay buffer stay meanwhile, so a client that reconnects
        soon can resume. Call instead of ``unbind``, never both. ``close`` cancels pending ones."""
        delay = self.linger_seconds if delay is None else delay
        route = self.routes.get(routing_key)
        if delay <= 0 or route is None:
            self._spawn(self.unbind(routing_key))
            return
        handle: asyncio.TimerHandle | None = None

        def due() -> None:
            if handle in route.lingering:
                route.lingering.remove(handle)
            self._spawn(self.unbind(routing_key))

        handle = asyncio.get_running_loop().call_later(delay, due)
        route.lingering.append(handle)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def attach(
        self, routing_key: str, channel: str, subscriber: Subscriber, *, framing: str = "websocket"
    ) -> None:
        """Start fanning events of ``routing_key`` out to ``subscriber`` (call after ``bind``).

        ``channel`` is the concrete address shown in frames, e.g. ``prices/ACME``. ``framing``
        ``"websocket"`` hands ``{"type": "websocket.send", "text": frame}`` messages,
        ``"sse"`` ``{"type": "http.response.body", "body": <sse_event bytes>, "more_body": True}``
        messages and keeps a replay buffer for the channel (``replay_since``).
        """
        route = self.routes.get(routing_key)
        if route is None:
            route = self.routes[routing_key] = Route(',"channel":' + _json_str(channel) + ',"published_at":')
        if framing == "sse":
            if route.replay is None:
                route.replay = ReplayBuffer(
                    max_events=self.replay_events, max_bytes=self.replay_bytes, max_age=self.replay_seconds
                )
            route.sse[id(subscriber)] = subscriber
        elif framing == "websocket":
            route.websocket[id(subscriber)] = subscriber
        else:
            raise ValueError(f"framing {framing!r} is not 'websocket' or 'sse'")
        route.stale = True

    def detach(self, routing_key: str, subscriber: Subscriber) -> None:
        """Stop fanning out to ``subscriber``. Idempotent. The route (and its replay buffer)
        stays while its binding is still wanted (a lingering SSE channel)."""
        route = self.routes.get(routing_key)
        if route is None:
            return
        removed = route.websocket.pop(id(subscriber), None) or route.sse.pop(id(subscriber), None)
        if removed is not None:
            route.stale = True
        if route.empty and routing_key not in self._demand:
            del self.routes[routing_key]

    def replay_since(self, routing_key: str, last_event_id: str) -> list[ReplayItem] | None:
        """The SSE events of ``routing_key`` this process holds after ``last_event_id``, oldest
        first (see ``ReplayBuffer.since``); None when that id is not held. Call right after
        ``attach`` with no ``await`` in between, so no event is missed or repeated."""
        route = self.routes.get(routing_key)
        if route is None or route.replay is None:
            return None
        return route.replay.since(last_event_id)

    def status(self) -> dict[str, Any]:
        """Counts for ``/gateway/status``: connection state, routes, bindings, drops."""
        return {
            "connected": self.connected,
            "queue": self.queue_name if self._queue is not None else None,
            "reconnects": self.reconnects,
            "routes": len(self.routes),
            "websocket_subscribers": sum(len(r.websocket) for r in self.routes.values()),
            "sse_subscribers": sum(len(r.sse) for r in self.routes.values()),
            "bindings": len(self._bound),
            "binding_demand": sum(self._demand.values()),
            "lingering": sum(len(r.lingering) for r in self.routes.values()),
            "replay_events": sum(len(r.replay.events) for r in self.routes.values() if r.replay),
            "dropped": dict(self.dropped),
            "max_message_bytes": self.max_bytes,
        }

    async def _reconcile(self, routing_key: str) -> None:
        # Serialised, and decided on the state at the time of the call, so a bind racing an
        # unbind of the same key always ends with the binding the current demand asks for.
        async with self._bind_lock:
            wanted = routing_key in self._demand
            if wanted == (routing_key in self._bound) or self._queue is None:
                return
            try:
                if wanted:
                    await self._queue.bind(self._exchange, routing_key, timeout=10)  # type: ignore[arg-type]
                    self._bound.add(routing_key)
                else:
                    await self._queue.unbind(self._exchange, routing_key, timeout=10)  # type: ignore[arg-type]
                    self._bound.discard(routing_key)
            except Exception as exc:
                raise BrokerUnavailable(
                    f"cannot {'bind' if wanted else 'unbind'} {routing_key}: {exc}"
                ) from exc

    async def _on_connection_lost(self, sender: Any = None, exc: BaseException | None = None) -> None:
        if isinstance(exc, asyncio.CancelledError):
            # The event loop is shutting down (SIGTERM): nothing was lost, nothing reconnects.
            log.info("Gateway bridge closed its RabbitMQ connection (shutting down)")
            return
        # aio-pika calls this after every failed reconnection attempt too: log the first only.
        if not self._lost:
            self._lost = True
            log.warning(
                "Gateway bridge lost its RabbitMQ connection; reconnecting (events meanwhile are lost)"
            )
            self._gaps_mark()

    def _gaps_mark(self) -> None:
        """Tell SSE streams (open ones now, resuming ones through the replay buffer) that the
        events published until the reconnection are missed."""
        for route in self.routes.values():
            if route.replay is None:
                continue
            notice = sse_gap(route.replay.last_event_id, REASON_GAP_BROKER)
            route.replay.mark_gap(notice)
            for subscriber in tuple(route.sse.values()):
                tell = getattr(subscriber, "notice", None)
                if tell is not None:
                    tell(notice)

    async def _on_reconnect(self, *args: Any) -> None:
        # aio-pika re-declares the queue and restores recorded bindings; drop those nobody
        # needs any more (an unbind that failed while RabbitMQ was down).
        self.reconnects += 1
        self._lost = False
        log.info("Gateway bridge reconnected to RabbitMQ; %d bindings restored", len(self._bound))
        for routing_key in tuple(self._bound - set(self._demand)):
            try:
                await self._reconcile(routing_key)
            except BrokerUnavailable as exc:
                log.warning("%s", exc)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        """Fan one event out to this process's subscribers of its routing key (the hot path)."""
        route = self.routes.get(message.routing_key or "")
        if route is None:
            return
        event_id = message.message_id or ""
        # Parsed once: the frame's "published_at" and the latency histogram both use it.
        published = published_seconds(message.headers.get("eg-published-at"))
        try:
            frame = frame_build(
                event_id=event_id,
                channel_fragment=route.channel_fragment,
                published_at=published,
                body=message.body,
                max_bytes=self.max_bytes,
            )
        except EventTooLarge as too_large:
            self._drop(message, "oversize", str(too_large))
            _rejected(route)
            return
        except ValueError as invalid:
            self._drop(message, "invalid", str(invalid))
            _rejected(route)
            return
        size = len(frame) if frame.isascii() else len(frame.encode())
        if size > self.max_bytes:
            self._drop(
                message, "oversize", f"frame of {size:,} bytes is over the {self.max_bytes:,}-byte limit"
            )
            _rejected(route)
            return
        now = time.time()
        minute = int(now) // 60
        # Publish → deliver latency (gateway.metering): the bucket of "now" for the fast path,
        # the timestamp for deliveries the outbox queues (measured when they are sent).
        latency = latency_bucket(published, now) if published is not None else -1
        if route.stale:
            route.refresh()
        if route.websocket:
            # "wire": the frame's bytes on the wire, built once for all (gateway.wire fast path).
            outgoing = {
                "type": "websocket.send",
                "text": frame,
                "wire": text_frame(frame.encode()),
                "lat": latency,
                "published_at": published,
            }
            for call in route.ws_calls:
                try:
                    call(outgoing, size, minute)
                except Exception as exc:  # noqa: BLE001 - one broken subscriber must not stop the fan-out
                    self._failed(message, call, minute, exc)
            for deliver in route.ws_awaits:
                try:
                    await deliver(outgoing, size, minute)
                except Exception as exc:  # noqa: BLE001 - one broken subscriber must not stop the fan-out
                    self._failed(message, deliver, minute, exc)
        if route.replay is not None:
            chunk = {
                "type": "http.response.body",
                "body": sse_event(event_id, frame),
                "more_body": True,
                "published_at": published,
            }
            route.replay.append(event_id, chunk, size)
            for call in route.sse_calls:
                try:
                    call(chunk, size, minute)
                except Exception as exc:  # noqa: BLE001
                    self._failed(message, call, minute, exc)
            for deliver in route.sse_awaits:
                try:
                    await deliver(chunk, size, minute)
                except Exception as exc:  # noqa: BLE001
                    self._failed(message, deliver, minute, exc)

    def _failed(self, message: AbstractIncomingMessage, deliver: Any, minute: int, exc: Exception) -> None:
        """One subscriber's delivery raised: count it (``Bridge.dropped["failed"]``) and, when the
        subscriber is a ``ChannelFeed``, as a failed event of its subscription and channel."""
        self._drop(message, "failed", f"delivery failed: {exc!r}")
        feed = getattr(deliver, "__self__", None)
        subscription_id = getattr(feed, "subscription_id", None)
        if subscription_id is not None:
            get_meter().error((subscription_id, feed.channel_template, "out", minute), FAILED)

    def _drop(self, message: AbstractIncomingMessage, reason: str, detail: str) -> None:
        """Count a dropped event; log the first and then one summary a minute, so a misbehaving
        publisher cannot flood the log from the event loop."""
        self.dropped[reason] += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= 60:
            log.warning(
                "Dropped event %s on %s: %s (dropped in this process so far: %s)",
                message.message_id,
                message.routing_key,
                detail,
                ", ".join(f"{n} {name}" for name, n in self.dropped.items()),
            )
            self._drop_logged_at = now


def _rejected(route: Route) -> None:
    """An event of ``route`` the gateway refused (too large, not valid JSON): one rejected
    event for each subscriber's subscription and channel (``gateway.metering``), as analytics
    shows them. Rare, so the loop over the route's subscribers is fine here."""
    minute = int(time.time()) // 60
    meter = get_meter()
    for deliver in (*route.ws_calls, *route.ws_awaits, *route.sse_calls, *route.sse_awaits):
        feed = getattr(deliver, "__self__", None)
        if getattr(feed, "subscription_id", None) is not None:
            meter.error((feed.subscription_id, feed.channel_template, "out", minute), REJECTED)


_bridges: dict[asyncio.AbstractEventLoop, Bridge] = {}


def get_bridge() -> Bridge:
    """The bridge of the running event loop (one per process under uvicorn; tests get one per loop)."""
    loop = asyncio.get_running_loop()
    bridge = _bridges.get(loop)
    if bridge is None:
        for old_loop in [old for old in _bridges if old.is_closed()]:
            del _bridges[old_loop]
        bridge = _bridges[loop] = Bridge()
    return bridge
