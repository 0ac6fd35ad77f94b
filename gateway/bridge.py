"""The broker bridge: one AMQP connection per gateway process, local fan-out to WebSocket consumers.

Shape (see also ``docs/gateway.md``):

- one robust aio-pika connection per process and event loop, opened lazily by the first
  subscriber, reconnecting by itself (every second) after RabbitMQ drops it;
- one exclusive, auto-delete, server-local queue per process (RabbitMQ deletes it when the
  connection goes), consumed with ``no_ack`` (events are live data: nothing to redeliver);
- one binding per concrete channel (routing key, ``gateway.publishing.routing_key``) while at
  least one local subscriber needs it; added by ``bind`` before the handshake is accepted, so a
  client that saw its handshake complete receives every event published afterwards;
- per event: one dict lookup by routing key, the client frame built once by string
  concatenation around the raw body, the same ASGI ``websocket.send`` message handed to every
  local subscriber. No ORM, no Redis, no channel layer on this path.

Frame (one WebSocket text frame, RFC 6455 §5.6)::

    {"id":"<event id>","channel":"prices/ACME","published_at":1764400000.123,"payload":<body>}

Events published while the connection is down are lost for this process (they are live data).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
    AbstractRobustQueue,
)

from gateway.publishing import amqp_connect, exchange_declare

log = logging.getLogger(__name__)

# ``json.dumps`` of a str without the dict machinery: escapes and quotes, ASCII only.
_json_str = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


class BrokerUnavailable(Exception):
    """RabbitMQ could not be reached or refused a declaration/binding."""


class Subscriber(Protocol):
    """What the bridge fans out to (a WebSocket consumer, later SSE and webhooks)."""

    async def deliver(self, message: dict[str, Any], size: int, minute: int) -> None:
        """Send ``message`` (an ASGI ``websocket.send`` dict shared by all subscribers; do not
        mutate it) of ``size`` bytes (UTF-8 frame length); ``minute`` is Unix time // 60."""


@dataclass(slots=True)
class Route:
    """Local subscribers of one concrete channel, and the frame text that follows the event id."""

    channel_fragment: str  # ',"channel":"prices/ACME","published_at":'
    subscribers: tuple[Subscriber, ...] = ()


def timestamp_json(value: Any) -> str:
    """The ``eg-published-at`` header as a JSON number of seconds, or ``null`` if absent or bad.

    Accepts the decimal string ``gateway.publishing`` sends (``"1764400000.123456"``, as str or
    bytes) and AMQP numbers from other clients.
    """
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return "null"
    return repr(seconds) if math.isfinite(seconds) else "null"


# Larger bodies are dropped before parsing, so one huge event cannot stall the event loop.
MAX_EVENT_BYTES = 1024 * 1024


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def frame_build(*, event_id: str, channel_fragment: str, published_at: Any, body: bytes) -> str:
    """The client frame for one event, by concatenation around the raw JSON ``body``.

    ``published_at`` is the ``eg-published-at`` header (see ``timestamp_json``). The body is
    parsed once (not re-serialized) so that only one whole JSON value is spliced in: a body such
    as ``0,"channel":"other"`` could otherwise forge frame fields. Raises ``ValueError`` if the
    body is not UTF-8 (RFC 6455 §5.6: text frames are UTF-8) or not exactly one JSON value
    (RFC 8259: ``NaN`` and ``Infinity`` are not JSON; nesting too deep to parse is refused too).
    """
    if len(body) > MAX_EVENT_BYTES:
        raise ValueError(f"body of {len(body):,} bytes is over the {MAX_EVENT_BYTES:,}-byte limit")
    text = body.decode() if body else "null"
    try:
        json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("event body nested too deeply") from None
    head = '{"id":' + _json_str(event_id) + channel_fragment + timestamp_json(published_at)
    return head + ',"payload":' + text + "}"


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
        self.dropped = 0  # events dropped (bad body, failed delivery); analytics will count them
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
            self._connection, self._queue = connection, queue  # type: ignore[assignment]
            log.info("Gateway bridge connected; queue %s", self.queue_name)

    async def close(self) -> None:
        """Close the connection (RabbitMQ then deletes the queue and its bindings)."""
        if self._connection is not None:
            await self._connection.close()
        self._connection = self._exchange = self._queue = None
        self._bound.clear()

    async def bind(self, routing_key: str) -> None:
        """Ask for events of ``routing_key``; returns once the broker binding exists.

        Reference-counted: each ``bind`` needs one ``unbind``. Raises ``BrokerUnavailable``.
        """
        await self.start()
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
        try:
            await self._reconcile(routing_key)
        except BrokerUnavailable as exc:
            # Kept in _bound: the next reconnect or bind of this key retries the unbind.
            log.warning("Could not unbind %s: %s", routing_key, exc)

    def attach(self, routing_key: str, channel: str, subscriber: Subscriber) -> None:
        """Start fanning events of ``routing_key`` out to ``subscriber`` (call after ``bind``).

        ``channel`` is the concrete address shown in frames, e.g. ``prices/ACME``.
        """
        route = self.routes.get(routing_key)
        if route is None:
            route = self.routes[routing_key] = Route(',"channel":' + _json_str(channel) + ',"published_at":')
        # Copy-on-write: a fan-out in progress keeps iterating over the old tuple.
        route.subscribers = (*route.subscribers, subscriber)

    def detach(self, routing_key: str, subscriber: Subscriber) -> None:
        """Stop fanning out to ``subscriber``. Idempotent."""
        route = self.routes.get(routing_key)
        if route is None:
            return
        route.subscribers = tuple(s for s in route.subscribers if s is not subscriber)
        if not route.subscribers:
            del self.routes[routing_key]

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

    async def _on_reconnect(self, *args: Any) -> None:
        # aio-pika re-declares the queue and restores recorded bindings; drop those nobody
        # needs any more (an unbind that failed while RabbitMQ was down).
        log.info("Gateway bridge reconnected to RabbitMQ")
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
        try:
            frame = frame_build(
                event_id=message.message_id or "",
                channel_fragment=route.channel_fragment,
                published_at=message.headers.get("eg-published-at"),
                body=message.body,
            )
        except ValueError as invalid:
            self._drop(message, str(invalid))
            return
        outgoing = {"type": "websocket.send", "text": frame}
        size = len(frame) if frame.isascii() else len(frame.encode())
        minute = int(time.time()) // 60
        for subscriber in route.subscribers:
            try:
                await subscriber.deliver(outgoing, size, minute)
            except Exception as exc:  # noqa: BLE001 - one broken socket must not stop the fan-out
                self._drop(message, f"delivery failed: {exc!r}")

    def _drop(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Count a dropped event; log the first and then one summary a minute, so a misbehaving
        publisher cannot flood the log from the event loop."""
        self.dropped += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= 60:
            log.warning(
                "Dropped event %s on %s: %s (%d dropped in this process so far)",
                message.message_id,
                message.routing_key,
                reason,
                self.dropped,
            )
            self._drop_logged_at = now


_bridges: dict[asyncio.AbstractEventLoop, Bridge] = {}


def get_bridge() -> Bridge:
    """The bridge of the running event loop (one per process under daphne; tests get one per loop)."""
    loop = asyncio.get_running_loop()
    bridge = _bridges.get(loop)
    if bridge is None:
        for old_loop in [old for old in _bridges if old.is_closed()]:
            del _bridges[old_loop]
        bridge = _bridges[loop] = Bridge()
    return bridge
