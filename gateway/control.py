"""Control messages to live gateway connections, over the Channels layer (never the data path).

Each accepted connection joins the groups of its credential, its subscription, its API and its
API version. When a key stops being usable (revoked, expired by an admin), a subscription stops
being active (e.g. cancelled), an API stops being connectable (blocked, retired) or a version is
retired, ``gateway.signals`` sends a message once the change commits, and every gateway process
closes those connections: 4401 for a credential, 4403 for a subscription (suspended, cancelled),
4409 for a subscription's plan change, 4410 for an API or version (``gateway.auth.CLOSE_*``).
Saves through the ORM (services, Django admin) are covered; raw ``QuerySet.update()`` calls must
call these functions themselves. Every message carries the name of the group it was sent to
(``"group"``), so one process-wide receiver can tell which connections it is for.

Receiving side: one ``ControlHub`` per gateway process (per event loop) holds ONE channel of the
layer and ONE receive loop, and an index group → local connections. It adds its channel to a
group in the layer when the first local connection joins the group and removes it some seconds
(``GATEWAY_GRANT_CACHE_SECONDS``) after the last one left, and hands each message to the
connections of its group (their ``control_message``). So a process costs the layer one channel
whatever its number of connections, and a connection costs it nothing when its groups are held
already. The hub also says whether a group was held without interruption, and without a message,
since a given moment (``ControlHub.tick``, ``ControlHub.unchanged``): what lets
``gateway.connections`` trust a grant it checked before that moment.

Redis unreachable (docs/gateway.md, "Redis down"): the receive loop retries every
``CONTROL_RETRY_SECONDS``; meanwhile ``join`` raises ``ControlUnavailable`` (the handshake is
refused with 1013) and nothing is ``unchanged``; once Redis answers again the hub adds its
channel to every group it holds (Redis may have restarted empty) before it receives again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from asgiref.sync import async_to_sync
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# Seconds between attempts to receive control messages while the channel layer is unreachable.
CONTROL_RETRY_SECONDS = 1.0
# Seconds between the hub's rounds of leaving groups no local connection needs any more.
SWEEP_SECONDS = 1.0
# Layer commands (group add or discard) one hub has in flight at most: channels-redis' pool holds
# 100 connections and refuses more at once (MaxConnectionsError) rather than waiting.
LAYER_COMMANDS_IN_FLIGHT = 32
# Seconds a shutting-down process spends leaving its groups at most.
SHUTDOWN_LEAVE_SECONDS = 3.0


def api_key_group(key_id: int) -> str:
    """The Channels group of connections opened with API key ``key_id``."""
    return f"gateway.apikey.{key_id}"


def subscription_group(subscription_id: int) -> str:
    """The Channels group of connections of subscription ``subscription_id``."""
    return f"gateway.subscription.{subscription_id}"


def api_group(api_id: int) -> str:
    """The Channels group of connections to any version of API ``api_id``."""
    return f"gateway.api.{api_id}"


def api_version_group(api_version_id: int) -> str:
    """The Channels group of connections to API version ``api_version_id``."""
    return f"gateway.apiversion.{api_version_id}"


def _group_send(group: str, message: dict[str, Any]) -> None:
    message = {**message, "group": group}  # the hub's receiver routes by it (ControlHub)
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # the usual case: sync code (views, admin, Celery) with no loop here
        try:
            async_to_sync(layer.group_send)(group, message)
        except Exception:  # noqa: BLE001 - Redis down: the change is committed; the audit closes them
            log.exception(
                "Could not send %s to %s; the periodic audit will close them", message["type"], group
            )
    else:  # called from async code: async_to_sync would refuse, so send in the background
        task = loop.create_task(layer.group_send(group, message))
        _pending.add(task)
        task.add_done_callback(_pending.discard)


_pending: set[asyncio.Task[None]] = set()  # keeps background sends alive until they finish


def api_key_revoked_notify(*, key_id: int) -> None:
    """Tell every gateway process to close the live connections of key ``key_id`` (sync code)."""
    _group_send(api_key_group(key_id), {"type": "gateway.revoke"})


def subscription_ended_notify(*, subscription_id: int, status: str = "") -> None:
    """Tell every gateway process to close the live connections of a subscription that is no
    longer active (sync code); ``status`` (its new ``Subscription.Status``, e.g. ``suspended``)
    is named in the close reason."""
    _group_send(subscription_group(subscription_id), {"type": "gateway.subscription_ended", "status": status})


def api_unavailable_notify(*, api_id: int, status: str) -> None:
    """Tell every gateway process to close the live connections of API ``api_id``, which moved
    to ``status`` (an ``API.Status`` value the gateway does not serve: blocked, retired)."""
    _group_send(api_group(api_id), {"type": "gateway.api_unavailable", "status": status})


def api_version_unavailable_notify(*, api_version_id: int, status: str) -> None:
    """Tell every gateway process to close the live connections of API version
    ``api_version_id``, which moved to ``status`` (not live: retired)."""
    _group_send(
        api_version_group(api_version_id),
        {"type": "gateway.api_unavailable", "status": status, "scope": "version"},
    )


def oauth_token_group(token_id: int) -> str:
    """The Channels group of connections opened with OAuth2 access token ``token_id``."""
    return f"gateway.oauthtoken.{token_id}"


def oauth_token_revoked_notify(*, token_id: int) -> None:
    """Tell every gateway process to close the live connections of access token ``token_id``
    (revoked: deleted through DOT's revoke endpoint, the portal or the admin)."""
    _group_send(oauth_token_group(token_id), {"type": "gateway.revoke"})


def subscription_plan_changed_notify(*, subscription_id: int) -> None:
    """Tell every gateway process to close the live connections of a subscription that moved to
    another business plan (close code 4409: reconnect to continue under the new plan)."""
    _group_send(subscription_group(subscription_id), {"type": "gateway.plan_changed"})


def credential_expiry_notify(*, group: str, expires_at: float | None) -> None:
    """Tell every gateway process that the credential of ``group`` (``api_key_group`` or
    ``oauth_token_group``) now expires at ``expires_at`` (Unix seconds; None: never), e.g. at
    the end of a rotation's grace period. Message ``{"type": "gateway.credential_expiry",
    "expires_at": float | None}``: each live connection moves its expiry timer, closes with 4401
    "Credential expired." when it fires and refuses client events after it."""
    _group_send(group, {"type": "gateway.credential_expiry", "expires_at": expires_at})


# --- Receiving: one hub per gateway process ----------------------------------------------------


def layer_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the channel layer's Redis cannot be reached (redis-py errors, a
    refused or reset socket, a timeout), as opposed to a bug."""
    return isinstance(exc, RedisError | OSError | TimeoutError)


class ControlUnavailable(Exception):
    """The channel layer (Redis) cannot be reached: a connection joining now could miss a
    control message, so none is opened (close code 1013, docs/gateway.md "Redis down")."""


class ControlMember(Protocol):
    """A local connection in the hub's groups (``gateway.connections.LiveConnection``)."""

    def control_message(self, message: dict[str, Any]) -> None:
        """Handle one control message of a group the member joined; must not block."""


class ControlHub:
    """The control messages of one gateway process (one event loop): one channel of the layer,
    one receive loop, and the local members of each group.

    - ``join(member, groups)`` (async) makes ``member`` receive the messages of ``groups``; the
      hub adds its channel to a group in the layer only when it does not hold it yet (2 Redis
      commands per group, none for a held one). Raises ``ControlUnavailable`` while the layer
      is unreachable. ``join_held`` does the same without waiting, only when every group is
      held already. ``leave(member, groups)`` never waits: a group no member needs is left in
      the layer ``linger`` seconds later (so reconnecting clients find it held).
    - Each message received is handed to the ``control_message`` of the members of its
      ``"group"``; a message without one (an older sender) reaches nobody: ``on_unknown`` runs
      (the process's audit) and every group counts as changed.
    - ``tick`` is a counter that every join, message and rejoin advances; ``changed(group)`` is
      the tick of the group's last join or message (None when the hub does not hold it).
      ``unchanged(groups, since)`` says whether every group was held, with no message, from
      tick ``since`` until now, and the layer reachable: a check of the database made after
      ``since`` then still holds, except for what sends no message (raw updates, quotas).
    """

    def __init__(self, layer: BaseChannelLayer, *, linger: float) -> None:
        self.layer = layer
        self.linger = linger
        self.channel_name: str | None = None
        self.available = True
        self.tick = 0
        self.on_unknown: Callable[[], None] | None = None
        self.members: dict[str, set[ControlMember]] = {}
        self._changed: dict[str, int] = {}  # held groups: tick of their last join or message
        self._joined_at: dict[str, float] = {}  # held groups: when the layer last added them (monotonic)
        self._idle: dict[str, float] = {}  # held groups without members: since when (monotonic)
        self._busy: dict[str, asyncio.Future[None]] = {}  # groups with a layer command in flight
        self._starting: asyncio.Future[None] | None = None
        self._commands = asyncio.Semaphore(LAYER_COMMANDS_IN_FLIGHT)
        self._tasks: list[asyncio.Task[None]] = []
        # Counters for /gateway/status.
        self.messages = 0
        self.group_adds = 0
        self.group_discards = 0
        self.outages = 0

    # --- membership -------------------------------------------------------------------------

    async def join(self, member: ControlMember, groups: Sequence[str]) -> None:
        """Make ``member`` receive the control messages of ``groups``; returns once the layer
        delivers them to this hub. Raises ``ControlUnavailable`` (then ``member`` joined none)."""
        if not self.available:
            raise ControlUnavailable("the channel layer is unreachable")
        self._claim(member, groups)
        try:
            await self._start()
            missing = [group for group in groups if group not in self._changed]
            if len(missing) == 1:
                await self._layer_add(missing[0])
            elif missing:
                await asyncio.gather(*(self._layer_add(group) for group in missing))
        except BaseException:
            self.leave(member, groups)
            raise
        if not self.available:
            self.leave(member, groups)
            raise ControlUnavailable("the channel layer became unreachable")

    def join_held(self, member: ControlMember, groups: Sequence[str]) -> bool:
        """``join`` without waiting: True (and ``member`` joined) if the layer is reachable and
        every group is held, else False (nothing changed)."""
        if not self.available or any(group not in self._changed for group in groups):
            return False
        self._claim(member, groups)
        return True

    def leave(self, member: ControlMember, groups: Iterable[str]) -> None:
        """Stop handing ``groups``' messages to ``member`` (never waits). Idempotent."""
        now = time.monotonic()
        for group in groups:
            members = self.members.get(group)
            if members is None:
                continue
            members.discard(member)
            if not members:
                del self.members[group]
                self._idle[group] = now

    def _claim(self, member: ControlMember, groups: Sequence[str]) -> None:
        for group in groups:
            members = self.members.get(group)
            if members is None:
                members = self.members[group] = set()
            members.add(member)
            self._idle.pop(group, None)

    def changed(self, group: str) -> int | None:
        """The tick of ``group``'s last join or message; None if the hub does not hold it."""
        return self._changed.get(group)

    def unchanged(self, groups: Iterable[str], since: int) -> bool:
        """Whether every one of ``groups`` was held with no message from tick ``since`` until
        now, and the layer is reachable."""
        if not self.available:
            return False
        changed = self._changed
        return all(changed.get(group, since + 1) <= since for group in groups)

    def status(self) -> dict[str, Any]:
        """Counters for ``/gateway/status``: groups held (and with members), messages
        received, layer commands sent (group add and discard), outages."""
        return {
            "available": self.available,
            "groups": len(self._changed),
            "groups_with_members": len(self.members),
            "messages": self.messages,
            "layer_group_adds": self.group_adds,
            "layer_group_discards": self.group_discards,
            "outages": self.outages,
        }

    # --- the layer --------------------------------------------------------------------------

    async def _start(self) -> None:
        if self.channel_name is not None:
            return
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._channel_open())
        await asyncio.shield(self._starting)

    async def _channel_open(self) -> None:
        self.channel_name = await self.layer.new_channel()  # no I/O in channels-redis
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._receive_forever(), name="eventgate-control-receive"),
            loop.create_task(self._sweep_forever(), name="eventgate-control-sweep"),
        ]

    async def _layer_add(self, group: str) -> None:
        """Add the hub's channel to ``group`` in the layer unless held; one command in flight
        per group (a join waits for a leave in flight, so the layer sees them in order)."""
        while group not in self._changed:
            busy = self._busy.get(group)
            if busy is not None:
                await asyncio.shield(busy)
                continue
            done = self._busy[group] = asyncio.get_running_loop().create_future()
            try:
                for attempt in (1, 2):
                    try:
                        async with self._commands:
                            await self.layer.group_add(group, self.channel_name)
                        break
                    except Exception as exc:
                        # Once more: after a Redis restart the first command may meet a pooled
                        # connection that died with the old server.
                        if attempt == 2 or not layer_unavailable(exc):
                            raise
            except Exception as exc:
                if not layer_unavailable(exc):
                    raise
                raise ControlUnavailable(f"channel layer unavailable: {exc!r}") from None
            else:
                self.group_adds += 1
                self.tick += 1
                self._changed[group] = self.tick
                self._joined_at[group] = time.monotonic()
                if group not in self.members:  # its joiner left meanwhile: leave it later
                    self._idle[group] = self._joined_at[group]
            finally:
                del self._busy[group]
                done.set_result(None)

    async def _layer_discard(self, group: str) -> None:
        """Leave ``group`` in the layer (best effort: channels-redis forgets members after its
        ``group_expiry`` anyway)."""
        self._changed.pop(group, None)
        self._joined_at.pop(group, None)
        self._idle.pop(group, None)
        if not self.available:
            return
        done = self._busy[group] = asyncio.get_running_loop().create_future()
        try:
            async with self._commands:
                await self.layer.group_discard(group, self.channel_name)
            self.group_discards += 1
        except Exception as exc:  # noqa: BLE001 - best effort
            log.warning("Could not leave control group %s: %r", group, exc)
        finally:
            del self._busy[group]
            done.set_result(None)

    async def _receive_forever(self) -> None:
        """Receive and hand out control messages; retry every ``CONTROL_RETRY_SECONDS`` while the
        layer is unreachable, and rejoin every held group before receiving again. Cancelled (the
        event loop shuts down: ``asyncio.run`` cancels every task), it leaves its groups first."""
        try:
            await self._receive_loop()
        except asyncio.CancelledError:
            await self._leave_all()
            raise

    async def _leave_all(self, timeout: float = SHUTDOWN_LEAVE_SECONDS) -> None:
        """Take this process's channel out of every group it holds (process shutdown): otherwise
        the layer keeps it there for its ``group_expiry`` (24 h in channels-redis) and every
        control message to those groups is also written to a channel nobody reads. Best effort,
        at most ``timeout`` seconds; never raises."""
        groups = list(self._changed)
        self._changed.clear()
        self._joined_at.clear()
        self._idle.clear()
        if not groups or not self.available or self.channel_name is None:
            return

        async def discard(group: str) -> None:
            async with self._commands:
                await self.layer.group_discard(group, self.channel_name)
            self.group_discards += 1

        tasks = [asyncio.ensure_future(discard(group)) for group in groups]
        for task in tasks:  # retrieved here, so a failure is not reported as never retrieved
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        failed = sum(1 for task in tasks if task.done() and (task.cancelled() or task.exception()))
        for task in pending:
            task.cancel()
        if pending or failed:  # shutting down: what is left expires by itself
            log.warning(
                "Could not leave %d of %d control groups at shutdown", len(pending) + failed, len(groups)
            )

    async def _receive_loop(self) -> None:
        failures = 0
        while True:
            try:
                if not self.available:
                    await self._rejoin()
                    self.available = True
                    log.info("Control messages available again after %d failed attempts", failures)
                    failures = 0
                message = await self.layer.receive(self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not layer_unavailable(exc):
                    log.exception("Receiving control messages failed")
                if self.available:
                    log.warning(
                        "Control messages unavailable (%r); retrying every %g s", exc, CONTROL_RETRY_SECONDS
                    )
                    self.available = False
                    self.outages += 1
                failures += 1
                await asyncio.sleep(CONTROL_RETRY_SECONDS)
                continue
            self._dispatch(message)

    async def _rejoin(self) -> None:
        """Add the hub's channel to every group it holds (after an outage Redis may have lost
        them); each rejoined group counts as changed. Raises what the layer raises."""
        groups = list(self._changed)

        async def add(group: str) -> None:
            async with self._commands:
                await self.layer.group_add(group, self.channel_name)
            self.group_adds += 1

        await asyncio.gather(*(add(group) for group in groups))
        now = time.monotonic()
        self.tick += 1
        for group in groups:
            if group in self._changed:
                self._changed[group] = self.tick
                self._joined_at[group] = now

    def _dispatch(self, message: dict[str, Any]) -> None:
        self.messages += 1
        self.tick += 1
        group = message.get("group")
        if not isinstance(group, str):
            log.warning("Control message %r names no group: all groups count as changed", message.get("type"))
            for held in self._changed:
                self._changed[held] = self.tick
            if self.on_unknown is not None:
                self.on_unknown()
            return
        if group in self._changed:
            self._changed[group] = self.tick
        for member in tuple(self.members.get(group, ())):
            try:
                member.control_message(message)
            except Exception:  # noqa: BLE001 - one member's failure must not stop the others
                log.exception("Control message %s failed for a connection", message.get("type"))

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self._sweep()
            except Exception:  # noqa: BLE001 - next round
                log.exception("Control group sweep failed")

    async def _sweep(self) -> None:
        """Leave groups without members for ``linger`` seconds; re-add held groups older than
        half the layer's ``group_expiry`` (channels-redis drops members after it, 24 h)."""
        now = time.monotonic()
        for group, since in list(self._idle.items()):
            if group not in self._changed:  # never joined (a join that failed)
                self._idle.pop(group, None)
            elif now - since >= self.linger and group not in self.members and group not in self._busy:
                await self._layer_discard(group)
        refresh = float(getattr(self.layer, "group_expiry", 86400)) / 2
        for group, joined_at in list(self._joined_at.items()):
            if not self.available:
                return
            if now - joined_at >= refresh and group in self.members and group not in self._busy:
                try:
                    async with self._commands:
                        await self.layer.group_add(group, self.channel_name)
                except Exception as exc:  # noqa: BLE001 - the receive loop notices an outage
                    log.warning("Could not refresh control group %s: %r", group, exc)
                    return
                self.group_adds += 1
                if group in self._joined_at:
                    self._joined_at[group] = time.monotonic()


_hubs: dict[asyncio.AbstractEventLoop, ControlHub] = {}


def control_hub() -> ControlHub | None:
    """This event loop's ``ControlHub`` (created on first use), or None when no channel layer is
    configured. Call from the event loop."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        layer = get_channel_layer()
        if layer is None:
            return None
        for other in [other for other in _hubs if other.is_closed()]:
            del _hubs[other]
        hub = _hubs[loop] = ControlHub(layer, linger=float(settings.GATEWAY_GRANT_CACHE_SECONDS))
    return hub
