"""WebSocket consumers of the gateway (docs/gateway.md).

- ``EventStreamConsumer``: ``/ws/<api slug>/<version>/<channel address>``, one channel. Its
  events arrive as text frames; where the channel has a ``send`` operation and the credential
  may send, each client text frame is one event's payload.
- ``MultiplexConsumer``: ``/ws/<api slug>/<version>``, several channels of one API version over
  one socket, with ``subscribe``/``unsubscribe``/``publish`` frames answered by ``ack`` or
  ``error`` frames.
- ``NoRouteConsumer``: any other ``/ws/`` path (4404).

Refusals follow one contract (``gateway.auth``): the handshake is accepted (echoing the
``eventgate.v1`` subprotocol when offered, never the credential entry) and closed at once with a
4400-4429 code and a reason, so every client, browsers included, can tell the cases apart. No
broker binding or queue, no metering for a refused handshake. Open connections close with:

- 4401 credential revoked or expired; 4403 subscription suspended, cancelled or otherwise ended;
  4408 the plan's connection duration limit reached; 4409 business plan changed; 4410 API
  blocked or retired, version retired; 4429 a throttling limit reached under a plan that closes
  stopped clients, or quota used up (audit) — through control messages over the Channels
  layer (``gateway.control``), and the periodic audit
  (``gateway.connections.live_connections_audit``) for what sends none;
- 1008 a binary frame; 1009 a frame over ``GATEWAY_MAX_MESSAGE_BYTES`` (uvicorn itself);
  1011 internal error; 1013 RabbitMQ unreachable at the handshake, or a slow consumer under the
  "close" policy (``gateway.delivery``).

Throttling (``gateway.throttling``, docs/throttling.md): the handshake takes a connection slot
and the subscription's first lease (4429 when a connection limit or the quota is reached); a
stopped event is counted, and the client gets one ``{"type": "throttled", ...}`` frame per stop
(or 4429, as the plan says); a stopped client event gets an error frame with code 4429.

Events reach clients through a per-connection ``gateway.delivery.Outbox``: the bridge's fan-out
only enqueues (``ChannelFeed``), so no client's socket can stall others; replies (ack and error
frames) go through the same outbox, in order with the events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from channels.db import aclose_old_connections
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from gateway.auth import (
    CLOSE_BAD_REQUEST,
    CLOSE_NOT_FOUND,
    CLOSE_UNAUTHORIZED,
    ChannelGrant,
    Grant,
    HandshakeRefused,
    channel_authorize,
    close_reason,
    version_channels,
)
from gateway.bridge import Bridge, BrokerUnavailable, get_bridge
from gateway.capture import close_by_client_reason, connection_capture, handshake_capture
from gateway.connections import LiveConnection, db_call, live_add, live_discard
from gateway.credentials import credential_from_scope
from gateway.delivery import ChannelFeed, Outbox
from gateway.inbound import PayloadInvalid, get_inbound_publisher, payload_parse
from gateway.metering import FAILED, REJECTED, get_meter
from gateway.publishing import address_normalize
from gateway.schemas import payload_error
from gateway.throttling import CLOSE_THROTTLED, SubscriptionThrottle, notice_data

log = logging.getLogger(__name__)

CLOSE_POLICY_VIOLATION = 1008  # RFC 6455 §7.4.1
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
REASON_BINARY = "Binary frames are not accepted: send events and control frames as JSON text."
REASON_BROKER_DOWN = "Event backbone unavailable; try again later."
REASON_NO_ROUTE = "Not a gateway route: use /ws/<api>/<version>/<channel address> or /ws/<api>/<version>."
# Multiplexed mode: channels one connection may subscribe to at once, and the length of the
# ``id`` a client may tag a frame with (echoed in the reply).
MAX_CHANNELS_PER_CONNECTION = 100
MAX_FRAME_ID_CHARS = 200
# Payloads up to this size (bytes) whose schemas have no slow keyword (``ChannelGrant.
# payload_check_slow``) are validated on the event loop; others in a worker thread.
_INLINE_VALIDATION_BYTES = 64 * 1024
_FRAME_TYPES = ("subscribe", "unsubscribe", "publish")
# Whether a disconnect is closing the sync thread's stale database connections right now.
_closing_old_connections = False


class GatewayConsumer(LiveConnection, AsyncWebsocketConsumer):
    """What both modes share: the handshake, control messages, channel bindings, client events.

    Subclasses say what the URL names (``_address``) and what a text frame is (``receive``).
    """

    grant: Grant | None = None
    bridge: Bridge | None = None
    outbox: Outbox | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.feeds: dict[str, tuple[ChannelGrant, ChannelFeed]] = {}  # address → its subscription
        self._subprotocol: str | None = None
        self._ending = False
        self._finished = False

    def _address(self) -> str | None:
        """The channel address in the URL (None: multiplexed mode)."""
        raise NotImplementedError

    # --- handshake ------------------------------------------------------------------------

    async def connect(self) -> None:
        route = self.scope["url_route"]["kwargs"]
        secret, self._subprotocol = credential_from_scope(self.scope)
        try:
            grant = await self._handshake(
                secret=secret, api_slug=route["api"], version=route["version"], address=self._address()
            )
        except HandshakeRefused as refusal:
            await self._refuse(refusal)
            return
        await self._open(grant)

    async def _refuse(self, refusal: HandshakeRefused) -> None:
        """Accept, then close at once with the refusal's code and reason (the contract)."""
        credential = refusal.credential
        # %r: the path comes from the client; repr keeps it on one log line, and the cut keeps
        # a 6 KB address from filling the log. The credential appears as kind and id only.
        log.info(
            "Refused handshake for %.300r from %s (%s): %d %s",
            self.scope["path"],
            self._peer(),
            f"{credential.kind} {credential.id}" if credential else "no credential",
            refusal.code,
            refusal.reason,
        )
        handshake_capture(self, protocol="websocket", refusal=refusal)
        await self.accept(self._subprotocol)
        await self.close(code=refusal.code, reason=refusal.reason)

    async def _open(self, grant: Grant) -> None:
        """Bind the URL's channel (if it may receive), accept, start the outbox writer."""
        try:
            await self._throttling_admit(grant)
        except HandshakeRefused as refusal:
            await self._refuse(refusal)
            return
        self.bridge = get_bridge()
        self.outbox = Outbox(send=self.base_send, close=self.close)
        self.outbox.on_throttled = self._throttled
        channel = grant.channel
        if channel is not None:
            self.templates = frozenset((channel.channel_template,))
        if channel is not None and grant.refusal(channel, "receive") is None:
            try:
                # Before accept: every event published once the client saw 101 is delivered
                # (queued in the outbox until its writer starts).
                await self._channel_bind(channel)
            except BrokerUnavailable as exc:
                log.warning("WebSocket %r closed with 1013: %s", self.scope["path"], exc)
                handshake_capture(
                    self,
                    protocol="websocket",
                    refusal=HandshakeRefused(CLOSE_TRY_AGAIN_LATER, REASON_BROKER_DOWN),
                )
                await self.accept(self._subprotocol)
                await self.close(code=CLOSE_TRY_AGAIN_LATER, reason=REASON_BROKER_DOWN)
                return
        await self.accept(self._subprotocol)
        self.outbox.start()
        live_add(self)
        handshake_capture(self, protocol="websocket")
        self._expiry_schedule(grant)
        log.info(
            "WebSocket open: subscription %s, %s %s %s",
            grant.subscription_id,
            grant.api_slug,
            grant.version,
            channel.address if channel else "(multiplexed)",
        )

    # --- channels -------------------------------------------------------------------------

    async def _channel_bind(self, channel: ChannelGrant) -> None:
        """Bind ``channel`` on the broker (returns once the binding exists), then attach a feed
        to this connection's outbox. Raises ``BrokerUnavailable``."""
        assert self.bridge is not None and self.outbox is not None and self.grant is not None
        await self.bridge.bind(channel.routing_key)
        policy = self.grant.policy
        feed = ChannelFeed(
            self.outbox,
            subscription_id=self.grant.subscription_id,
            channel_template=channel.channel_template,
            throttle=self.throttle if policy is not None and policy.counts("out") else None,
        )
        self.bridge.attach(channel.routing_key, channel.address, feed)
        self.feeds[channel.address] = (channel, feed)
        self.templates = self.templates | {channel.channel_template}

    def _channel_detach(self, address: str) -> ChannelGrant | None:
        """Stop this connection's events of ``address`` at once (no await); returns its grant
        for ``_channel_unbind``."""
        entry = self.feeds.pop(address, None)
        if entry is None or self.bridge is None:
            return None
        channel, feed = entry
        self.bridge.detach(channel.routing_key, feed)
        feed.detach()
        return channel

    async def _channel_unbind(self, channel: ChannelGrant) -> None:
        assert self.bridge is not None
        await self.bridge.unbind(channel.routing_key)

    # --- ending ---------------------------------------------------------------------------

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close with ``code`` and ``reason`` (cut to 123 bytes): stop the outbox and the feeds
        first, so nothing is delivered or metered after the decision; bindings go in
        ``disconnect``. Idempotent. (The control handlers of ``gateway.connections.LiveConnection``
        call only ``close``.)"""
        if self._ending:
            return
        self.close_note(code if isinstance(code, int) and not isinstance(code, bool) else 1000, reason)
        self._ending = True
        live_discard(self)
        self._throttling_release()  # the slot is free before the client hears the close
        if self.outbox is not None:
            self.outbox.stop()
        if self.bridge is not None:
            for channel, feed in self.feeds.values():
                self.bridge.detach(channel.routing_key, feed)
        if self.grant is not None and code not in (None, 1000):
            log.info(
                "Closing WebSocket of subscription %s with %s: %s", self.grant.subscription_id, code, reason
            )
        try:
            await super().close(code=code, reason=close_reason(reason) if reason else None)
        except Exception as exc:  # noqa: BLE001 - the socket is gone already: disconnect cleans up
            log.debug("Close after the client left: %r", exc)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """The client or the server ended the connection: clean up and stop. As in Channels,
        then close the stale database connections of the sync thread (``sync_to_async`` work
        of others; the gateway's own runs in ``gateway.connections.db_call``)."""
        self.close_note(message.get("code"), close_by_client_reason(message.get("code")))
        await self._finish()
        global _closing_old_connections
        if not _closing_old_connections:  # one at a time is enough: it is a sweep of one thread
            _closing_old_connections = True
            try:
                await aclose_old_connections()
            finally:
                _closing_old_connections = False
        raise StopConsumer()

    async def disconnect(self, code: int) -> None:
        await self._finish()

    async def _finish(self) -> None:
        """Release what the connection holds: registry, expiry timer, outbox, feeds and their
        bindings, control groups. Runs however the connection ends (``LiveConnection.__call__``:
        the client left, an exception, Redis down); idempotent; one failure does not stop the
        rest."""
        if self._finished:
            return
        self._finished = self._ending = True
        live_discard(self)
        self._expiry_cancel()
        self._throttling_release()
        if self.outbox is not None:
            self.outbox.stop()
        for address in list(self.feeds):
            channel = self._channel_detach(address)
            if channel is not None:
                try:
                    await self._channel_unbind(channel)
                except Exception:  # noqa: BLE001 - the next binding must still go
                    log.exception("Unbinding %s failed", channel.routing_key)
        self._groups_leave()
        connection_capture(self, protocol="websocket")

    def live_templates(self) -> set[str]:
        """The channel templates of the feeds attached now and of the URL's channel."""
        return {channel.channel_template for channel, _ in self.feeds.values()} | super().live_templates()

    # --- client frames --------------------------------------------------------------------

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        if self._ending or self.grant is None:
            return  # frames that crossed our close frame
        if message.get("text") is None:
            await self.close(CLOSE_POLICY_VIOLATION, REASON_BINARY)
            return
        try:
            await self.receive(text_data=message["text"])
        except Exception:
            log.exception("Client frame failed on %r", self.scope["path"])
            await self.close(CLOSE_INTERNAL_ERROR, "Internal error.")

    async def _client_event(
        self, channel: ChannelGrant, payload: Any, body: bytes, *, frame_id: Any = None
    ) -> bool:
        """Check, validate, publish and meter one client event; reply with an error frame (or
        close with 4401 for an expired credential) when refused. Returns whether it was taken."""
        assert self.grant is not None
        key = (self.grant.subscription_id, channel.channel_template, "in", int(time.time()) // 60)
        refusal = self.grant.refusal(channel, "send")
        if refusal is not None:
            if refusal.code == CLOSE_UNAUTHORIZED:
                await self.close(refusal.code, refusal.reason)
            else:
                get_meter().error(key, REJECTED)
                self._error(refusal.code, refusal.reason, frame_id=frame_id, channel=channel.address)
            return False
        if self.grant.validate_payloads and channel.payload_schemas:
            if len(body) <= _INLINE_VALIDATION_BYTES and not channel.payload_check_slow:
                failure = payload_error(channel.payload_schemas, payload)
            else:
                # Provider patterns may use their whole time budget (0.1 s) per event, and
                # jsonschema is pure Python: in a worker thread, so the event loop keeps serving
                # every other connection meanwhile (the regex module releases the GIL).
                failure = await asyncio.to_thread(payload_error, channel.payload_schemas, payload)
            if failure is not None:
                pointer, reason = failure
                get_meter().error(key, REJECTED)
                self._error(
                    CLOSE_BAD_REQUEST, reason, frame_id=frame_id, channel=channel.address, pointer=pointer
                )
                return False
        policy, throttle = self.grant.policy, self.throttle
        if throttle is not None and policy is not None and policy.counts("in"):
            if not await throttle.wait(len(body)):
                get_meter().throttle(key, len(body))
                if policy.limit_notice == "close":
                    self._throttled_close(throttle)
                else:
                    notice = notice_data(throttle)
                    self._error(
                        CLOSE_THROTTLED,
                        f"{notice['reason']}; retry after {notice['retry_after']} s",
                        frame_id=frame_id,
                        channel=channel.address,
                    )
                return False
        try:
            await get_inbound_publisher().publish(grant=self.grant, channel=channel, body=body)
        except BrokerUnavailable as exc:
            log.warning("Client event on %s not published: %s", channel.routing_key, exc)
            get_meter().error(key, FAILED)
            self._error(CLOSE_TRY_AGAIN_LATER, REASON_BROKER_DOWN, frame_id=frame_id, channel=channel.address)
            return False
        get_meter().add(key, len(body))
        self.events_in += 1
        self.bytes_in += len(body)
        self.templates = self.templates | {channel.channel_template}
        return True

    def _throttled(self, throttle: SubscriptionThrottle) -> None:
        """The outbox stopped an event (once per stop): send the documented notice frame
        (``gateway.throttling.notice_data``, with the channel of this connection when it has
        one) or, for plans that close stopped clients, close with 4429."""
        policy = throttle.policy
        if policy.limit_notice == "close":
            self._throttled_close(throttle)
            return
        self._reply(notice_data(throttle))

    def _reply(self, frame: dict[str, Any]) -> None:
        """Queue an ack or error frame behind the events already queued (never waits).

        ASCII JSON: a frame echoes client text (channel, id), which the socket must always be
        able to send, whatever it holds."""
        if self.outbox is None:
            return
        text = json.dumps(frame, separators=(",", ":"))
        if not self.outbox.enqueue({"type": "websocket.send", "text": text}):
            log.debug("Reply to a full or closed outbox dropped: %s", text[:200])

    def _error(
        self,
        code: int,
        reason: str,
        *,
        frame_id: Any = None,
        channel: str | None = None,
        pointer: str | None = None,
    ) -> None:
        frame: dict[str, Any] = {"type": "error"}
        if frame_id is not None:
            frame["id"] = frame_id
        frame.update(code=code, reason=reason)
        if channel is not None:
            frame["channel"] = channel
        if pointer is not None:
            frame["pointer"] = pointer
        self._reply(frame)


class EventStreamConsumer(GatewayConsumer):
    """One channel: ``/ws/<api slug>/<version>/<channel address>``.

    Server → client: one text frame per event,
    ``{"id": str, "channel": str, "published_at": float seconds | null, "payload": any}`` (built
    once per event by ``gateway.bridge``), metered as one event and the frame's UTF-8 length in
    bytes under the subscription and channel template once handed to the socket.
    Client → server (channels with a send operation the credential may use): each text frame is
    one event's payload (a JSON value); nothing is answered on success, an error frame
    ``{"type": "error", "code", "reason"[, "pointer"]}`` on a rejected event.
    """

    def _address(self) -> str | None:
        return self.scope["url_route"]["kwargs"]["address"]

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        assert self.grant is not None and self.grant.channel is not None and text_data is not None
        try:
            payload = payload_parse(text_data)
        except PayloadInvalid as invalid:
            minute = int(time.time()) // 60
            get_meter().error(
                (self.grant.subscription_id, self.grant.channel.channel_template, "in", minute), REJECTED
            )
            self._error(CLOSE_BAD_REQUEST, str(invalid), channel=self.grant.channel.address)
            return
        await self._client_event(self.grant.channel, payload, text_data.encode())


class MultiplexConsumer(GatewayConsumer):
    """Several channels of one API version: ``/ws/<api slug>/<version>``.

    Client → server, JSON text frames (``id`` optional, a string or integer echoed in the reply)::

        {"type": "subscribe", "channel": "prices/ACME", "id": "c1"}
        {"type": "unsubscribe", "channel": "prices/ACME", "id": "c2"}
        {"type": "publish", "channel": "orders", "payload": {...}, "id": "c3"}

    Server → client: ``{"type": "ack", "id", "channel"}`` or ``{"type": "error", "id", "code",
    "reason", "channel"[, "pointer"]}`` with the refusal contract's codes (4400 malformed frame or
    bad parameter, 4404 unknown channel, 4405 direction not allowed, 1013 broker unavailable);
    events are the usual event frames (no ``type`` key). A subscribe's ack comes before any of
    that channel's events; after an unsubscribe's ack none comes. At most
    ``MAX_CHANNELS_PER_CONNECTION`` channels at once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (address, direction) → its ChannelGrant or refusal; bounded, cleared when full.
        self._channels: dict[tuple[str, str], ChannelGrant | HandshakeRefused] = {}

    def _address(self) -> str | None:
        return None

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        assert text_data is not None
        frame = self._frame_parse(text_data)
        if frame is None:
            return
        kind, address, frame_id = frame["type"], frame["channel"], frame.get("id")
        direction = "receive" if kind in ("subscribe", "unsubscribe") else "send"
        if kind == "unsubscribe":
            await self._unsubscribe(address, frame_id)
            return
        channel = await self._channel_lookup(address, direction)
        if isinstance(channel, HandshakeRefused):
            self._error(channel.code, channel.reason, frame_id=frame_id, channel=address)
        elif kind == "subscribe":
            await self._subscribe(channel, frame_id)
        else:
            payload = frame["payload"]
            # payload_parse refused what cannot be written back (NaN, 1e999, lone surrogates).
            body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
            if await self._client_event(channel, payload, body, frame_id=frame_id):
                self._reply({"type": "ack", "id": frame_id, "channel": channel.address})

    def _frame_parse(self, text: str) -> dict[str, Any] | None:
        """The control frame in ``text``, or None after replying with a 4400 error frame."""
        try:
            frame = payload_parse(text)
        except PayloadInvalid as invalid:
            self._error(CLOSE_BAD_REQUEST, f"malformed frame: {invalid}")
            return None
        if not isinstance(frame, dict):
            self._error(
                CLOSE_BAD_REQUEST, "a frame is a JSON object with a type: subscribe, unsubscribe or publish"
            )
            return None
        frame_id = frame.get("id")
        valid_id = (isinstance(frame_id, str) and len(frame_id) <= MAX_FRAME_ID_CHARS) or (
            isinstance(frame_id, int) and not isinstance(frame_id, bool)
        )
        if frame_id is not None and not valid_id:
            self._error(
                CLOSE_BAD_REQUEST,
                f"id must be a string of at most {MAX_FRAME_ID_CHARS} characters or an integer",
            )
            return None
        if frame.get("type") not in _FRAME_TYPES:
            self._error(
                CLOSE_BAD_REQUEST,
                f"unknown frame type {str(frame.get('type'))[:40]!r}: "
                "expected subscribe, unsubscribe or publish",
                frame_id=frame_id,
            )
            return None
        if not isinstance(frame.get("channel"), str) or not frame["channel"].strip("/"):
            self._error(
                CLOSE_BAD_REQUEST,
                f"a {frame['type']} frame needs a channel: a concrete address such as prices/ACME",
                frame_id=frame_id,
            )
            return None
        if frame["type"] == "publish" and "payload" not in frame:
            self._error(
                CLOSE_BAD_REQUEST,
                "a publish frame needs a payload",
                frame_id=frame_id,
                channel=frame["channel"],
            )
            return None
        return frame

    async def _subscribe(self, channel: ChannelGrant, frame_id: Any) -> None:
        if channel.address not in self.feeds:
            if len(self.feeds) >= MAX_CHANNELS_PER_CONNECTION:
                self._error(
                    CLOSE_BAD_REQUEST,
                    f"at most {MAX_CHANNELS_PER_CONNECTION} channels per connection: unsubscribe one first",
                    frame_id=frame_id,
                    channel=channel.address,
                )
                return
            try:
                await self._channel_bind(channel)
            except BrokerUnavailable as exc:
                log.warning("Subscribe to %s failed: %s", channel.routing_key, exc)
                self._error(
                    CLOSE_TRY_AGAIN_LATER, REASON_BROKER_DOWN, frame_id=frame_id, channel=channel.address
                )
                return
            if self._ending:  # closed while binding: disconnect may have run already
                detached = self._channel_detach(channel.address)
                if detached is not None:
                    await self._channel_unbind(detached)
                return
        # No await between the attach and this: the ack is queued before any of its events.
        self._reply({"type": "ack", "id": frame_id, "channel": channel.address})

    async def _unsubscribe(self, address: str, frame_id: Any) -> None:
        address = address_normalize(address)
        channel = self._channel_detach(address)
        if channel is None:
            self._error(
                CLOSE_BAD_REQUEST, f"not subscribed to {address[:100]!r}", frame_id=frame_id, channel=address
            )
            return
        self._reply({"type": "ack", "id": frame_id, "channel": address})
        await self._channel_unbind(channel)

    async def _channel_lookup(self, address: str, direction: str) -> ChannelGrant | HandshakeRefused:
        """The ``ChannelGrant`` of ``address`` for ``direction``, or why not (cached per
        connection: a publishing client does not query the database per event)."""
        key = (address_normalize(address), direction)
        cached = self._channels.get(key)
        if cached is None:
            cached = await self._channel_authorize(key[0], direction)
            if len(self._channels) >= 2 * MAX_CHANNELS_PER_CONNECTION:
                self._channels.clear()
            self._channels[key] = cached
        return cached

    async def _channel_authorize(self, address: str, direction: str) -> ChannelGrant | HandshakeRefused:
        """``gateway.auth.channel_authorize`` in a worker thread (``db_call``): the version's
        channels are usually cached, so no query."""
        assert self.grant is not None
        return await db_call(_channel_authorize, self.grant, address, direction)


def _channel_authorize(grant: Grant, address: str, direction: str) -> ChannelGrant | HandshakeRefused:
    try:
        channels = version_channels(grant.api_version_id)
        return channel_authorize(grant=grant, channels=channels, address=address, directions=(direction,))
    except HandshakeRefused as refusal:
        return refusal


class NoRouteConsumer(AsyncWebsocketConsumer):
    """Refuses WebSocket handshakes on paths that are not gateway routes: accepted, then closed
    with 4404 (the refusal contract)."""

    async def connect(self) -> None:
        log.info("Refused WebSocket handshake for %.300r: not a gateway route", self.scope["path"])
        _, subprotocol = credential_from_scope(self.scope)
        await self.accept(subprotocol)
        await self.close(code=CLOSE_NOT_FOUND, reason=REASON_NO_ROUTE)
