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
import dataclasses
import logging
import time
import weakref
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

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

CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455 §7.4.1
REASON_CONTROL_DOWN = "Control channel (Redis) unavailable; try again later."
# Seconds between attempts to receive control messages while the channel layer is unreachable.
CONTROL_RETRY_SECONDS = 1.0
# Seconds a finished connection waits for its cancelled receive tasks. channels-redis can absorb
# a cancellation that lands while it holds its receive lock (its task then stays "cancelling",
# polling Redis); the connection must end anyway, so it never waits longer than this.
CANCEL_WAIT_SECONDS = 1.0


def layer_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the channel layer's Redis cannot be reached (redis-py errors, a
    refused or reset socket, a timeout), as opposed to a bug."""
    return isinstance(exc, RedisError | OSError | TimeoutError)


class LiveConnection:
    """Mixin for a gateway consumer (``AsyncConsumer`` subclass) that serves one ``Grant``.

    The consumer provides ``close(code, reason)`` (idempotent; stops deliveries before it
    returns) and ``scope``/``channel_layer``/``channel_name`` (Channels). Control messages arrive
    as ``gateway.*`` types on the groups ``_groups_join`` adds the consumer to.
    """

    grant: Grant | None = None
    _expiry: asyncio.TimerHandle | None = None
    _expiry_task: asyncio.Task[None] | None = None
    _stopped: asyncio.Future[None] | None = None

    # --- the consumer's life: one dispatch loop, one clean-up -------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI application of one connection (replaces ``AsyncConsumer.__call__``).

        Differences from Channels' loop: control messages are received from the channel layer
        only once the connection is live (``grant`` set, not ending), so a refused handshake
        never touches Redis; a channel layer that cannot be reached (Redis down) does not end
        the connection (control messages are retried every ``CONTROL_RETRY_SECONDS``; the audit
        still runs); and ``_finish`` (unbind, outbox stop, registry) runs however the
        connection ends, exceptions included.
        """
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)  # type: ignore[attr-defined]
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()  # no I/O in channels-redis
        self.base_send = send
        self._stopped = asyncio.get_running_loop().create_future()
        try:
            await self._dispatch_forever(receive)
        except StopConsumer:
            pass
        finally:
            try:
                await self._finish()
            except Exception:  # noqa: BLE001 - clean-up must not hide the original error
                log.exception("Clean-up of a gateway connection failed")

    async def _dispatch_forever(self, receive: Any) -> None:
        client: asyncio.Future[Any] = asyncio.ensure_future(receive())
        control: asyncio.Future[Any] | None = None
        try:
            while True:
                if control is None and self._control_wanted():
                    control = asyncio.ensure_future(self._control_receive())
                stopped = self._stopped
                assert stopped is not None
                waiting = {client, stopped} if control is None else {client, control, stopped}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if stopped.done():
                    return
                if client.done():
                    message = client.result()
                    await self.dispatch(message)  # type: ignore[attr-defined]
                    client = asyncio.ensure_future(receive())
                if control is not None and control.done():
                    message, control = control.result(), None
                    await self.dispatch(message)  # type: ignore[attr-defined]
        finally:
            pending = [task for task in (client, control) if task is not None and not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=CANCEL_WAIT_SECONDS)

    def _consumer_stop(self) -> None:
        """End the connection's dispatch loop from outside it (a task, a timer): ``_finish``
        runs and the ASGI application returns, which ends an unfinished HTTP response."""
        stopped = getattr(self, "_stopped", None)
        if stopped is not None and not stopped.done():
            stopped.set_result(None)

    def _control_wanted(self) -> bool:
        return (
            self.grant is not None
            and self.channel_layer is not None  # type: ignore[attr-defined]
            and not getattr(self, "_ending", False)
        )

    async def _control_receive(self) -> dict[str, Any]:
        """The next control message of this connection; retried while Redis is unreachable."""
        failures = 0
        while True:
            try:
                message = await self.channel_layer.receive(self.channel_name)  # type: ignore[attr-defined]
            except Exception as exc:
                if not layer_unavailable(exc):
                    raise
                if failures == 0:
                    log.warning(
                        "Control messages unavailable (%r); retrying every %g s", exc, CONTROL_RETRY_SECONDS
                    )
                failures += 1
                await asyncio.sleep(CONTROL_RETRY_SECONDS)
                continue
            if failures:
                log.info("Control messages available again after %d failed attempts", failures)
            return message

    async def _finish(self) -> None:
        """Release everything the connection holds (idempotent; the consumer's own clean-up)."""
        raise NotImplementedError

    # --- handshake (database work in a worker thread) --------------------------------------

    async def _handshake(
        self,
        *,
        secret: str | None,
        api_slug: str,
        version: str,
        address: str | None,
        require: str | None = None,
    ) -> Grant:
        """Authorize the handshake (``gateway.auth.handshake_authorize``), check that the URL's
        channel allows ``require`` ("receive" | "send") when given, join the control groups,
        then look again: a revocation that committed after the first check but before the join
        would otherwise never reach this connection. Raises ``HandshakeRefused``."""
        grant = await self._authorize(secret=secret, api_slug=api_slug, version=version, address=address)
        if require is not None:
            assert grant.channel is not None
            refusal = grant.refusal(grant.channel, require)
            if refusal is not None:
                raise refusal
        await self._groups_join(grant)
        refusal = await self._recheck(grant)
        if refusal is not None:
            refusal.credential = grant.credential
            raise refusal
        return grant

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
        """Join ``grant``'s control groups. Raises ``HandshakeRefused`` (1013) when the channel
        layer cannot be reached: without its control messages a connection would miss a
        revocation for up to an audit interval, so none is opened then."""
        self.grant = grant
        try:
            for group in self._groups(grant):
                await self.channel_layer.group_add(group, self.channel_name)  # type: ignore[attr-defined]
        except Exception as exc:
            if not layer_unavailable(exc):
                raise
            log.warning("Handshake refused with 1013: channel layer unavailable: %r", exc)
            raise HandshakeRefused(
                CLOSE_TRY_AGAIN_LATER, REASON_CONTROL_DOWN, credential=grant.credential
            ) from None

    async def _groups_leave(self) -> None:
        """Leave the control groups (best effort: with Redis down, channels-redis forgets the
        membership after ``group_expiry`` anyway)."""
        if self.grant is None or self.channel_layer is None:  # type: ignore[attr-defined]
            return
        try:
            for group in self._groups(self.grant):
                await self.channel_layer.group_discard(group, self.channel_name)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - clean-up goes on without Redis
            log.warning("Could not leave the control groups: %r", exc)

    def _expiry_schedule(self, grant: Grant) -> None:
        """Close with 4401 when the credential expires (an OAuth token's ``expires_in``, a rotated
        API key's grace period; moved by ``gateway_credential_expiry``)."""
        expires_at = grant.credential.expires_at
        if expires_at is None:
            return
        self._expiry = asyncio.get_running_loop().call_later(
            max(0.0, expires_at - time.time()), self._expired
        )

    def _expiry_cancel(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

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

    async def gateway_credential_expiry(self, event: dict[str, Any]) -> None:
        """Control message ``gateway.credential_expiry``: the credential now expires at
        ``expires_at`` (Unix seconds; None: never), e.g. a rotated key's grace period. The grant
        takes the new expiry (client events after it are refused, ``Grant.refusal``) and the
        timer moves: at expiry the connection closes with 4401 "Credential expired."."""
        if self.grant is None:
            return
        expires_at = event.get("expires_at")
        credential = dataclasses.replace(
            self.grant.credential, expires_at=None if expires_at is None else float(expires_at)
        )
        self.grant = dataclasses.replace(self.grant, credential=credential)
        self._expiry_cancel()
        self._expiry_schedule(self.grant)

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
