"""What every live gateway connection shares, WebSocket or Server-Sent Events.

``LiveConnection`` is a mixin for Channels consumers: the handshake's database work (run in a
worker thread), the control groups a connection joins (its credential, subscription, API and API
version; ``gateway.control``) and their handlers, the credential expiry timer, and this process's
registry of open connections with its periodic audit (``live_connections_audit``).

Every way a connection ends here goes through the consumer's own ``close(code, reason)``: a
WebSocket sends a close frame (RFC 6455 §5.5.1), an SSE stream a last ``eventgate.close`` event.
Codes are the refusal contract's (docs/gateway.md): 4401 credential revoked or expired, 4403
subscription ended, 4409 business plan changed, 4410 API or version gone, 4429 quota used up.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from gateway.auth import (
    CLOSE_FORBIDDEN,
    CLOSE_GONE,
    CLOSE_PLAN_CHANGED,
    CLOSE_UNAUTHORIZED,
    REASON_PLAN_CHANGED,
    Grant,
    HandshakeRefused,
    api_unavailable_reason,
    grants_refusals,
    handshake_authorize,
    subscription_ended_reason,
)
from gateway.control import api_group, api_version_group, subscription_group
from gateway.credentials import credential_group

log = logging.getLogger(__name__)


class LiveConnection:
    """Mixin for a gateway consumer (``AsyncConsumer`` subclass) that serves one ``Grant``.

    The consumer provides ``close(code, reason)`` (idempotent; stops deliveries before it
    returns) and ``scope``/``channel_layer``/``channel_name`` (Channels). Control messages arrive
    as ``gateway.*`` types on the groups ``_groups_join`` adds the consumer to.
    """

    grant: Grant | None = None
    _expiry: asyncio.TimerHandle | None = None
    _expiry_task: asyncio.Task[None] | None = None

    # --- handshake (database work in a worker thread) --------------------------------------

    @database_sync_to_async
    def _authorize(self, *, secret: str | None, api_slug: str, version: str, address: str | None) -> Grant:
        """``gateway.auth.handshake_authorize``; raises ``HandshakeRefused``."""
        return handshake_authorize(secret=secret, api_slug=api_slug, version=version, address=address)

    @database_sync_to_async
    def _recheck(self, grant: Grant) -> HandshakeRefused | None:
        """The refusal ``grant`` would get now (quota aside), or None: the second look after
        joining the control groups, so a revocation committed in between is not missed."""
        return grants_refusals([grant], quota=False)[0]

    @staticmethod
    def _groups(grant: Grant) -> tuple[str, ...]:
        return (
            credential_group(grant.credential),
            subscription_group(grant.subscription_id),
            api_group(grant.api_id),
            api_version_group(grant.api_version_id),
        )

    async def _groups_join(self, grant: Grant) -> None:
        self.grant = grant
        for group in self._groups(grant):
            await self.channel_layer.group_add(group, self.channel_name)  # type: ignore[attr-defined]

    async def _groups_leave(self) -> None:
        if self.grant is not None and self.channel_layer is not None:  # type: ignore[attr-defined]
            for group in self._groups(self.grant):
                await self.channel_layer.group_discard(group, self.channel_name)  # type: ignore[attr-defined]

    def _expiry_schedule(self, grant: Grant) -> None:
        """Close with 4401 when the credential expires (an OAuth token's ``expires_in``)."""
        expires_at = grant.credential.expires_at
        if expires_at is None:
            return
        self._expiry = asyncio.get_running_loop().call_later(
            max(0.0, expires_at - time.time()), self._expired
        )

    def _expiry_cancel(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()

    def _expired(self) -> None:
        self._expiry_task = asyncio.get_running_loop().create_task(
            self.close(CLOSE_UNAUTHORIZED, "Credential expired.")
        )

    def _peer(self) -> str:
        client = self.scope.get("client") or ("?", 0)  # type: ignore[attr-defined]
        return f"{client[0]}:{client[1]}"

    # --- control messages (gateway.control) ------------------------------------------------

    async def gateway_revoke(self, event: dict[str, Any]) -> None:
        """Control message ``gateway.revoke``: the credential was revoked (4401)."""
        kind = self.grant.credential.kind if self.grant else ""
        await self.close(
            CLOSE_UNAUTHORIZED, "API key revoked." if kind == "api_key" else "Credential revoked."
        )

    async def gateway_subscription_ended(self, event: dict[str, Any]) -> None:
        """Control message ``gateway.subscription_ended``: the subscription is no longer active;
        ``status`` (when given) is its new state, named in the reason (4403)."""
        await self.close(CLOSE_FORBIDDEN, subscription_ended_reason(event.get("status")))

    async def gateway_plan_changed(self, event: dict[str, Any]) -> None:
        """Control message ``gateway.plan_changed``: the subscription moved to another business
        plan; the client reconnects to continue under it (4409)."""
        await self.close(CLOSE_PLAN_CHANGED, REASON_PLAN_CHANGED)

    async def gateway_api_unavailable(self, event: dict[str, Any]) -> None:
        """Control message ``gateway.api_unavailable``: the API was blocked or retired
        (``scope`` absent or ``"api"``), or the version retired (``scope`` ``"version"``);
        ``status`` is the new state (4410)."""
        await self.close(
            CLOSE_GONE, api_unavailable_reason(event.get("scope", "api"), event.get("status", ""))
        )


# The open connections of this process, for the audit; weak, so a dead one never lingers.
_live: weakref.WeakSet[LiveConnection] = weakref.WeakSet()
_audits: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


def live_add(connection: LiveConnection) -> None:
    """Register an accepted connection with this process's audit (and start the audit)."""
    _live.add(connection)
    loop = asyncio.get_running_loop()
    task = _audits.get(loop)
    if task is None or task.done():
        _audits[loop] = loop.create_task(_audit_forever(), name="eventgate-live-audit")


def live_discard(connection: LiveConnection) -> None:
    """Forget a connection that is ending. Idempotent."""
    _live.discard(connection)


def live_count() -> int:
    """Open (accepted, not yet ending) connections of this process, WebSocket and SSE."""
    return len(_live)


async def _audit_forever() -> None:
    while True:
        await asyncio.sleep(float(settings.GATEWAY_AUDIT_INTERVAL))
        try:
            await live_connections_audit()
        except Exception:  # noqa: BLE001 - database down: keep streaming, try again next time
            log.exception("Live connection audit failed")


async def live_connections_audit() -> int:
    """Close this process's connections that would be refused now (``gateway.auth.grants_refusals``):
    credential no longer usable (4401, API keys and OAuth tokens), subscription no longer active
    (4403), business plan changed (4409), API or version no longer served (4410), quota used up
    (4429). At most 6 queries however many connections; returns the number closed. Catches what
    sends no control message: expiry, deletion, a deactivated owner, a raw update, a lost message.
    """
    connections = [connection for connection in list(_live) if connection.grant is not None]
    if not connections:
        return 0
    grants = [connection.grant for connection in connections if connection.grant is not None]
    refusals = await database_sync_to_async(grants_refusals)(grants)
    closed = 0
    for connection, refusal in zip(connections, refusals, strict=True):
        if refusal is not None:
            await connection.close(code=refusal.code, reason=refusal.reason)
            closed += 1
    return closed
