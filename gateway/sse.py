"""Server-Sent Events: ``GET /sse/<api slug>/<version>/<channel address>`` streams a channel's events.

The same channels, credentials, handshake checks, control messages and metering as the WebSocket
gateway (``gateway.consumers``); only the framing differs (WHATWG HTML §9.2 Server-sent events;
full contract in ``docs/sse.md``):

- request: ``GET``, credential as ``Authorization: Bearer <secret>`` or ``?access_token=``
  (``gateway.credentials.credential_from_scope``); ``Last-Event-ID`` header (or
  ``?last_event_id=``) to resume;
- refused: an HTTP status and a JSON body ``{"error", "detail", "close_code"}`` (the WebSocket
  close code of the same case, ``REFUSALS``); no broker binding, nothing metered;
- accepted: ``200 text/event-stream``; per event ``id: <event id>`` and ``data: <the WebSocket
  frame>``; a ``: keep-alive`` comment every ``GATEWAY_SSE_KEEPALIVE`` seconds; when the server
  ends the stream (revocation, subscription ended, API unavailable, slow consumer, ...) a last
  ``event: eventgate.close`` whose data is ``{"close_code": <WebSocket code>, "reason": ...}``;
- resume: the bridge keeps a bounded per-channel replay buffer while the channel has SSE
  subscribers and for ``GATEWAY_SSE_LINGER_SECONDS`` after the last leaves; a ``Last-Event-ID``
  this process still holds gets the events after it, in order, before live ones; an id it does
  not hold gets ``event: eventgate.gap`` first. Per process: behind a load balancer resume needs
  sticky sessions.

Each connection has its own ``gateway.delivery.Outbox`` (slow-consumer policy as for WebSocket)
whose writer sends ``http.response.body`` chunks; the chunk of an event is built once per event
by the bridge and shared by every SSE subscriber of the channel.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from typing import Any
from urllib.parse import parse_qs, urlparse

from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from django.conf import settings

from gateway.auth import Grant, HandshakeRefused
from gateway.bridge import Bridge, BrokerUnavailable, get_bridge, sse_gap
from gateway.capture import CLOSED_BY_CLIENT, REFUSALS, connection_capture, handshake_capture
from gateway.connections import LiveConnection, live_add, live_discard
from gateway.consumers import CLOSE_TRY_AGAIN_LATER, REASON_BROKER_DOWN
from gateway.credentials import credential_from_scope
from gateway.delivery import ChannelFeed, Outbox
from gateway.metering import get_meter
from gateway.security import GatewayOriginValidator
from gateway.throttling import SubscriptionThrottle, notice_data

log = logging.getLogger(__name__)

REASON_GAP_NOT_HELD = "Events after this id are no longer held by this server; some may be missed."
KEEPALIVE = {"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True}
# Seconds the last event of a stream (eventgate.close) may wait on a client that does not read.
FINAL_SEND_SECONDS = 5.0
STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-store"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
]


def refusal_response(
    code: int, detail: str, *, error: str | None = None, retry_after: int | None = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The HTTP status, headers and JSON body refusing an SSE request for WebSocket close
    ``code`` (an unknown code is a 403). ``detail`` must be safe to show (never a credential);
    ``error`` replaces the code's usual error name, ``retry_after`` (seconds) the default
    ``Retry-After`` of a 429 or 503 (RFC 9110 §10.2.3)."""
    status, name = REFUSALS.get(code, (403, "forbidden"))
    name = error or name
    body = json.dumps({"error": name, "detail": detail, "close_code": code}).encode()
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    if status == 401:  # RFC 6750 §3: a 401 names the scheme
        headers.append((b"www-authenticate", b'Bearer realm="eventgate"'))
    elif status == 403 and name == "insufficient_scope":
        headers.append((b"www-authenticate", b'Bearer realm="eventgate", error="insufficient_scope"'))
    elif status in (503, 429):
        headers.append((b"retry-after", str(5 if retry_after is None else max(0, retry_after)).encode()))
    return status, headers, body


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin1")
    return None


_origin_validator = None


def _origin_allowed(scope: dict[str, Any]) -> bool:
    """A present ``Origin`` must match ``ALLOWED_HOSTS``, as for WebSocket handshakes
    (``gateway.security``); a missing one (curl, SDKs) is allowed."""
    global _origin_validator
    if _origin_validator is None:
        _origin_validator = GatewayOriginValidator(None)
    origin = _header(scope, b"origin")
    return _origin_validator.valid_origin(urlparse(origin) if origin else None)


class EventSourceConsumer(LiveConnection, AsyncHttpConsumer):
    """Streams one channel's events to one authorized client as Server-Sent Events.

    Shares the WebSocket consumer's handshake (``gateway.auth.handshake_authorize`` and the
    second look after joining the control groups), control groups and handlers, credential
    expiry timer and periodic audit (``gateway.connections.LiveConnection``); they end a
    connection through ``close(code, reason)``, which here sends a last ``eventgate.close`` event
    carrying the same code. Metered like WebSocket: per
    event handed to the socket, 1 event and the frame's UTF-8 length (the ``data``), under the
    subscription and channel template.
    """

    protocol = "sse"
    grant: Grant | None = None
    bridge: Bridge | None = None
    outbox: Outbox | None = None
    feed: ChannelFeed | None = None
    _bound_key: str | None = None  # the routing key bound for this stream, until clean-up
    _streaming = False
    _cleaned = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ending = False

    async def http_request(self, message: dict[str, Any]) -> None:
        if message.get("more_body"):
            return  # a GET has no body worth reading; wait for the last chunk
        if not await self._open():
            await self._cleanup()
            raise StopConsumer()
        # Streaming: the consumer keeps running, dispatching control messages and, at the end,
        # http.disconnect (also sent by the server once the stream's last chunk went out).

    async def http_disconnect(self, message: dict[str, Any]) -> None:
        self.close_note(None, CLOSED_BY_CLIENT)
        await self._cleanup()
        raise StopConsumer()

    async def _open(self) -> bool:
        """Authorize, bind, start the stream. False if refused (the response is sent)."""
        scope = self.scope
        if scope["method"] != "GET":
            await self._refuse(HandshakeRefused(4400, "Server-Sent Events streams are opened with GET."), 405)
            return False
        if not _origin_allowed(scope):
            await self._refuse(HandshakeRefused(4403, "Origin not allowed."))
            return False
        route = scope["url_route"]["kwargs"]
        secret, _ = credential_from_scope(scope)
        try:
            grant = await self._handshake(
                secret=secret,
                api_slug=route["api"],
                version=route["version"],
                address=route["address"],
                require="receive",
            )
        except HandshakeRefused as refusal:
            await self._refuse(refusal)
            return False
        self.bridge = get_bridge()
        try:
            await self.bridge.bind(grant.channel.routing_key)
        except BrokerUnavailable as exc:
            log.warning("SSE request %.300r refused with 503: %s", scope["path"], exc)
            await self._refuse(
                HandshakeRefused(CLOSE_TRY_AGAIN_LATER, REASON_BROKER_DOWN, credential=grant.credential)
            )
            return False
        self._bound_key = grant.channel.routing_key
        try:
            await self._throttling_admit(grant)
        except HandshakeRefused as refusal:
            await self._refuse(refusal)
            return False
        await self._stream(grant)
        return True

    async def _stream(self, grant: Grant) -> None:
        """Send the headers, attach to the bridge, queue the replay (if resuming), start the writer."""
        assert self.bridge is not None and grant.channel is not None
        channel = grant.channel
        await self.send_headers(status=200, headers=STREAM_HEADERS)
        self._streaming = True
        self.outbox = Outbox(send=self.base_send, close=self.close)
        self.outbox.on_throttled = self._throttled
        policy = grant.policy
        self.feed = ChannelFeed(
            self.outbox,
            subscription_id=grant.subscription_id,
            channel_template=channel.channel_template,
            throttle=self.throttle if policy is not None and policy.counts("out") else None,
        )
        # attach and replay_since in one step (no await between): nothing missed, nothing twice.
        self.bridge.attach(channel.routing_key, channel.address, self.feed, framing="sse")
        last_event_id = self._last_event_id()
        if last_event_id is not None:
            held = self.bridge.replay_since(channel.routing_key, last_event_id)
            if held and self.feed.throttle is not None:
                held = await self._replay_throttle(held, channel.channel_template)
            if held is None:
                self.outbox.enqueue(sse_gap(last_event_id, REASON_GAP_NOT_HELD))
            elif held:
                self.outbox.put_batch(
                    {
                        "type": "http.response.body",
                        "body": b"".join(item[1]["body"] for item in held),
                        "more_body": True,
                    },
                    sum(1 for item in held if item[2]),  # gap notices (size 0) are not events
                    sum(item[2] for item in held),
                    int(time.time()) // 60,
                    self.feed,
                )
        self.outbox.start()
        _live_sse.add(self)
        self.templates = frozenset((channel.channel_template,))
        live_add(self)  # the periodic audit covers SSE too
        handshake_capture(self, protocol="sse")
        _keepalive_ensure_running()
        self._expiry_schedule(grant)
        log.info(
            "SSE open: subscription %s, %s %s %s%s",
            grant.subscription_id,
            grant.api_slug,
            grant.version,
            channel.address,
            " (resuming)" if last_event_id else "",
        )

    async def _replay_throttle(self, held: list[Any], channel_template: str) -> list[Any]:
        """The prefix of the replayed ``held`` items (``gateway.bridge.ReplayItem``) the
        subscription's throttle allows, each taken like a live event: a resume never gets past
        a rate limit or a quota. The first event it stops ends the replay; it and the rest are
        counted as throttled, and the client gets the notice."""
        assert self.feed is not None and self.feed.throttle is not None
        throttle = self.feed.throttle
        for index, item in enumerate(held):
            size = item[2]
            if size and not await throttle.wait(size):
                minute = int(time.time()) // 60
                meter = get_meter()
                for stopped in held[index:]:
                    if stopped[2]:
                        key = (self.feed.subscription_id, channel_template, "out", minute)
                        meter.throttle(key, stopped[2])
                self._throttled(throttle)
                return held[:index]
        return held

    def _throttled(self, throttle: SubscriptionThrottle) -> None:
        """The outbox stopped an event (once per stop): an ``eventgate.throttled`` event whose
        data is ``gateway.throttling.notice_data``, or, for plans that close stopped clients,
        the end of the stream (``eventgate.close`` with 4429)."""
        if throttle.policy.limit_notice == "close":
            self._throttled_close(throttle)
            return
        data = json.dumps(notice_data(throttle), separators=(",", ":"))
        self.outbox.enqueue(  # type: ignore[union-attr]
            {
                "type": "http.response.body",
                "body": f"event: eventgate.throttled\ndata: {data}\n\n".encode(),
                "more_body": True,
            }
        )

    def _last_event_id(self) -> str | None:
        value = _header(self.scope, b"last-event-id")
        if value is None:
            query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
            value = (query.get("last_event_id") or [None])[0]
        return value or None

    async def _refuse(self, refusal: HandshakeRefused, status: int | None = None) -> None:
        """Answer with the refusal contract's HTTP status and JSON body; log like WebSocket."""
        credential = refusal.credential
        log.info(
            "Refused SSE request for %.300r from %s (%s): %d %s",
            self.scope["path"],
            self._peer(),
            f"{credential.kind} {credential.id}" if credential else "no credential",
            refusal.code,
            refusal.reason,
        )
        refused_status, headers, body = refusal_response(
            refusal.code, refusal.reason, error=refusal.error, retry_after=refusal.retry_after
        )
        handshake_capture(self, protocol="sse", refusal=refusal, status=status or refused_status)
        if status == 405:
            headers.append((b"allow", b"GET"))
        await self.send_response(status or refused_status, body, headers=headers)

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        """End the stream with a last ``eventgate.close`` event carrying ``code`` (the WebSocket
        close code of the same case) and ``reason``; stop the outbox first, so nothing is
        delivered or metered after the decision. The server then reports the request done
        (``http.disconnect``) and ``http_disconnect`` cleans up. Idempotent."""
        if self._ending or not self._streaming:
            return
        self.close_note(code or 1000, reason)
        self._ending = True
        live_discard(self)
        self._throttling_release()  # the slot is free before the client hears the close
        if self.outbox is not None:
            self.outbox.stop()
        log.info(
            "Closing SSE stream of subscription %s with %d: %s",
            self.grant and self.grant.subscription_id,
            code,
            reason,
        )
        data = json.dumps({"close_code": code or 1000, "reason": reason or ""})
        last = {"type": "http.response.body", "body": f"event: eventgate.close\ndata: {data}\n\n".encode()}
        try:
            await asyncio.wait_for(self.base_send(last), FINAL_SEND_SECONDS)
        except Exception as exc:  # noqa: BLE001 - the client is not reading, or gone
            log.info("SSE stream of %s ended without its last event: %r", self._peer(), exc)
            # No http.disconnect comes while the response is unfinished: end the consumer's
            # loop (no channel layer involved: it may be the thing that is down), which cleans
            # up and returns, and so ends the response.
            self._consumer_stop()

    async def _finish(self) -> None:
        await self._cleanup()

    async def _cleanup(self) -> None:
        """Stop the outbox and the expiry timer, leave the groups and the bridge (the binding
        lingers for resume, ``Bridge.unbind_later``). Idempotent; runs however the request ends."""
        if self._cleaned:
            return
        self._cleaned = self._ending = True
        _live_sse.discard(self)
        live_discard(self)
        self._expiry_cancel()
        self._throttling_release()
        if self.outbox is not None:
            self.outbox.stop()
        self._groups_leave()
        if self.bridge is not None and self._bound_key is not None:
            if self.feed is not None:
                self.bridge.detach(self._bound_key, self.feed)
            self.bridge.unbind_later(self._bound_key)
            self._bound_key = None
        connection_capture(self, protocol="sse")


# Open SSE streams of this process, for the keep-alive ticker; weak, so a dead one never lingers.
_live_sse: weakref.WeakSet[EventSourceConsumer] = weakref.WeakSet()
_keepalives: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


def _keepalive_ensure_running() -> None:
    loop = asyncio.get_running_loop()
    task = _keepalives.get(loop)
    if task is None or task.done():
        _keepalives[loop] = loop.create_task(_keepalive_forever(), name="eventgate-sse-keepalive")


async def _keepalive_forever() -> None:
    """One ticker per process (not one timer per stream): every ``GATEWAY_SSE_KEEPALIVE``
    seconds a comment is queued on each open stream whose outbox has room (a full one is busy
    anyway), so proxies and clients see the connection alive."""
    while True:
        await asyncio.sleep(float(settings.GATEWAY_SSE_KEEPALIVE))
        for stream in list(_live_sse):
            if stream.outbox is not None:
                stream.outbox.enqueue(KEEPALIVE)
