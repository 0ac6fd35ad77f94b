"""What every live gateway connection shares, WebSocket or Server-Sent Events.

``LiveConnection`` is a mixin for Channels consumers: the handshake (its database work in a pool
of worker threads, ``db_call``), the control groups a connection joins (its credential,
subscription, API and API version; received through this process's ``gateway.control.ControlHub``)
and their handlers, the credential expiry timer, and this process's registry of open connections
with its periodic audit (``live_connections_audit``).

Handshakes are cheap when they repeat: a grant checked against the database (and checked again
after its control groups were joined) is kept in process memory, keyed by the credential's
SHA-256 and the URL, and reused by later handshakes with no query and no Redis command while the
hub holds all its groups with no control message since the check, for at most
``GATEWAY_GRANT_CACHE_SECONDS`` (so what sends no control message, a quota used up or a raw
update, is seen within that time at the handshake; the audit closes open connections) and never
past the credential's expiry. Any control message for one of its groups, or an outage of the
channel layer, drops it. Concurrent handshakes with the same credential and URL wait for the
first one's check instead of repeating it.

Every way a connection ends here goes through the consumer's own ``close(code, reason)``: a
WebSocket sends a close frame (RFC 6455 §5.5.1), an SSE stream a last ``eventgate.close`` event.
Codes are the refusal contract's (docs/gateway.md): 4401 credential revoked or expired, 4403
subscription ended, 4409 business plan changed, 4410 API or version gone, 4429 quota used up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connections

from gateway.auth import (
    CLOSE_FORBIDDEN,
    CLOSE_GONE,
    CLOSE_PLAN_CHANGED,
    CLOSE_UNAUTHORIZED,
    DIRECTIONS,
    GRANT_CHECKS,
    REASON_PLAN_CHANGED,
    ChannelGrant,
    Grant,
    HandshakeRefused,
    api_unavailable_reason,
    channel_held,
    channel_resolve,
    channel_scope_refusal,
    grants_refusals,
    handshake_authorize,
    subscription_ended_reason,
    version_channels,
)
from gateway.capture import connection_opened
from gateway.control import (
    CONTROL_RETRY_SECONDS,
    ControlHub,
    ControlUnavailable,
    api_group,
    api_version_group,
    control_hub,
    layer_unavailable,
    subscription_group,
)
from gateway.credentials import credential_group, secret_digest
from gateway.throttling import (
    CLOSE_DURATION_LIMIT,
    CLOSE_THROTTLED,
    SubscriptionThrottle,
    connection_slots,
    limit_reason,
    redis_errors,
    throttle_acquire,
    throttle_release,
)

__all__ = ["CONTROL_RETRY_SECONDS", "LiveConnection", "db_call", "layer_unavailable"]

log = logging.getLogger(__name__)

CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455 §7.4.1
REASON_CONTROL_DOWN = "Control channel (Redis) unavailable; try again later."
# Grants kept per process at most; past it, expired ones go, then all.
GRANT_CACHE_ENTRIES = 10_000

T = TypeVar("T")


# --- database work: a pool of worker threads, each with its own persistent connection --------

_stats_lock = threading.Lock()
# Counters for /gateway/status (``handshake_status``).
_stats = {"cached": 0, "checked": 0, "refused": 0, "database_queries": 0}
# Seconds a worker thread keeps its database connection open without work.
DB_IDLE_CLOSE_SECONDS = 5.0


def _count(name: str, n: int = 1) -> None:
    with _stats_lock:
        _stats[name] += n


class _DatabaseThreads:
    """``size`` daemon threads running read-only ORM calls for event loops (``db_call``).

    Each thread keeps its own database connection (and cache client) between calls and closes it
    after ``DB_IDLE_CLOSE_SECONDS`` without work, so an idle process holds none. When an event
    loop that used them shuts down (the server's at exit, a test's), ``close_connections``
    closes every thread's connection before the process goes: a killed process's sessions
    would linger a moment in PostgreSQL. A connection that broke while idle (a database
    restart) is replaced and the call run once more (``_db_run``).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closers: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
        for number in range(size):
            threading.Thread(target=self._work, name=f"eventgate-db-{number}", daemon=True).start()

    def submit(self, call: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        if loop not in self._closers:
            for old in [old for old in self._closers if old.is_closed()]:
                del self._closers[old]
            self._closers[loop] = loop.create_task(self._close_at_shutdown(), name="eventgate-db-close")
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, call))
        return future

    async def _close_at_shutdown(self) -> None:
        """Wait until the loop's shutdown cancels every task (``asyncio.run``, uvicorn), then
        close the threads' connections."""
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            self.close_connections()
            raise

    def close_connections(self, timeout: float = 1.0) -> None:
        """Make every thread close its database connections; waits at most ``timeout`` seconds
        (blocks the caller: for shutdown)."""
        barrier = threading.Barrier(self.size + 1)
        for _ in range(self.size):
            self._calls.put(barrier)  # one per thread: each waits on the barrier after closing
        try:
            barrier.wait(timeout)
        except threading.BrokenBarrierError:
            log.warning("Database worker threads did not close their connections within %g s", timeout)

    def _work(self) -> None:
        connected = False
        while True:
            try:
                item = self._calls.get(timeout=DB_IDLE_CLOSE_SECONDS if connected else None)
            except queue.Empty:
                connections.close_all()  # this thread's connections only
                connected = False
                continue
            if isinstance(item, threading.Barrier):
                connections.close_all()
                connected = False
                try:
                    item.wait(1.0)
                except threading.BrokenBarrierError:
                    pass
                continue
            loop, future, call = item
            if future.cancelled():
                continue
            connected = True
            try:
                result = _db_run(call)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                _resolve(loop, future, None, exc)
            else:
                _resolve(loop, future, result, None)


def _resolve(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, exc: BaseException | None
) -> None:
    def resolve() -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    try:
        loop.call_soon_threadsafe(resolve)
    except RuntimeError:  # the loop is closed: nobody waits any more
        pass


_threads: _DatabaseThreads | None = None


async def db_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` (sync, read-only ORM work) in one of the gateway's
    ``GATEWAY_DB_THREADS`` worker threads; returns or raises what it does.

    Unlike ``database_sync_to_async`` (one thread for the whole process, a new database
    connection per call when ``CONN_MAX_AGE`` is 0), calls overlap and each thread keeps its
    database connection open while it has work (``_DatabaseThreads``). The caller's context
    variables are not copied to the thread: ``fn`` must not depend on them.
    """
    global _threads
    if _threads is None:
        _threads = _DatabaseThreads(int(settings.GATEWAY_DB_THREADS))
    return await _threads.submit(functools.partial(fn, *args, **kwargs))


def _db_run(call: Callable[[], T]) -> T:
    connection = connections[DEFAULT_DB_ALIAS]
    queries = 0

    def counted(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        nonlocal queries
        queries += 1
        return execute(sql, params, many, context)

    try:
        for attempt in (1, 2):
            try:
                with connection.execute_wrapper(counted):
                    return call()
            except (InterfaceError, OperationalError):
                if attempt == 2 or connection.in_atomic_block:
                    raise
                log.info("Database connection of a gateway worker thread broke; reconnecting")
                try:
                    connection.close()
                except Exception:  # noqa: BLE001 - a broken connection may fail to close
                    connection.connection = None
        raise AssertionError("unreachable")
    finally:
        _count("database_queries", queries)


def handshake_status() -> dict[str, int]:
    """Handshakes of this process since it started: ``cached`` (a grant reused: no query, no
    Redis command), ``checked`` (against the database), ``refused``, and ``database_queries``
    made by the gateway's worker threads (handshakes, multiplexed frames, audits)."""
    with _stats_lock:
        return dict(_stats)


# --- grants kept per process -------------------------------------------------------------------

GrantKey = tuple[str, str, str]  # (SHA-256 of the credential, API slug, version)


@dataclasses.dataclass(slots=True)
class _CachedGrant:
    grant: Grant
    groups: tuple[str, ...]
    since: int  # hub tick from which the groups must be unchanged (ControlHub.unchanged)
    checked: float  # time.monotonic() of the first database read


class GrantCache:
    """The grants one ``ControlHub``'s handshakes may reuse (see the module docstring)."""

    def __init__(self, hub: ControlHub) -> None:
        self.hub = hub
        self.entries: dict[GrantKey, _CachedGrant] = {}
        self.pending: dict[GrantKey, asyncio.Future[None]] = {}

    def get(self, key: GrantKey) -> _CachedGrant | None:
        """The entry of ``key`` if it may still be trusted, else None (and it is dropped)."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if self._trusted(entry, time.monotonic()):
            return entry
        del self.entries[key]
        return None

    def put(self, key: GrantKey, entry: _CachedGrant) -> None:
        """Keep ``entry``; when full, drop the entries no longer trusted, then all."""
        entries = self.entries
        if len(entries) >= GRANT_CACHE_ENTRIES:
            now = time.monotonic()
            for old in [k for k, kept in entries.items() if not self._trusted(kept, now)]:
                del entries[old]
            if len(entries) >= GRANT_CACHE_ENTRIES:
                entries.clear()
        entries[key] = entry

    def _trusted(self, entry: _CachedGrant, now: float) -> bool:
        return (
            now - entry.checked < float(settings.GATEWAY_GRANT_CACHE_SECONDS)
            and not entry.grant.credential.is_expired
            and self.hub.unchanged(entry.groups, entry.since)
        )


_grant_caches: weakref.WeakKeyDictionary[ControlHub, GrantCache] = weakref.WeakKeyDictionary()


def _grant_cache(hub: ControlHub) -> GrantCache:
    cache = _grant_caches.get(hub)
    if cache is None:
        cache = _grant_caches[hub] = GrantCache(hub)
        hub.on_unknown = _audit_soon
    return cache


def _channel_resolve(grant: Grant, address: str) -> ChannelGrant | HandshakeRefused:
    """``gateway.auth.channel_resolve`` for the handshakes of ``grant``'s version (worker thread)."""
    try:
        return channel_resolve(
            api_slug=grant.api_slug,
            version=grant.version,
            api_version_id=grant.api_version_id,
            channels=version_channels(grant.api_version_id),
            address=address,
            directions=DIRECTIONS,
        )
    except HandshakeRefused as refusal:
        return refusal


# The recheck each control group stands for (in the order of LiveConnection._groups).
_GROUP_CHECKS = ("credential", "subscription", "version", "version")

# Control message handlers running now; asyncio keeps only weak references to tasks.
_control_tasks: set[asyncio.Task[None]] = set()


class LiveConnection:
    """Mixin for a gateway consumer (``AsyncConsumer`` subclass) that serves one ``Grant``.

    The consumer provides ``close(code, reason)`` (idempotent; stops deliveries before it
    returns) and ``scope`` (Channels). Control messages of the groups ``_groups_join`` joins
    come through ``control_message`` as ``gateway.*`` types, handled once the connection is
    live (``live_add``); those that come earlier wait until then.
    """

    grant: Grant | None = None
    _expiry: asyncio.TimerHandle | None = None
    _expiry_task: asyncio.Task[None] | None = None
    _task: asyncio.Task[None] | None = None
    _stop_requested = False
    _accepted = False  # accepted and registered (live_add): control messages are handled
    _control_pending: list[dict[str, Any]] | None = None
    _groups_held: tuple[str, ...] | None = None
    # Throttling (gateway.throttling): the subscription's throttle, this connection's slot,
    # and the duration-limit timer.
    throttle: SubscriptionThrottle | None = None
    _slot: str | None = None
    _duration: asyncio.TimerHandle | None = None
    _limit_task: asyncio.Task[None] | None = None
    # Analytics (gateway.capture): "websocket" or "sse"; when it went live (Unix seconds); the
    # close code and reason (the server's, or the client's close frame); client events taken;
    # the channel templates it served; whether its ConnectionRecord is queued.
    protocol = "websocket"
    opened_at: float | None = None
    close_code: int | None = None
    close_reason = ""
    events_in = 0
    bytes_in = 0
    templates: frozenset[str] = frozenset()
    captured = False

    # --- the consumer's life: one dispatch loop, one clean-up -------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI application of one connection (replaces ``AsyncConsumer.__call__``).

        Differences from Channels' loop: the connection has no channel of its own in the
        channel layer and no task besides the server's (control messages come through the
        process's ``ControlHub``); ``dispatch`` does not close database connections (the
        gateway's database work runs in its own threads, ``db_call``); ``_consumer_stop`` ends
        the loop from outside; and ``_finish`` (unbind, outbox stop, registry, groups) runs
        however the connection ends, exceptions included.
        """
        self.scope = scope
        self.base_send = send
        task = self._task = asyncio.current_task()
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        except asyncio.CancelledError:
            if not self._stop_requested or task is None:
                raise
            task.uncancel()  # our own stop (_consumer_stop), not the server's
        finally:
            self._task = None
            try:
                await self._finish()
            except Exception:  # noqa: BLE001 - clean-up must not hide the original error
                log.exception("Clean-up of a gateway connection failed")

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Hand an ASGI message to its handler (``websocket.receive`` → ``websocket_receive``)."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    def _consumer_stop(self) -> None:
        """End the connection's dispatch loop from outside it (a task, a timer): ``_finish``
        runs and the ASGI application returns, which ends an unfinished HTTP response."""
        task = self._task
        if task is not None and not self._stop_requested:
            self._stop_requested = True
            task.cancel()

    async def _finish(self) -> None:
        """Release everything the connection holds (idempotent; the consumer's own clean-up)."""
        raise NotImplementedError

    def live_templates(self) -> set[str]:
        """The channel templates this connection receives now (its snapshot; multiplexed
        WebSocket connections override it)."""
        grant = self.grant
        return {grant.channel.channel_template} if grant is not None and grant.channel is not None else set()

    def close_note(self, code: int | None, reason: str | None) -> None:
        """Remember how the connection ended for its ``ConnectionRecord``: the first close wins
        (the server's decision, or the client's close frame)."""
        if self.close_code is None and not self.close_reason:
            self.close_code = code
            self.close_reason = reason or ""

    # --- handshake --------------------------------------------------------------------------

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
        then look again at what changed meanwhile: a revocation that committed after the first
        check but before the join would otherwise never reach this connection. A grant this
        process checked so recently is reused (module docstring); its channel part (address,
        parameters, operations, scope) is checked for each handshake. Raises
        ``HandshakeRefused``.
        """
        hub = control_hub()
        if hub is None or not secret:
            return await self._grant_check(None, None, None, secret, api_slug, version, address, require)
        cache = _grant_cache(hub)
        key: GrantKey = (secret_digest(secret), api_slug, version)
        entry = cache.get(key)
        if entry is None and key in cache.pending:  # the same check is running: wait for it
            await asyncio.shield(cache.pending[key])
            entry = cache.get(key)
        if entry is not None:
            grant = await self._grant_reuse(cache, key, entry, address, require)
            if grant is not None:
                _count("cached")
                return grant
        leader = key not in cache.pending
        if leader:
            cache.pending[key] = asyncio.get_running_loop().create_future()
        try:
            return await self._grant_check(hub, cache, key, secret, api_slug, version, address, require)
        finally:
            if leader:
                cache.pending.pop(key).set_result(None)

    async def _grant_reuse(
        self, cache: GrantCache, key: GrantKey, entry: _CachedGrant, address: str | None, require: str | None
    ) -> Grant | None:
        """``entry``'s grant for this handshake's channel, with this connection in its groups;
        None if the entry stopped being trustworthy meanwhile. Raises ``HandshakeRefused`` for
        the channel part (its result is kept per process: usually no thread, no query)."""
        grant = entry.grant
        try:
            if address is not None:
                channel = channel_held(grant.api_version_id, address, DIRECTIONS)
                if channel is None:
                    channel = await db_call(_channel_resolve, grant, address)
                if isinstance(channel, HandshakeRefused):
                    raise channel
                refusal = channel_scope_refusal(grant, channel, DIRECTIONS)
                if refusal is not None:
                    raise refusal
                grant = dataclasses.replace(grant, channel=channel)
                if require is not None:
                    refusal = grant.refusal(channel, require)
                    if refusal is not None:
                        raise refusal
        except HandshakeRefused as refusal:
            _count("refused")
            refusal.credential = grant.credential
            raise
        if cache.get(key) is not entry or not cache.hub.join_held(self, entry.groups):
            return None
        self.grant, self._groups_held = grant, entry.groups
        return grant

    async def _grant_check(
        self,
        hub: ControlHub | None,
        cache: GrantCache | None,
        key: GrantKey | None,
        secret: str | None,
        api_slug: str,
        version: str,
        address: str | None,
        require: str | None,
    ) -> Grant:
        """The handshake against the database: authorize, join, look again at what the control
        groups may have missed (only that: a group held with no message since before the first
        look needs no second one), then keep the grant (without its channel) in ``cache``."""
        checked = time.monotonic()
        before = hub.tick if hub is not None else 0
        _count("checked")
        try:
            grant = await self._authorize(secret=secret, api_slug=api_slug, version=version, address=address)
            if require is not None:
                assert grant.channel is not None
                refusal = grant.refusal(grant.channel, require)
                if refusal is not None:
                    raise refusal
            await self._groups_join(grant)
            groups = self._groups(grant)
            checks = GRANT_CHECKS
            if hub is not None:
                checks = frozenset(
                    check
                    for group, check in zip(groups, _GROUP_CHECKS, strict=True)
                    if not hub.unchanged((group,), before)
                )
            since = hub.tick if hub is not None else 0
            refusal = await self._recheck(grant, checks) if checks else None
            if refusal is not None:
                refusal.credential = grant.credential
                raise refusal
        except HandshakeRefused:
            _count("refused")
            raise
        if cache is not None and key is not None and self._groups_held is not None:
            cache.put(key, _CachedGrant(dataclasses.replace(grant, channel=None), groups, since, checked))
        return grant

    async def _authorize(
        self, *, secret: str | None, api_slug: str, version: str, address: str | None
    ) -> Grant:
        """``gateway.auth.handshake_authorize`` in a worker thread; raises ``HandshakeRefused``."""
        return await db_call(
            handshake_authorize, secret=secret, api_slug=api_slug, version=version, address=address
        )

    async def _recheck(self, grant: Grant, checks: frozenset[str] = GRANT_CHECKS) -> HandshakeRefused | None:
        """The refusal ``grant`` would get now (quota aside; ``checks`` of
        ``gateway.auth.GRANT_CHECKS`` only), or None: the second look after joining the control
        groups, so a revocation committed in between is not missed."""
        return (await db_call(grants_refusals, [grant], quota=False, checks=checks))[0]

    @staticmethod
    def _groups(grant: Grant) -> tuple[str, ...]:
        return (
            credential_group(grant.credential),
            subscription_group(grant.subscription_id),
            api_group(grant.api_id),
            api_version_group(grant.api_version_id),
        )

    async def _groups_join(self, grant: Grant) -> None:
        """Join ``grant``'s control groups (through this process's hub). Raises
        ``HandshakeRefused`` (1013) when the channel layer cannot be reached: without its
        control messages a connection would miss a revocation for up to an audit interval, so
        none is opened then."""
        self.grant = grant
        hub = control_hub()
        if hub is None:
            return
        groups = self._groups(grant)
        try:
            await hub.join(self, groups)
        except ControlUnavailable as exc:
            log.warning("Handshake refused with 1013: %s", exc)
            raise HandshakeRefused(
                CLOSE_TRY_AGAIN_LATER, REASON_CONTROL_DOWN, credential=grant.credential
            ) from None
        self._groups_held = groups

    def _groups_leave(self) -> None:
        """Leave the control groups (never waits: the hub leaves them in the layer later)."""
        groups, self._groups_held = self._groups_held, None
        self._accepted = False
        self._control_pending = None
        if groups is not None:
            hub = control_hub()
            if hub is not None:
                hub.leave(self, groups)

    # --- throttling (gateway.throttling) ----------------------------------------------------

    async def _throttling_admit(self, grant: Grant) -> None:
        """Apply the plan's policy to a handshake that passed every other check: take a
        connection slot of the subscription and the application (4429 when either is full),
        take the subscription's throttle and its first lease (4429 when the quota is used up,
        or when the plan closes stopped clients and the window is used up). Raises
        ``HandshakeRefused``; on success ``throttle_release`` runs in ``_throttling_release``.
        While Redis is unreachable the slot is skipped ("open") or the handshake refused with
        1013 ("closed", ``GATEWAY_THROTTLE_REDIS_DOWN``)."""
        policy = grant.policy
        if policy is None:
            return
        try:
            self._slot, full = await connection_slots().admit(
                policy, grant.subscription_id, grant.application_id
            )
        except redis_errors() as exc:
            if str(settings.GATEWAY_THROTTLE_REDIS_DOWN) == "closed":
                raise HandshakeRefused(
                    CLOSE_TRY_AGAIN_LATER,
                    "Throttling storage (Redis) unavailable; try again later.",
                    credential=grant.credential,
                ) from None
            log.warning("Connection limits not checked (Redis unreachable, failing open): %r", exc)
            full = None
        if full is not None:
            raise HandshakeRefused(
                CLOSE_THROTTLED, full, credential=grant.credential, error="connection_limit"
            )
        throttle = self.throttle = throttle_acquire(policy, grant.subscription_id)
        if throttle is not None:
            await throttle.seed(*grant.quota_used)
            await throttle.prime()
            if throttle.blocked and (
                throttle.blocked_kind in ("quota", "bytes") or policy.limit_notice == "close"
            ):
                retry = max(0, int(throttle.blocked_until - time.time() + 0.999))
                quota = throttle.blocked_kind in ("quota", "bytes")
                raise HandshakeRefused(
                    CLOSE_THROTTLED,
                    f"{limit_reason(policy, throttle.blocked_kind)}; retry after {retry} s",
                    credential=grant.credential,
                    error="quota_exhausted" if quota else "rate_limited",
                    retry_after=retry,
                )
        if policy.max_connection_seconds:
            self._duration = asyncio.get_running_loop().call_later(
                policy.max_connection_seconds, self._duration_reached
            )

    def _throttling_release(self) -> None:
        """Give back the slot and the throttle; cancel the duration timer. Idempotent."""
        if self._duration is not None:
            self._duration.cancel()
            self._duration = None
        slot, self._slot = self._slot, None
        if slot is not None:
            connection_slots().release(slot)
        throttle, self.throttle = self.throttle, None
        throttle_release(throttle)

    def _duration_reached(self) -> None:
        self._duration = None
        policy = self.grant.policy if self.grant is not None else None
        seconds = policy.max_connection_seconds if policy is not None else 0
        self._limit_task = asyncio.get_running_loop().create_task(
            self.close(  # type: ignore[attr-defined]
                CLOSE_DURATION_LIMIT,
                f"Connection duration limit reached ({seconds} s); reconnect to continue.",
            )
        )

    def _throttled_close(self, throttle: SubscriptionThrottle) -> None:
        """Close with 4429 for a plan whose ``limit_notice`` is "close" (never waits)."""
        retry = max(0, int(throttle.blocked_until - time.time() + 0.999))
        reason = f"{limit_reason(throttle.policy, throttle.blocked_kind)}; retry after {retry} s"
        self._limit_task = asyncio.get_running_loop().create_task(self.close(CLOSE_THROTTLED, reason))  # type: ignore[attr-defined]

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
            self.close(CLOSE_UNAUTHORIZED, "Credential expired.")  # type: ignore[attr-defined]
        )

    def _peer(self) -> str:
        client = self.scope.get("client") or ("?", 0)  # type: ignore[attr-defined]
        return f"{client[0]}:{client[1]}"

    # --- control messages (gateway.control) ------------------------------------------------

    def control_message(self, message: dict[str, Any]) -> None:
        """One control message of a group this connection joined (``ControlHub``; never waits):
        handled by ``gateway_<name>`` in a task once the connection is live, kept until then."""
        if not self._accepted:
            if self._groups_held is not None or self.grant is not None:
                if self._control_pending is None:
                    self._control_pending = []
                self._control_pending.append(message)
            return
        task = asyncio.get_running_loop().create_task(self._control_handle(message))
        _control_tasks.add(task)
        task.add_done_callback(_control_tasks.discard)

    async def _control_handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        handler = None
        if isinstance(kind, str) and kind.startswith("gateway."):
            handler = getattr(self, kind.replace(".", "_"), None)
        if handler is None:
            log.warning("Control message of unknown type %.100r ignored", kind)
            return
        try:
            await handler(message)
        except Exception:  # noqa: BLE001 - one message must not break the connection's others
            log.exception("Control message %s failed", kind)

    async def gateway_revoke(self, event: dict[str, Any]) -> None:
        """Control message ``gateway.revoke``: the credential was revoked (4401)."""
        kind = self.grant.credential.kind if self.grant else ""
        await self.close(  # type: ignore[attr-defined]
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
        await self.close(CLOSE_FORBIDDEN, subscription_ended_reason(event.get("status")))  # type: ignore[attr-defined]

    async def gateway_plan_changed(self, event: dict[str, Any]) -> None:
        """Control message ``gateway.plan_changed``: the subscription moved to another business
        plan; the client reconnects to continue under it (4409)."""
        await self.close(CLOSE_PLAN_CHANGED, REASON_PLAN_CHANGED)  # type: ignore[attr-defined]

    async def gateway_api_unavailable(self, event: dict[str, Any]) -> None:
        """Control message ``gateway.api_unavailable``: the API was blocked or retired
        (``scope`` absent or ``"api"``), or the version retired (``scope`` ``"version"``);
        ``status`` is the new state (4410)."""
        await self.close(  # type: ignore[attr-defined]
            CLOSE_GONE, api_unavailable_reason(event.get("scope", "api"), event.get("status", ""))
        )


# The open connections of this process, for the audit; weak, so a dead one never lingers.
_live: weakref.WeakSet[LiveConnection] = weakref.WeakSet()
_audits: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


def live_add(connection: LiveConnection) -> None:
    """Register an accepted connection with this process's audit (and start the audit) and its
    live snapshot (``gateway.capture``), and hand it the control messages that arrived during
    its handshake."""
    _live.add(connection)
    connection._accepted = True
    connection_opened(connection)
    pending, connection._control_pending = connection._control_pending, None
    for message in pending or ():
        connection.control_message(message)
    loop = asyncio.get_running_loop()
    task = _audits.get(loop)
    if task is None or task.done():
        _audits[loop] = loop.create_task(_audit_forever(), name="eventgate-live-audit")


def live_discard(connection: LiveConnection) -> None:
    """Forget a connection that is ending. Idempotent."""
    _live.discard(connection)


def live_connections() -> list[LiveConnection]:
    """This process's open (accepted, not yet ending) connections, WebSocket and SSE."""
    return list(_live)


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


def _audit_soon() -> None:
    """Run the audit now (a control message that named no group: which connections it was for
    is unknown)."""
    task = asyncio.get_running_loop().create_task(live_connections_audit())
    _control_tasks.add(task)  # type: ignore[arg-type]
    task.add_done_callback(_control_tasks.discard)  # type: ignore[arg-type]


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
    refusals = await db_call(grants_refusals, grants)
    closed = 0
    for connection, refusal in zip(connections, refusals, strict=True):
        if refusal is not None:
            await connection.close(code=refusal.code, reason=refusal.reason)  # type: ignore[attr-defined]
            closed += 1
    return closed
