"""WebSocket consumers of the gateway.

``EventStreamConsumer`` serves ``/ws/<api slug>/<version>/<channel address>``: it authorizes the
handshake, binds the channel on the broker bridge, accepts, then receives the events the bridge
fans out. Close codes (RFC 6455 §7.4.1; 1013 from the IANA WebSocket close code registry,
RFC 6455 §11.7):

- refused handshake (no/unknown/revoked credential, not subscribed, subscription pending,
  unknown API, version or channel, bad parameter): closed before ``accept`` → HTTP 403, no
  broker resources created;
- 1008 policy violation: the client sent a data frame (sending is not offered yet);
- 1013 try again later: RabbitMQ is unreachable, so no events could flow.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from gateway.auth import Grant, HandshakeRefused, credential_from_scope, handshake_authorize
from gateway.bridge import Bridge, BrokerUnavailable, get_bridge
from gateway.metering import get_meter

log = logging.getLogger(__name__)

CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013
REASON_NO_CLIENT_EVENTS = "This channel does not accept events from clients."
REASON_BROKER_DOWN = "Event backbone unavailable; try again later."


class EventStreamConsumer(AsyncWebsocketConsumer):
    """Streams a channel's events to one authorized client, one text frame per event.

    Frame: ``{"id": str, "channel": str, "published_at": float seconds | null, "payload": any}``
    (built once per event by ``gateway.bridge``). Every delivered event is metered as one event
    and the frame's UTF-8 length in bytes, under the subscription and channel template.
    """

    grant: Grant | None = None
    bridge: Bridge | None = None
    _bound = False

    async def connect(self) -> None:
        route = self.scope["url_route"]["kwargs"]
        try:
            self.grant = await self._authorize(
                secret=credential_from_scope(self.scope),
                api_slug=route["api"],
                version=route["version"],
                address=route["address"],
            )
        except HandshakeRefused as refusal:
            log.info("Refused handshake for %s from %s: %s", self.scope["path"], self._peer(), refusal)
            await self.close()  # before accept: daphne answers HTTP 403
            return
        await self._stream(self.grant)

    async def _stream(self, grant: Grant) -> None:
        """Bind the channel on the bridge, accept, then start receiving its events."""
        self.bridge = get_bridge()
        try:
            await self.bridge.bind(grant.routing_key)
        except BrokerUnavailable as exc:
            log.warning("WebSocket %s closed with 1013: %s", self.scope["path"], exc)
            await self.accept()
            await self.close(code=CLOSE_TRY_AGAIN_LATER, reason=REASON_BROKER_DOWN)
            return
        self._bound = True
        meter = get_meter()
        meter.ensure_flushing()
        # Hot-path shortcuts for deliver().
        self._meter_add = meter.add
        self._subscription_id = grant.subscription_id
        self._channel_template = grant.channel_template
        await self.accept()
        # Attached only once accepted: the bridge never sends on a socket still in the handshake.
        self.bridge.attach(grant.routing_key, grant.address, self)
        log.info("WebSocket open: subscription %s on %s", grant.subscription_id, grant.routing_key)

    async def disconnect(self, code: int) -> None:
        if self.bridge is None or self.grant is None or not self._bound:
            return
        self.bridge.detach(self.grant.routing_key, self)
        self._bound = False
        await self.bridge.unbind(self.grant.routing_key)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.close(code=CLOSE_POLICY_VIOLATION, reason=REASON_NO_CLIENT_EVENTS)

    async def deliver(self, message: dict[str, Any], size: int, minute: int) -> None:
        """Send one event frame (``gateway.bridge.Subscriber``) and meter it. Hot path: no I/O wait."""
        await self.base_send(message)
        self._meter_add((self._subscription_id, self._channel_template, "out", minute), size)

    @database_sync_to_async
    def _authorize(self, *, secret: str | None, api_slug: str, version: str, address: str) -> Grant:
        return handshake_authorize(secret=secret, api_slug=api_slug, version=version, address=address)

    def _peer(self) -> str:
        client = self.scope.get("client") or ("?", 0)
        return f"{client[0]}:{client[1]}"


class NoRouteConsumer(AsyncWebsocketConsumer):
    """Refuses (HTTP 403) WebSocket handshakes on paths that are not gateway routes."""

    async def connect(self) -> None:
        log.info("Refused WebSocket handshake for %s: not a gateway route", self.scope["path"])
        await self.close()
