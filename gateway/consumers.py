"""WebSocket consumers of the gateway.

``EventStreamConsumer`` serves ``/ws/<api slug>/<version>/<channel address>``: it authorizes the
handshake, binds the channel on the broker bridge, accepts, then receives the events the bridge
fans out. Refused handshakes (no/unknown/revoked credential, not subscribed, subscription
pending, unknown API, version or channel, bad parameter) are closed before ``accept``, so daphne
answers HTTP 403 and no broker resources are created. Once open, connections close with
application codes from the 4000–4999 range (RFC 6455 §7.4.2): daphne's WebSocket stack refuses
to send registered codes such as 1008 or 1013, so each mirrors the registered code it stands for:

- 4008 (as 1008 policy violation): the client sent a data frame (sending is not offered yet);
- 4013 (as 1013 try again later): RabbitMQ is unreachable, so no events could flow;
- 4401 (as HTTP 401): the API key was revoked while the connection was open;
- 4403 (as HTTP 403): the subscription stopped being active (e.g. cancelled);
- 4410 (as HTTP 410 Gone): the API was blocked or retired, or the version retired.

Control messages close these at once; a periodic audit (``live_connections_audit``) catches
what sends none (expiry, deletion, a deactivated owner, a state change by a raw update, a lost
message).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from gateway.auth import (
    Grant,
    HandshakeRefused,
    credential_from_scope,
    grant_still_allowed,
    grants_allowed,
    handshake_authorize,
)
from gateway.bridge import Bridge, BrokerUnavailable, get_bridge
from gateway.control import api_group, api_key_group, api_version_group, subscription_group
from gateway.metering import get_meter

log = logging.getLogger(__name__)

CLOSE_POLICY_VIOLATION = 4008
CLOSE_TRY_AGAIN_LATER = 4013
CLOSE_REVOKED = 4401
CLOSE_SUBSCRIPTION_ENDED = 4403
CLOSE_API_UNAVAILABLE = 4410
REASON_NO_CLIENT_EVENTS = "This channel does not accept events from clients."
REASON_BROKER_DOWN = "Event backbone unavailable; try again later."
# Close reasons by the state the API or version moved to (RFC 6455 §5.5.1: at most 123 bytes).
REASONS_API_UNAVAILABLE = {
    ("api", "blocked"): "API blocked by its provider or an admin.",
    ("api", "retired"): "API retired.",
    ("version", "retired"): "API version retired; connect to a newer version.",
}
REASON_API_UNAVAILABLE = "API or API version no longer available."


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
            grant = await self._authorize(
                secret=credential_from_scope(self.scope),
                api_slug=route["api"],
                version=route["version"],
                address=route["address"],
            )
            # Join the control groups, then look again: a revocation that committed after the
            # check above but before the join would otherwise never reach this connection.
            await self._groups_join(grant)
            if not await self._still_allowed(grant):
                raise HandshakeRefused(
                    f"key {grant.key_id}: revoked, subscription ended or API unavailable during the handshake"
                )
        except HandshakeRefused as refusal:
            # %r: the path comes from the client; repr keeps it on one log line, and the cut keeps
            # a 6 KB address from filling the log (the reason may repeat it: cut too).
            log.info(
                "Refused handshake for %.300r from %s: %.500s", self.scope["path"], self._peer(), refusal
            )
            await self.close()  # before accept: daphne answers HTTP 403
            return
        await self._stream(grant)

    async def _stream(self, grant: Grant) -> None:
        """Bind the channel on the bridge, accept, then start receiving its events."""
        self.bridge = get_bridge()
        try:
            await self.bridge.bind(grant.routing_key)
        except BrokerUnavailable as exc:
            log.warning("WebSocket %r closed with 4013: %s", self.scope["path"], exc)
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
        _live.add(self)
        _audit_ensure_running()
        log.info("WebSocket open: subscription %s on %s", grant.subscription_id, grant.routing_key)

    async def disconnect(self, code: int) -> None:
        _live.discard(self)
        if self.grant is not None:
            for group in self._groups(self.grant):
                await self.channel_layer.group_discard(group, self.channel_name)
        if self.bridge is None or self.grant is None or not self._bound:
            return
        self.bridge.detach(self.grant.routing_key, self)
        self._bound = False
        await self.bridge.unbind(self.grant.routing_key)

    @staticmethod
    def _groups(grant: Grant) -> tuple[str, ...]:
        return (
            api_key_group(grant.key_id),
            subscription_group(grant.subscription_id),
            api_group(grant.api_id),
            api_version_group(grant.api_version_id),
        )

    async def _groups_join(self, grant: Grant) -> None:
        self.grant = grant
        for group in self._groups(grant):
            await self.channel_layer.group_add(group, self.channel_name)

    async def gateway_revoke(self, event: dict[str, Any]) -> None:
        """Control message ``gateway.revoke``: this connection's API key was revoked."""
        log.info(
            "Closing WebSocket of subscription %s: API key revoked", self.grant and self.grant.subscription_id
        )
        await self.close(code=CLOSE_REVOKED, reason="API key revoked.")

    async def gateway_subscription_ended(self, event: dict[str, Any]) -> None:
        """Control message ``gateway.subscription_ended``: the subscription is no longer active."""
        log.info(
            "Closing WebSocket of subscription %s: no longer active",
            self.grant and self.grant.subscription_id,
        )
        await self.close(code=CLOSE_SUBSCRIPTION_ENDED, reason="Subscription no longer active.")

    async def gateway_api_unavailable(self, event: dict[str, Any]) -> None:
        """Control message ``gateway.api_unavailable``: the API was blocked or retired
        (``scope`` absent or ``"api"``), or the version retired (``scope`` ``"version"``);
        ``status`` is the new state. Closes with 4410."""
        scope, status = event.get("scope", "api"), event.get("status", "")
        log.info(
            "Closing WebSocket of subscription %s: %s %s",
            self.grant and self.grant.subscription_id,
            scope,
            status or "unavailable",
        )
        reason = REASONS_API_UNAVAILABLE.get((scope, status), REASON_API_UNAVAILABLE)
        await self.close(code=CLOSE_API_UNAVAILABLE, reason=reason)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.close(code=CLOSE_POLICY_VIOLATION, reason=REASON_NO_CLIENT_EVENTS)

    async def deliver(self, message: dict[str, Any], size: int, minute: int) -> None:
        """Send one event frame (``gateway.bridge.Subscriber``) and meter it. Hot path: no I/O wait."""
        await self.base_send(message)
        self._meter_add((self._subscription_id, self._channel_template, "out", minute), size)

    @database_sync_to_async
    def _still_allowed(self, grant: Grant) -> bool:
        return grant_still_allowed(grant)

    @database_sync_to_async
    def _authorize(self, *, secret: str | None, api_slug: str, version: str, address: str) -> Grant:
        return handshake_authorize(secret=secret, api_slug=api_slug, version=version, address=address)

    def _peer(self) -> str:
        client = self.scope.get("client") or ("?", 0)
        return f"{client[0]}:{client[1]}"


# The accepted connections of this process, for the audit; weak, so a dead one never lingers.
_live: weakref.WeakSet[EventStreamConsumer] = weakref.WeakSet()
_audits: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


def _audit_ensure_running() -> None:
    loop = asyncio.get_running_loop()
    task = _audits.get(loop)
    if task is None or task.done():
        _audits[loop] = loop.create_task(_audit_forever(), name="eventgate-live-audit")


async def _audit_forever() -> None:
    while True:
        await asyncio.sleep(float(settings.GATEWAY_AUDIT_INTERVAL))
        try:
            await live_connections_audit()
        except Exception:  # noqa: BLE001 - database down: keep streaming, try again next time
            log.exception("Live connection audit failed")


async def live_connections_audit() -> int:
    """Close this process's connections whose key is no longer usable (4401), whose
    subscription is no longer active (4403), or whose API or version is no longer served (4410).
    Three queries however many connections; returns the number closed. Catches what sends no
    control message: expiry, deletion, a deactivated owner, a raw update, a lost message.
    """
    consumers = [consumer for consumer in list(_live) if consumer.grant is not None]
    if not consumers:
        return 0
    grants = [consumer.grant for consumer in consumers if consumer.grant is not None]
    allowed = await database_sync_to_async(grants_allowed)(grants)
    closed = 0
    for consumer in consumers:
        grant = consumer.grant
        assert grant is not None
        if grant.key_id not in allowed.key_ids:
            await consumer.gateway_revoke({"type": "gateway.revoke"})
        elif grant.subscription_id not in allowed.subscription_ids:
            await consumer.gateway_subscription_ended({"type": "gateway.subscription_ended"})
        elif grant.api_version_id not in allowed.api_version_ids:
            await consumer.gateway_api_unavailable({"type": "gateway.api_unavailable"})
        else:
            continue
        _live.discard(consumer)
        closed += 1
    return closed


class NoRouteConsumer(AsyncWebsocketConsumer):
    """Refuses (HTTP 403) WebSocket handshakes on paths that are not gateway routes."""

    async def connect(self) -> None:
        log.info("Refused WebSocket handshake for %s: not a gateway route", self.scope["path"])
        await self.close()
