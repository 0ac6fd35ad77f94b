"""Throttling policies for events: per subscription, both directions, across gateway processes.

A subscription's business plan is its throttling policy (``Policy``, from ``BusinessPlan``).
Every limit is keyed by the **subscription** (application × API): two applications of one
owner never share a counter; two credentials or connections of one application always do;
reconnecting never resets a window. The full contract is docs/throttling.md.

Limits, all counted in Redis with the ``limits`` library (fixed windows,
``limits.aio.strategies.FixedWindowRateLimiter``; in process memory when ``REDIS_URL`` is unset):

- **rate**: ``rate_limit_events`` per ``rate_limit_unit`` (second, minute, hour, day, month =
  30 days, as ``limits`` counts them). A window starts at the subscription's first counted
  event and lasts one unit. With a **burst** allowance B the item is N + B per unit, and a second
  item caps N × ``BURST_WINDOWS`` per ``BURST_WINDOWS`` units, so a burst is paid back by the
  following windows (the sustained rate stays N);
- **quota**: ``quota_events`` events and ``quota_bytes`` bytes per billing period (the plan's
  ``billing_period``: the calendar month or year, UTC; the period, ``"2026-11"`` or ``"2026"``,
  is part of the key, so a new period starts new counters without any per-event work). With
  ``quota_action`` "overage" the quotas are not enforced: events keep flowing and billing
  charges the excess;
- what counts: the events of ``counted_directions`` ("out" server → client deliveries, "in"
  client → server events, or both), one per event delivered to a connection.

**Leases.** A Redis round trip per event would cap the gateway near 10k events/s, so each
process takes events (and bytes) from Redis in leases (``hit(item, cost=lease)`` on every item)
and counts down locally (``SubscriptionThrottle.take``, no await, no I/O). A lease is at most
``lease_events`` = clamp(smallest limit // 100, 1, ``GATEWAY_THROTTLE_LEASE_EVENTS``) and never
more than the window has left, so Redis never hands out more than the limit: **overshoot is 0
events per window**. Within that cap a lease follows the subscription's pace
(``SubscriptionThrottle._lease_adapt``). A lease dies when its window resets (a timer), so it
cannot spill into the next window. The price is *undershoot*: at a window's end each process may hold up to
1.25 leases it will not use (the next lease is fetched when a quarter is left), so with P
processes the subscription can be stopped up to 1.25 × P × ``lease_events`` events early
(``undershoot_bound``). Both bounds are asserted by tests/gateway/test_throttling_processes.py.

**When Redis is unreachable**, ``GATEWAY_THROTTLE_REDIS_DOWN`` decides: ``"open"`` (default)
grants local leases (counted, and added to Redis when it is back, so the window catches up;
overshoot during the outage is at most one lease per process per refill attempt, every
``REDIS_RETRY_SECONDS``), ``"closed"`` throttles every counted event until Redis answers again
(``blocked_kind`` "unavailable"). Either way each refill tries Redis again.

Connections (``ConnectionSlots``): concurrent connections per subscription (``max_connections``)
and per application over all its subscriptions (``max_connections_per_application``), held in
Redis sorted sets (one member per connection, scored by an expiry that each process refreshes
every ``SLOT_HEARTBEAT_SECONDS``, so a killed process's connections age out after
``SLOT_TTL_SECONDS``). ``limits`` has no concurrency primitive; this is ours (a 20-line Lua
script).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from limits import (
    RateLimitItem,
    RateLimitItemPerDay,
    RateLimitItemPerHour,
    RateLimitItemPerMinute,
    RateLimitItemPerMonth,
    RateLimitItemPerSecond,
)
from limits import storage as sync_storage
from limits import strategies as sync_strategies
from limits.aio import strategies as aio_strategies

from portal.models import BusinessPlan

log = logging.getLogger(__name__)

# A burst above the rate is paid back over this many windows (module docstring).
BURST_WINDOWS = 10
# A lease used up faster than this grows ×4; one that lasts longer than LEASE_SLOW_SECONDS halves.
LEASE_FAST_SECONDS = 1.0
LEASE_SLOW_SECONDS = 10.0
# Seconds an event may wait for its subscription's next lease before it counts as throttled.
WAIT_SECONDS = 10.0
# Seconds between attempts to reach Redis while it is down.
REDIS_RETRY_SECONDS = 1.0
# Close code of a connection that reached its plan's duration limit (reconnect to continue).
CLOSE_DURATION_LIMIT = 4408
# Close code of a connection stopped by a limit ("close" notice) or refused at the handshake.
CLOSE_THROTTLED = 4429
# Connection slots: members expire after SLOT_TTL_SECONDS unless refreshed.
SLOT_TTL_SECONDS = 90.0
SLOT_HEARTBEAT_SECONDS = 30.0
SLOT_BATCH_SECONDS = 0.05
NAMESPACE = "eventgate"
# "Unlimited" local allowance: an int the hot path can subtract from for centuries.
UNLIMITED = 1 << 62

ALLOW, THROTTLE, WAIT = 1, 0, -1

_UNIT_ITEMS: dict[str, type[RateLimitItem]] = {
    BusinessPlan.RateUnit.SECOND: RateLimitItemPerSecond,
    BusinessPlan.RateUnit.MINUTE: RateLimitItemPerMinute,
    BusinessPlan.RateUnit.HOUR: RateLimitItemPerHour,
    BusinessPlan.RateUnit.DAY: RateLimitItemPerDay,
    BusinessPlan.RateUnit.MONTH: RateLimitItemPerMonth,
}
# Quota keys name their billing period; the item's expiry only has to outlast the longest period
# of its kind (a month, a leap year), so a counter never resets inside its period.
_QUOTA_EXPIRY_DAYS = {BusinessPlan.BillingPeriod.MONTH: 32, BusinessPlan.BillingPeriod.YEAR: 367}


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """A business plan's throttling fields, as the gateway needs them (events, bytes, seconds;
    None = unlimited). Built by ``Policy.from_plan``; carried on the handshake's ``Grant``."""

    plan_id: int
    plan_name: str
    rate_events: int | None = None
    rate_unit: str = BusinessPlan.RateUnit.MINUTE
    burst_events: int = 0
    quota_events: int | None = None
    quota_bytes: int | None = None
    directions: frozenset[str] = frozenset({"out", "in"})
    max_connections: int | None = None
    max_connections_per_application: int | None = None
    max_connection_seconds: int | None = None
    quota_action: str = BusinessPlan.QuotaAction.STOP
    limit_notice: str = BusinessPlan.LimitNotice.NOTIFY
    # The quotas' period (``BusinessPlan.billing_period``): "month" or "year", calendar, UTC.
    billing_period: str = BusinessPlan.BillingPeriod.MONTH

    # The BusinessPlan fields from_plan reads (for ``values()`` / ``only()`` queries).
    # The policy fields the gateway does not enforce (webhooks and billing do) are left out;
    # ``billing_period`` is the quotas' period (changing it starts new counters: 4409).
    PLAN_FIELDS = (
        "pk",
        "name",
        *(
            name
            for name in BusinessPlan.POLICY_FIELDS
            if name
            not in (
                "max_webhook_subscriptions",
                "overage_price_per_1000_events_minor",
                "overage_price_per_gb_minor",
            )
        ),
        "billing_period",
    )

    @classmethod
    def from_plan(cls, plan: BusinessPlan) -> Policy:
        """The policy of ``plan`` (any ``BusinessPlan`` holding ``PLAN_FIELDS``)."""
        return cls(
            plan_id=plan.pk,
            plan_name=plan.name,
            rate_events=plan.rate_limit_events,
            rate_unit=plan.rate_limit_unit,
            burst_events=plan.burst_events or 0,
            quota_events=plan.quota_events,
            quota_bytes=plan.quota_bytes,
            directions=frozenset(plan.directions_counted),
            max_connections=plan.max_connections,
            max_connections_per_application=plan.max_connections_per_application,
            max_connection_seconds=plan.max_connection_seconds,
            quota_action=plan.quota_action,
            limit_notice=plan.limit_notice,
            billing_period=plan.billing_period,
        )

    @property
    def enforces_quotas(self) -> bool:
        """Whether reaching a quota stops events (``quota_action`` "stop")."""
        return self.quota_action == BusinessPlan.QuotaAction.STOP

    @property
    def throttles(self) -> bool:
        """Whether any event of this policy must be counted against a limit."""
        return self.rate_events is not None or (
            self.enforces_quotas and (self.quota_events is not None or self.quota_bytes is not None)
        )

    def counts(self, direction: str) -> bool:
        """Whether events of ``direction`` ("out" | "in") count against this policy's limits."""
        return direction in self.directions and self.throttles


@dataclasses.dataclass(frozen=True, slots=True)
class Limit:
    """One counter a subscription's events take from: ``kind`` "rate", "burst" (the sustained
    item of a burst allowance), "quota" (events) or "bytes"; the ``limits`` item and the
    identifiers of its key."""

    kind: str
    item: RateLimitItem
    identifiers: tuple[str, ...]

    @property
    def amount(self) -> int:
        return self.item.amount


def billing_period(now: float | None = None, kind: str = BusinessPlan.BillingPeriod.MONTH) -> str:
    """The billing period of ``kind`` (``BusinessPlan.billing_period``: "month" or "year";
    calendar periods in UTC, as ``billing.services.billing_period_containing``) containing Unix
    time ``now`` (default: now), as ``"2026-11"`` (a month) or ``"2026"`` (a year): part of
    every quota key, so a new period starts a new counter."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    if kind == BusinessPlan.BillingPeriod.YEAR:
        return f"{moment.year:04d}"
    return f"{moment.year:04d}-{moment.month:02d}"


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """``(start, end)`` of billing period ``period`` (``"2026-11"`` or ``"2026"``, from
    ``billing_period``) as aware UTC datetimes, ``end`` exclusive. Raises ``ValueError`` for
    anything else."""
    year, _, month = period.partition("-")
    if not month:
        return datetime(int(year), 1, 1, tzinfo=UTC), datetime(int(year) + 1, 1, 1, tzinfo=UTC)
    start = datetime(int(year), int(month), 1, tzinfo=UTC)
    end = (
        datetime(start.year + 1, 1, 1, tzinfo=UTC)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def period_end(period: str) -> float:
    """Unix time at which billing period ``period`` (``"2026-11"`` or ``"2026"``) ends."""
    return period_bounds(period)[1].timestamp()


def policy_limits(policy: Policy, subscription_id: int, period: str | None = None) -> list[Limit]:
    """The counters ``policy`` keeps for ``subscription_id`` in billing ``period`` (default: the
    period of ``policy.billing_period`` holding now), events first (``kind`` != "bytes"). The
    same keys are used by the gateway (async), webhook deliveries and the portal (sync)."""
    period = period or billing_period(kind=policy.billing_period)
    expiry = _QUOTA_EXPIRY_DAYS.get(
        policy.billing_period, _QUOTA_EXPIRY_DAYS[BusinessPlan.BillingPeriod.YEAR]
    )
    sub = str(subscription_id)
    limits: list[Limit] = []
    if policy.rate_events is not None:
        unit = _UNIT_ITEMS[policy.rate_unit]
        limits.append(
            Limit(
                "rate",
                unit(policy.rate_events + policy.burst_events, namespace=NAMESPACE),
                ("sub", sub, "rate"),
            )
        )
        if policy.burst_events:
            sustained = unit(policy.rate_events * BURST_WINDOWS, BURST_WINDOWS, namespace=NAMESPACE)
            limits.append(Limit("burst", sustained, ("sub", sub, "burst")))
    if policy.enforces_quotas and policy.quota_events is not None:
        item = RateLimitItemPerDay(policy.quota_events, expiry, namespace=NAMESPACE)
        limits.append(Limit("quota", item, ("sub", sub, "quota", period)))
    if policy.enforces_quotas and policy.quota_bytes is not None:
        item = RateLimitItemPerDay(policy.quota_bytes, expiry, namespace=NAMESPACE)
        limits.append(Limit("bytes", item, ("sub", sub, "bytes", period)))
    return limits


def lease_events(limits: Iterable[Limit]) -> int:
    """Events per lease for these counters: clamp(smallest events limit // 100, 1,
    ``GATEWAY_THROTTLE_LEASE_EVENTS``)."""
    amounts = [limit.amount for limit in limits if limit.kind != "bytes"]
    if not amounts:
        return UNLIMITED
    return max(1, min(min(amounts) // 100, int(settings.GATEWAY_THROTTLE_LEASE_EVENTS)))


def lease_bytes(limits: Iterable[Limit]) -> int:
    """Bytes per lease: clamp(bytes quota // 100, 1, ``GATEWAY_THROTTLE_LEASE_BYTES``); a lease
    also covers at least the event that asked for it."""
    amounts = [limit.amount for limit in limits if limit.kind == "bytes"]
    if not amounts:
        return UNLIMITED
    return max(1, min(min(amounts) // 100, int(settings.GATEWAY_THROTTLE_LEASE_BYTES)))


def undershoot_bound(policy: Policy, processes: int) -> int:
    """Events by which ``processes`` gateway processes may stop a subscription early in one
    window: each may hold 1.25 leases it does not use (module docstring)."""
    lease = lease_events(policy_limits(policy, 0))
    return 0 if lease == UNLIMITED else processes * (lease + lease // 4 + 1)


def limit_reason(policy: Policy, kind: str) -> str:
    """Why events are stopped, for a notice or close reason, e.g. ``"rate limit of plan 'Gold'
    reached (100 events per minute)"``."""
    if kind in ("rate", "burst"):
        burst = f" + {policy.burst_events:,} burst" if policy.burst_events else ""
        events = "event" if policy.rate_events == 1 and not burst else "events"
        return (
            f"rate limit of plan {policy.plan_name!r} reached "
            f"({policy.rate_events:,}{burst} {events} per {policy.rate_unit})"
        )
    if kind == "quota":
        events = "event" if policy.quota_events == 1 else "events"
        return (
            f"events quota of plan {policy.plan_name!r} used up this {policy.billing_period} "
            f"({policy.quota_events:,} {events})"
        )
    if kind == "bytes":
        return (
            f"bytes quota of plan {policy.plan_name!r} used up this {policy.billing_period} "
            f"({policy.quota_bytes:,} bytes)"
        )
    return "throttling unavailable (Redis unreachable); events stopped until it is back"


# --- storage -----------------------------------------------------------------------------------


def _storage_uri(sync: bool) -> str:
    url = settings.REDIS_URL
    if not url:
        return "memory://" if sync else "async+memory://"
    return url if sync else f"async+{url}"


def _storage_options(uri: str) -> dict[str, Any]:
    if uri.startswith("redis"):
        return {"wrap_exceptions": True, "socket_timeout": 2, "socket_connect_timeout": 2}
    if uri.startswith("async+redis"):
        return {
            "implementation": "redispy",
            "wrap_exceptions": True,
            "socket_timeout": 2,
            "socket_connect_timeout": 2,
        }
    return {}


_aio_limiters: dict[asyncio.AbstractEventLoop, aio_strategies.FixedWindowRateLimiter] = {}


def aio_limiter() -> aio_strategies.FixedWindowRateLimiter:
    """This event loop's ``limits`` fixed-window limiter on the throttling storage."""
    loop = asyncio.get_running_loop()
    limiter = _aio_limiters.get(loop)
    if limiter is None:
        for old in [old for old in _aio_limiters if old.is_closed()]:
            del _aio_limiters[old]
        uri = _storage_uri(sync=False)
        storage = sync_storage.storage_from_string(uri, **_storage_options(uri))
        limiter = _aio_limiters[loop] = aio_strategies.FixedWindowRateLimiter(storage)
    return limiter


_sync_limiter: sync_strategies.FixedWindowRateLimiter | None = None


def sync_limiter() -> sync_strategies.FixedWindowRateLimiter:
    """The process's synchronous ``limits`` limiter on the same counters (webhook deliveries,
    the portal's remaining-quota figures)."""
    global _sync_limiter
    if _sync_limiter is None:
        uri = _storage_uri(sync=True)
        _sync_limiter = sync_strategies.FixedWindowRateLimiter(
            sync_storage.storage_from_string(uri, **_storage_options(uri))
        )
    return _sync_limiter


def redis_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning the throttling storage cannot be reached (``limits`` wraps the
    client's in ``StorageError``; the connection slots use redis-py directly)."""
    from limits.errors import StorageError
    from redis.exceptions import RedisError

    return (StorageError, RedisError, OSError, TimeoutError, ConnectionError)


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    """A counter's window now: ``remaining`` (events or bytes) and ``reset`` (Unix seconds,
    millisecond precision; None when the window has not started: no counter yet)."""

    remaining: int
    reset: float | None


async def window_read(limiter: aio_strategies.FixedWindowRateLimiter, limit: Limit) -> Window:
    """Read ``limit``'s counter and its expiry in one round trip. Not ``get_window_stats``:
    ``limits`` reads the expiry with ``TTL``, whole seconds, so a reset would be off by up to
    half a second (a lease outliving its window; a client told to retry too early). Raises the
    storage's errors (``redis_errors``)."""
    storage: Any = limiter.storage
    bridge = getattr(storage, "bridge", None)
    if bridge is None:  # in-memory storage: exact already
        stats = await limiter.get_window_stats(limit.item, *limit.identifiers)
        started = stats.remaining < limit.amount or stats.reset_time > time.time()
        return Window(stats.remaining, stats.reset_time if started else None)
    key = bridge.prefixed_key(limit.item.key_for(*limit.identifiers))
    async with bridge.get_connection().pipeline(transaction=False) as pipe:
        pipe.get(key)
        pipe.pttl(key)
        count, pttl = await pipe.execute()
    remaining = max(0, limit.amount - int(count or 0))
    return Window(remaining, time.time() + pttl / 1000 if pttl > 0 else None)


# --- per subscription, per process -------------------------------------------------------------


class SubscriptionThrottle:
    """One subscription's counters in one process: leases taken from Redis, counted down
    locally (module docstring). Shared by every connection of the subscription in the process.

    ``take(size)`` (hot path, sync) returns ``ALLOW`` (counted), ``THROTTLE`` (the window or
    quota is used up until ``blocked_until``, Unix seconds; ``blocked_kind`` says which limit)
    or ``WAIT`` (the local lease ran out and the next one is on its way: ``await wait(size)``).
    """

    def __init__(self, policy: Policy, subscription_id: int) -> None:
        self.policy = policy
        self.subscription_id = subscription_id
        self.period = billing_period(kind=policy.billing_period)
        self.limits = policy_limits(policy, subscription_id, self.period)
        self.event_limits = [limit for limit in self.limits if limit.kind != "bytes"]
        self.byte_limits = [limit for limit in self.limits if limit.kind == "bytes"]
        # Leases adapt to the subscription's pace (``_lease_adapt``), between a sixteenth of
        # the largest and the largest (``lease_events``/``lease_bytes``, the bound's).
        self.lease_max = lease_events(self.limits)
        self.lease_bytes_max = lease_bytes(self.limits)
        self.lease = max(1, self.lease_max // 16)
        self.lease_bytes = max(1, self.lease_bytes_max // 16)
        self._refilled = 0.0  # time.monotonic() of the last lease of events
        self.left = 0 if self.event_limits else UNLIMITED
        self.bytes_left = 0 if self.byte_limits else UNLIMITED
        self.low = self.lease // 4 if self.event_limits else -1
        self.low_bytes = self.lease_bytes // 4 if self.byte_limits else -1
        self.blocked_until = 0.0
        self.blocked_kind = ""
        self.users = 0
        self.idle_since = 0.0
        self.seeded = False
        self._need_bytes = 0
        self._refill: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        # Limit kind → (room left after this process's last lease, window reset), as last seen.
        self._hints: dict[str, tuple[int, float]] = {}
        self._taken: set[str] = set()  # quota kinds this process took from in this period
        self._unverified_events = 0  # granted locally while Redis was down (fail-open)
        self._unverified_bytes = 0
        self._redis_down = False

    # --- hot path ---------------------------------------------------------------------------

    def take(self, size: int) -> int:
        """Count one event of ``size`` bytes if the local lease allows it (no I/O)."""
        left = self.left
        if left > 0 and self.bytes_left >= size:
            self.left = left - 1
            self.bytes_left -= size
            if (left <= self.low or self.bytes_left <= self.low_bytes) and self._refill is None:
                if time.time() >= self.blocked_until:  # stopped: spend what is held, ask nothing
                    self._refill_start(0)
            return ALLOW
        if time.time() < self.blocked_until:
            return THROTTLE
        if self._refill is None:
            self._refill_start(size)
        else:
            self._need_bytes = max(self._need_bytes, size)
        return WAIT

    async def wait(self, size: int) -> bool:
        """Count one event of ``size`` bytes, waiting for leases as long as the counters have
        room (other connections of the subscription may take a new lease first); False when it
        is throttled, or after ``WAIT_SECONDS`` without a lease (counted as throttled)."""
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            result = self.take(size)
            if result != WAIT:
                return result == ALLOW
            refill = self._refill
            if refill is not None:
                await asyncio.shield(refill)
            if time.monotonic() > deadline:
                return False

    @property
    def blocked(self) -> bool:
        """Whether events are stopped now (``blocked_until`` is in the future)."""
        return time.time() < self.blocked_until

    # --- leases -----------------------------------------------------------------------------

    def _refill_start(self, size: int) -> None:
        self._need_bytes = max(self._need_bytes, size)
        self._refill = asyncio.get_running_loop().create_task(self._refill_run(), name="eventgate-lease")

    async def _refill_run(self) -> None:
        try:
            try:
                await self._refill_once()
            except redis_errors():
                if self._redis_down:
                    raise
                # Once more before calling Redis down: after a restart the first command may
                # meet a pooled connection that died with the old server.
                await self._refill_once()
        except asyncio.CancelledError:
            raise
        except redis_errors() as exc:
            self._storage_down(exc)
        except Exception:  # noqa: BLE001 - a bug must not stop a subscription's events forever
            log.exception("Throttling lease for subscription %s failed", self.subscription_id)
            self._storage_down(None)
        finally:
            self._refill = None

    async def _refill_once(self) -> None:
        limiter = aio_limiter()
        period = billing_period(kind=self.policy.billing_period)
        if self.period != period:  # a new billing period: new quota counters (per refill, not per event)
            self.period = period
            self.limits = policy_limits(self.policy, self.subscription_id, self.period)
            self.event_limits = [limit for limit in self.limits if limit.kind != "bytes"]
            self.byte_limits = [limit for limit in self.limits if limit.kind == "bytes"]
            self._hints.clear()
            self._taken.clear()
        if self._redis_down:
            await self._unverified_push(limiter)
        resets: list[float] = []
        if self.event_limits and self.left <= self.low:
            self._lease_adapt()
            granted, reset = await self._lease_take(limiter, self.event_limits, self.lease)
            if granted:
                self.left += granted
                resets.append(reset)
        need = self._need_bytes
        if self.byte_limits and (self.bytes_left <= self.low_bytes or self.bytes_left < need):
            wanted = max(self.lease_bytes, need - max(self.bytes_left, 0))
            granted, reset = await self._lease_take(
                limiter, self.byte_limits, wanted, minimum=need - self.bytes_left
            )
            if granted:
                self.bytes_left += granted
                resets.append(reset)
        self._need_bytes = 0
        if resets:
            self._expiry_set(min(resets))

    def _lease_adapt(self) -> None:
        """Size the next lease to the subscription's pace in this process: ×4 when the last
        lease lasted under ``LEASE_FAST_SECONDS`` (a fan-out to many connections takes one
        event per connection), ÷2 when it lasted over ``LEASE_SLOW_SECONDS``; bytes likewise.
        Never above ``lease_max`` (so ``undershoot_bound`` holds) nor below a sixteenth of it.
        A small lease keeps a quiet subscription's counters close to what it received; a large
        one keeps a busy subscription's Redis traffic near a few leases a second."""
        now = time.monotonic()
        lasted = now - self._refilled if self._refilled else LEASE_SLOW_SECONDS / 2
        self._refilled = now
        if lasted < LEASE_FAST_SECONDS:
            self.lease = min(self.lease_max, self.lease * 4)
            self.lease_bytes = min(self.lease_bytes_max, self.lease_bytes * 4)
        elif lasted > LEASE_SLOW_SECONDS:
            self.lease = max(1, self.lease_max // 16, self.lease // 2)
            self.lease_bytes = max(1, self.lease_bytes_max // 16, self.lease_bytes // 2)
        if self.event_limits:
            self.low = self.lease // 4
        if self.byte_limits:
            self.low_bytes = self.lease_bytes // 4

    async def _lease_take(
        self,
        limiter: aio_strategies.FixedWindowRateLimiter,
        limits: list[Limit],
        wanted: int,
        minimum: int = 1,
    ) -> tuple[int, float]:
        """Take up to ``wanted`` (at least ``minimum``) from every counter of ``limits``;
        returns (granted, reset of the soonest window). Granting 0 blocks until the used-up
        window resets.

        When the last look left every counter with room for 10 such leases in a window that
        is not about to reset, the lease is taken with one ``hit`` per counter and no look
        (``_hints``): half the Redis commands in steady state. A hit that fails there (other
        processes took the room) costs at most this lease of undershoot, then the full path
        runs."""
        now = time.time()
        hints = [self._hints.get(limit.kind) for limit in limits]
        if all(hint is not None and hint[0] >= 10 * wanted and hint[1] > now + 1 for hint in hints):
            for limit in limits:
                if not await limiter.hit(limit.item, *limit.identifiers, cost=wanted):
                    break
            else:
                for limit, hint in zip(limits, hints, strict=True):
                    assert hint is not None
                    self._hints[limit.kind] = (hint[0] - wanted, hint[1])
                return wanted, min(hint[1] for hint in hints if hint is not None)
        for limit in limits:
            self._hints.pop(limit.kind, None)
        for _ in range(3):
            windows = [await window_read(limiter, limit) for limit in limits]
            lost = [
                limit
                for window, limit in zip(windows, limits, strict=True)
                if limit.kind in self._taken and window.reset is None
            ]
            if lost:  # Redis lost a quota counter this process took from (a restart): seed again
                await self._reseed()
                windows = [await window_read(limiter, limit) for limit in limits]
            now = time.time()
            remaining = min(window.remaining for window in windows)
            if remaining < max(minimum, 1):
                used_up = [
                    (self._reset(limit, window.reset, now), limit)
                    for window, limit in zip(windows, limits, strict=True)
                    if window.remaining < max(minimum, 1)
                ]
                reset, limit = max(used_up, key=lambda pair: pair[0])
                self._block(reset, limit.kind)
                return 0, now
            cost = min(wanted, remaining)
            for limit in limits:
                if not await limiter.hit(limit.item, *limit.identifiers, cost=cost):
                    break
            else:
                # A window that had not started (no counter yet) started with this hit, a
                # moment after ``now``: the lease ends no later than its window.
                pairs = zip(windows, limits, strict=True)
                resets = [self._reset(limit, window.reset, now) for window, limit in pairs]
                for window, limit, reset in zip(windows, limits, resets, strict=True):
                    if limit.kind in ("rate", "burst"):  # quotas always look (a lost key shows)
                        self._hints[limit.kind] = (window.remaining - cost, reset)
                    else:
                        self._taken.add(limit.kind)
                return cost, min(resets)
            # Another process took the rest meanwhile: look again (the failed hit counted
            # against the window, which can only stop this subscription early, never late).
        return 0, time.time()

    def _reset(self, limit: Limit, reset: float | None, now: float) -> float:
        """When ``limit``'s window (reset ``reset``, None: not started) ends, in Unix seconds;
        a quota's never after its billing period."""
        end = reset if reset is not None else now + limit.item.get_expiry()
        if limit.kind in ("quota", "bytes"):
            end = min(end, period_end(self.period))
        return end

    def _block(self, until: float, kind: str) -> None:
        """Stop events until ``until`` (Unix seconds) because of limit ``kind``. Events this
        process already holds (a lease is paid for in Redis) are still delivered; bytes are
        not: a bytes quota stops everything once an event no longer fits."""
        self.blocked_until = until
        self.blocked_kind = kind
        if kind == "bytes":
            self.bytes_left = min(self.bytes_left, 0)

    def _expiry_set(self, reset: float) -> None:
        """Drop the local lease when its window resets, so it never counts in the next one."""
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, reset - time.time())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._lease_expire)

    def _lease_expire(self) -> None:
        self._expiry = None
        if self._redis_down:  # a local lease's unused part was not delivered: not to be added
            self._unverified_events -= max(0, min(self.left, self._unverified_events))
            self._unverified_bytes -= max(0, min(self.bytes_left, self._unverified_bytes))
        if self.event_limits:
            self.left = 0
        if self.byte_limits:
            self.bytes_left = 0

    def _storage_down(self, exc: BaseException | None) -> None:
        policy = str(settings.GATEWAY_THROTTLE_REDIS_DOWN)
        if not self._redis_down:
            log.warning(
                "Throttling storage unreachable for subscription %s (%r); failing %s",
                self.subscription_id,
                exc,
                policy,
            )
        self._redis_down = True
        if policy == "closed":
            self._block(time.time() + REDIS_RETRY_SECONDS, "unavailable")
            return
        # Fail open: a local lease, added to Redis when it is back.
        if self.event_limits and self.left <= self.low:
            self.left += self.lease
            self._unverified_events += self.lease
        if self.byte_limits and self.bytes_left <= max(self.low_bytes, self._need_bytes):
            grant = max(self.lease_bytes, self._need_bytes)
            self.bytes_left += grant
            self._unverified_bytes += grant
        self._need_bytes = 0
        # One local lease per REDIS_RETRY_SECONDS: past it, events stop until the next attempt
        # (the documented bound of the outage's overshoot).
        retry = time.time() + REDIS_RETRY_SECONDS
        self.blocked_until, self.blocked_kind = retry, "unavailable"
        self._expiry_set(retry)

    async def _unverified_push(self, limiter: aio_strategies.FixedWindowRateLimiter) -> None:
        """Redis is back: seed the quota counters from analytics first (a restarted Redis lost
        them: ``_reseed``), then add what was delivered on local leases meanwhile (analytics
        has not recorded that yet). Raises the storage's errors while Redis is still down,
        changing nothing."""
        await window_read(limiter, self.limits[0])  # reachable again? (raises if not)
        if self._taken:
            await self._reseed()
        events = max(0, self._unverified_events - max(0, min(self.left, self._unverified_events)))
        size = max(0, self._unverified_bytes - max(0, min(self.bytes_left, self._unverified_bytes)))
        for limit in self.event_limits:
            if events:
                await limiter.hit(limit.item, *limit.identifiers, cost=events)
        for limit in self.byte_limits:
            if size:
                await limiter.hit(limit.item, *limit.identifiers, cost=size)
        self.left = self.bytes_left = 0
        if not self.event_limits:
            self.left = UNLIMITED
        if not self.byte_limits:
            self.bytes_left = UNLIMITED
        self._unverified_events = self._unverified_bytes = 0
        self._hints.clear()  # a restarted Redis lost its counters: look again
        self._redis_down = False
        log.warning("Throttling storage reachable again for subscription %s", self.subscription_id)

    async def seed(self, events_used: int, bytes_used: int) -> None:
        """Bring this period's quota counters up to what analytics recorded (``events_used``,
        ``bytes_used`` of the counted directions), in case Redis lost them (a restart): Redis
        normally counts ahead of the database, so this adds nothing then. Once per process."""
        if self.seeded:
            return
        try:
            await self._seed_counters(events_used, bytes_used)
        except redis_errors() as exc:
            self._storage_down(exc)
        else:
            self.seeded = True

    async def _seed_counters(self, events_used: int, bytes_used: int) -> None:
        """``seed``'s work; raises the storage's errors."""
        limiter = aio_limiter()
        for limit in self.limits:
            used = events_used if limit.kind == "quota" else bytes_used if limit.kind == "bytes" else 0
            if used <= 0:
                continue
            window = await window_read(limiter, limit)
            counted = limit.amount - window.remaining
            if counted < used:
                await limiter.hit(limit.item, *limit.identifiers, cost=used - counted)

    async def _reseed(self) -> None:
        """Seed the quota counters again from analytics (``seed``), reading this period's usage
        in a gateway worker thread: Redis lost them while this process was running. Raises the
        storage's errors (Redis still down: nothing changed, the next refill tries again)."""
        from gateway.auth import quota_usage
        from gateway.connections import db_call

        policy = self.policy
        plan = BusinessPlan(
            pk=policy.plan_id,
            name=policy.plan_name,
            quota_events=policy.quota_events,
            quota_bytes=policy.quota_bytes,
            quota_action=policy.quota_action,
            counted_directions="both" if len(policy.directions) == 2 else next(iter(policy.directions)),
            billing_period=policy.billing_period,
        )
        used = await db_call(quota_usage, {self.subscription_id: plan})
        await self._seed_counters(*used.get(self.subscription_id, (0, 0)))
        log.warning(
            "Quota counters of subscription %s were seeded again from analytics (Redis lost or missed them)",
            self.subscription_id,
        )

    async def prime(self) -> None:
        """Take the first lease now (at the handshake), so the first events need not wait."""
        if (self.event_limits and self.left <= self.low) or (
            self.byte_limits and self.bytes_left <= self.low_bytes
        ):
            if self._refill is None:
                self._refill_start(0)
            refill = self._refill
            if refill is not None:
                await asyncio.shield(refill)

    def close(self) -> None:
        """Cancel timers and the lease in flight (the last user left long ago)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._refill is not None:
            self._refill.cancel()


# Throttles of this process: (event loop, subscription id, plan id) → throttle. A throttle
# stays IDLE_KEEP_SECONDS after its last connection left, so a reconnect reuses its lease.
IDLE_KEEP_SECONDS = 60.0
_throttles: dict[tuple[asyncio.AbstractEventLoop, int, int], SubscriptionThrottle] = {}


def throttle_acquire(policy: Policy, subscription_id: int) -> SubscriptionThrottle | None:
    """The process's throttle of ``subscription_id`` under ``policy`` (None when the policy
    throttles nothing), with one more user; pair with ``throttle_release``."""
    if not policy.throttles:
        return None
    loop = asyncio.get_running_loop()
    key = (loop, subscription_id, policy.plan_id)
    throttle = _throttles.get(key)
    if throttle is None or throttle.policy != policy:
        _throttles_sweep()
        throttle = _throttles[key] = SubscriptionThrottle(policy, subscription_id)
    throttle.users += 1
    return throttle


def throttle_release(throttle: SubscriptionThrottle | None) -> None:
    """One user of ``throttle`` (from ``throttle_acquire``) is gone."""
    if throttle is None:
        return
    throttle.users = max(0, throttle.users - 1)
    if throttle.users == 0:
        throttle.idle_since = time.monotonic()


def _throttles_sweep() -> None:
    now = time.monotonic()
    for key, throttle in list(_throttles.items()):
        loop = key[0]
        if loop.is_closed() or (throttle.users == 0 and now - throttle.idle_since > IDLE_KEEP_SECONDS):
            if not loop.is_closed():
                throttle.close()
            del _throttles[key]


def throttle_status() -> dict[str, int]:
    """For /gateway/status: subscriptions with connections in this process that have a
    throttle, and how many of those are stopped now (idle throttles kept for reconnects are
    swept first, and not counted)."""
    _throttles_sweep()
    now = time.time()
    live = [throttle for throttle in _throttles.values() if throttle.users]
    return {"subscriptions": len(live), "blocked": sum(1 for t in live if t.blocked_until > now)}


# --- connection slots ----------------------------------------------------------------------------

_SLOT_SCRIPT = """
local now = tonumber(ARGV[1])
local expires = tonumber(ARGV[2])
local member = ARGV[3]
for i, key in ipairs(KEYS) do
  redis.call('zremrangebyscore', key, '-inf', now)
  local limit = tonumber(ARGV[3 + i])
  if limit >= 0 and redis.call('zscore', key, member) == false and redis.call('zcard', key) >= limit then
    return i
  end
end
for i, key in ipairs(KEYS) do
  redis.call('zadd', key, expires, member)
  redis.call('expire', key, math.ceil(expires - now) + 60)
end
return 0
"""


def slot_keys(subscription_id: int, application_id: int) -> tuple[str, str]:
    """Redis keys of the connection sets of a subscription and an application."""
    return f"{NAMESPACE}:conns:sub:{subscription_id}", f"{NAMESPACE}:conns:app:{application_id}"


class ConnectionSlots:
    """Concurrent connections per subscription and per application, across processes (module
    docstring). Every connection takes a slot in both sets at the handshake and gives it back
    when it ends; members are refreshed every ``SLOT_HEARTBEAT_SECONDS``. Without Redis
    (``REDIS_URL`` unset) the counts are this process's.

    A connection whose plan sets a connection limit is checked and added atomically (one Lua
    script) before it is accepted. The others are only counted, for the per-application limit
    of other plans: they are added, and every slot released, in one pipeline per
    ``SLOT_BATCH_SECONDS``, so a handshake storm costs no Redis round trip per handshake (such
    a connection reaches the counts at most that late)."""

    def __init__(self) -> None:
        self.process = uuid.uuid4().hex[:12]
        self._client: Any = None
        self._script: Any = None
        self._held: dict[str, tuple[str, str]] = {}  # member → its two keys
        self._local: dict[str, set[str]] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._checked: set[str] = set()  # members under a connection limit (added by the script)
        self._adds: dict[str, tuple[str, str]] = {}  # to add at the next batch
        self._removes: dict[str, tuple[str, str]] = {}  # to remove at the next batch
        self._batch: asyncio.TimerHandle | None = None

    def _redis(self) -> Any:
        if self._client is None:
            from redis import asyncio as aioredis

            # Handshake storms share a few connections (waiting for one) instead of failing.
            pool = aioredis.BlockingConnectionPool.from_url(
                settings.REDIS_URL, max_connections=32, timeout=5, socket_timeout=2, socket_connect_timeout=2
            )
            self._client = aioredis.Redis(connection_pool=pool)
            self._script = self._client.register_script(_SLOT_SCRIPT)
        return self._client

    async def admit(
        self, policy: Policy, subscription_id: int, application_id: int
    ) -> tuple[str | None, str | None]:
        """Take a slot; returns (member to release later, None) or (None, refusal reason) when
        the subscription's or application's limit is reached. Raises the storage's errors when
        Redis cannot be reached (the caller applies ``GATEWAY_THROTTLE_REDIS_DOWN``)."""
        member = f"{self.process}:{uuid.uuid4().hex[:16]}"
        keys = slot_keys(subscription_id, application_id)
        limits = (
            -1 if policy.max_connections is None else policy.max_connections,
            -1 if policy.max_connections_per_application is None else policy.max_connections_per_application,
        )
        if not settings.REDIS_URL:
            full = self._local_admit(keys, limits, member)
        elif limits == (-1, -1):  # nothing to check: counted in the next batch
            self._adds[member] = keys
            self._held[member] = keys
            self._batch_soon()
            self._heartbeat_ensure()
            return member, None
        else:
            self._redis()
            now = time.time()
            full = int(
                await self._script(keys=list(keys), args=[now, now + SLOT_TTL_SECONDS, member, *limits])
            )
        if full == 1:
            return None, _connections_reason(policy.plan_name, policy.max_connections, "subscription")
        if full == 2:
            return None, _connections_reason(
                policy.plan_name, policy.max_connections_per_application, "application"
            )
        self._held[member] = keys
        self._checked.add(member)
        self._heartbeat_ensure()
        return member, None

    def _local_admit(self, keys: tuple[str, str], limits: tuple[int, int], member: str) -> int:
        for number, (key, limit) in enumerate(zip(keys, limits, strict=True), start=1):
            if limit >= 0 and len(self._local.get(key, ())) >= limit:
                return number
        for key in keys:
            self._local.setdefault(key, set()).add(member)
        return 0

    def release(self, member: str | None) -> None:
        """Give a slot back (never waits: removed in the next batch)."""
        if member is None:
            return
        keys = self._held.pop(member, None)
        if keys is None:
            return
        if not settings.REDIS_URL:
            for key in keys:
                self._local.get(key, set()).discard(member)
            return
        if self._adds.pop(member, None) is None:  # never added: nothing to remove
            self._removes[member] = keys
            if member in self._checked:  # under a limit: free the slot now (a reconnect waits)
                self._checked.discard(member)
                self._batch_start()
            else:
                self._batch_soon()

    def _batch_soon(self) -> None:
        if self._batch is None:
            self._batch = asyncio.get_running_loop().call_later(SLOT_BATCH_SECONDS, self._batch_start)

    def _batch_start(self) -> None:
        if self._batch is not None:
            self._batch.cancel()
        self._batch = None
        adds, self._adds = self._adds, {}
        removes, self._removes = self._removes, {}
        if adds or removes:
            task = asyncio.get_running_loop().create_task(self._batch_send(adds, removes))
            _slot_tasks.add(task)
            task.add_done_callback(_slot_tasks.discard)

    async def _batch_send(
        self, adds: dict[str, tuple[str, str]], removes: dict[str, tuple[str, str]]
    ) -> None:
        expires = time.time() + SLOT_TTL_SECONDS
        try:
            async with self._redis().pipeline(transaction=False) as pipe:
                for member, keys in adds.items():
                    for key in keys:
                        pipe.zadd(key, {member: expires})
                for key in {key for keys in adds.values() for key in keys}:
                    pipe.expire(key, int(SLOT_TTL_SECONDS) + 60)
                for member, keys in removes.items():
                    for key in keys:
                        pipe.zrem(key, member)
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis down: the heartbeat adds, members expire
            log.debug("Connection slots not sent (%d added, %d released): %r", len(adds), len(removes), exc)

    def _heartbeat_ensure(self) -> None:
        if settings.REDIS_URL and (self._heartbeat is None or self._heartbeat.done()):
            self._heartbeat = asyncio.get_running_loop().create_task(
                self._heartbeat_forever(), name="eventgate-slots"
            )

    async def _heartbeat_forever(self) -> None:
        while self._held:
            await asyncio.sleep(SLOT_HEARTBEAT_SECONDS)
            try:
                expires = time.time() + SLOT_TTL_SECONDS
                held = list(self._held.items())
                async with self._redis().pipeline(transaction=False) as pipe:
                    # Not ``xx``: a restarted Redis lost the members; the live ones come back.
                    for member, keys in held:
                        for key in keys:
                            pipe.zadd(key, {member: expires})
                    for key in {key for _, keys in held for key in keys}:
                        pipe.expire(key, int(SLOT_TTL_SECONDS) + 60)
                    await pipe.execute()
            except Exception as exc:  # noqa: BLE001 - Redis down: try again at the next beat
                log.warning("Connection slots not refreshed: %r", exc)


def _connections_reason(plan_name: str, limit: int | None, per: str) -> str:
    """E.g. "plan 'Free' allows 1 concurrent connection per subscription"."""
    count = limit or 0
    return f"plan {plan_name!r} allows {count:,} concurrent connection{'' if count == 1 else 's'} per {per}"


_slot_tasks: set[asyncio.Task[None]] = set()
_slots: dict[asyncio.AbstractEventLoop, ConnectionSlots] = {}


def connection_slots() -> ConnectionSlots:
    """This event loop's ``ConnectionSlots``."""
    loop = asyncio.get_running_loop()
    slots = _slots.get(loop)
    if slots is None:
        for old in [old for old in _slots if old.is_closed()]:
            del _slots[old]
        slots = _slots[loop] = ConnectionSlots()
    return slots


# --- reading the counters (portal, REST, webhooks) -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class LimitUsage:
    """One counter of a subscription now: ``kind`` ("rate", "burst", "quota", "bytes"), its
    ``limit`` and ``used`` (events, or bytes for "bytes"), ``remaining``, and ``resets_at``
    (aware UTC datetime; None when the window has not started)."""

    kind: str
    limit: int
    used: int
    remaining: int
    resets_at: datetime | None
    unit: str


def subscription_limits_usage(policy: Policy, subscription_id: int) -> list[LimitUsage] | None:
    """What each of the subscription's counters holds now (sync: portal and REST), or None
    when Redis cannot be reached. Counts are what gateway processes have taken, leases
    included (a lease not yet used counts as used)."""
    limiter = sync_limiter()
    rows = []
    try:
        for limit in policy_limits(policy, subscription_id):
            stats = limiter.get_window_stats(limit.item, *limit.identifiers)
            used = limit.amount - stats.remaining
            started = used > 0
            if limit.kind in ("quota", "bytes"):
                resets_at: datetime | None = datetime.fromtimestamp(period_end(limit.identifiers[-1]), UTC)
                unit = policy.billing_period
            else:
                resets_at = datetime.fromtimestamp(stats.reset_time, UTC) if started else None
                multiples = limit.item.multiples
                unit = policy.rate_unit if multiples == 1 else f"{multiples} {policy.rate_unit}s"
            rows.append(LimitUsage(limit.kind, limit.amount, max(0, used), stats.remaining, resets_at, unit))
    except redis_errors() as exc:
        log.warning("Throttling counters unreadable: %r", exc)
        return None
    return rows


def throttling_counters_delete(*, subscription_ids: Iterable[int], application_ids: Iterable[int]) -> int:
    """Delete the Redis counters and connection sets of these subscriptions and applications
    (sync; e.g. when they are deleted). Returns keys deleted; 0 without Redis."""
    if not settings.REDIS_URL:
        return 0
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    try:
        keys: list[Any] = []
        for subscription_id in subscription_ids:
            keys += client.scan_iter(match=f"LIMITS:{NAMESPACE}/sub/{subscription_id}/*", count=1000)
            keys.append(slot_keys(subscription_id, 0)[0])
        keys += [slot_keys(0, application_id)[1] for application_id in application_ids]
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


def webhook_take(policy: Policy, subscription_id: int, size: int) -> str | None:
    """Count one webhook delivery of ``size`` bytes (sync, one round trip per counter; a
    webhook POST costs far more). Returns None when allowed, else the kind of limit reached
    ("rate", "burst", "quota", "bytes", or "unavailable" when Redis is down and the policy is
    fail-closed)."""
    if not policy.counts("out"):
        return None
    limiter = sync_limiter()
    try:
        for limit in policy_limits(policy, subscription_id):
            cost = size if limit.kind == "bytes" else 1
            if not limiter.test(limit.item, *limit.identifiers, cost=cost):
                return limit.kind
        for limit in policy_limits(policy, subscription_id):
            cost = size if limit.kind == "bytes" else 1
            if not limiter.hit(limit.item, *limit.identifiers, cost=cost):
                return limit.kind
    except redis_errors() as exc:
        log.warning("Throttling storage unreachable for a webhook delivery: %r", exc)
        return "unavailable" if str(settings.GATEWAY_THROTTLE_REDIS_DOWN) == "closed" else None
    return None


def notice_data(throttle: SubscriptionThrottle) -> dict[str, Any]:
    """The body of the notice a stopped client gets once per stop (docs/throttling.md):
    ``{"type": "throttled", "limit": "rate"|"burst"|"quota"|"bytes"|"unavailable", "reason",
    "retry_after" (whole seconds), "resets_at" (Unix seconds)}``. Sent as a WebSocket text
    frame, as the data of an SSE ``eventgate.throttled`` event."""
    now = time.time()
    return {
        "type": "throttled",
        "limit": throttle.blocked_kind,
        "reason": limit_reason(throttle.policy, throttle.blocked_kind),
        "retry_after": max(0, int(throttle.blocked_until - now + 0.999)),
        "resets_at": round(throttle.blocked_until, 3),
    }
