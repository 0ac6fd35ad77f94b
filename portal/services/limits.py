"""What a subscription's throttling policy allows and how much of it is used: for the consumer's
application page and ``GET /api/v1/subscriptions/{id}/limits/`` (docs/rest-api.md).

Two sources, as the gateway itself uses them (docs/throttling.md):

- the **live windows**: the Redis counters the gateway takes its leases from
  (``gateway.throttling.subscription_limits_usage``): the rate window, the sustained-rate window
  of a burst allowance, and, when the plan stops at its quotas, the period's events and bytes
  counters. They count what gateway processes have *taken*, leases included, so they may run
  a little ahead of what was delivered;
- the **billing period** (the plan's ``billing_period``: the calendar month or year, UTC):
  what analytics recorded as delivered
  (``analytics.queries`` ``events``/``bytes`` of the plan's ``counted_directions``, the
  figures billing charges), and the events the policy stopped (``throttled_events``, never
  billed), which the gateway flushes every ``GATEWAY_FLUSH_INTERVAL`` seconds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from analytics.queries import usage_grouped
from gateway.throttling import Policy, billing_period, subscription_limits_usage
from gateway.throttling import period_bounds as throttling_period_bounds
from portal.models import BusinessPlan, Subscription

# The plan fields a consumer sees as its policy (the REST plan serializer's names).
POLICY_KEYS = (*BusinessPlan.POLICY_FIELDS, "currency")
# What each live window is, in words (templates).
WINDOW_LABELS = {
    "rate": "Rate",
    "burst": "Sustained rate",
    "quota": "Events quota",
    "bytes": "Bytes quota",
}


def period_bounds(
    now: datetime | None = None, kind: str = BusinessPlan.BillingPeriod.MONTH
) -> tuple[datetime, datetime]:
    """The billing period of ``kind`` (``BusinessPlan.billing_period``: "month" or "year",
    calendar, UTC) holding ``now`` (default: now) as aware UTC datetimes ``(start, end)``,
    ``end`` exclusive: the period of ``gateway.throttling``'s quota keys."""
    return throttling_period_bounds(billing_period(None if now is None else now.timestamp(), kind))


def _percent(used: int, allowed: int | None) -> float | None:
    if not allowed:
        return None
    return round(min(100.0, 100.0 * used / allowed), 1)


def _remaining(used: int, allowed: int | None) -> int | None:
    return None if allowed is None else max(0, allowed - used)


def subscription_limits(subscription: Subscription, *, now: datetime | None = None) -> dict[str, Any]:
    """The throttling policy of ``subscription``'s plan and how much of it is used, for REST
    (``SubscriptionLimitsSerializer``) and templates. Never raises for Redis being down.

    Returns::

        {"subscription": id, "plan": plan name,
         "policy": {<POLICY_KEYS>: value},            # null = unlimited
         "windows": [{"limit": "rate"|"burst"|"quota"|"bytes", "label": words,
                      "measure": "events"|"bytes", "unit": "minute"|"10 minutes"|"month"|"year"|…,
                      "allowed": n, "used": n, "remaining": n, "percent_used": 0–100,
                      "resets_at": aware UTC datetime, or None while the window has not started}],
         "period": {"billing_period": "month"|"year",
                    "start", "end" (aware UTC datetimes, end exclusive), "directions": [...],
                    "events": n, "bytes": n,          # delivered, counted directions (billed)
                    "throttled_events": n, "throttled_bytes": n,   # stopped, all directions
                    "quota_events": n|None, "events_remaining": n|None, "events_percent": …,
                    "quota_bytes": n|None, "bytes_remaining": n|None, "bytes_percent": …,
                    "overage_events": n, "overage_bytes": n,       # over a quota ("overage")
                    "quota_action": "stop"|"overage"},
         "redis_available": bool}

    ``windows`` come from Redis (``subscription_limits_usage``: events or bytes *taken* by
    gateway processes, leases included); empty with ``redis_available`` false when Redis
    cannot be reached. ``period`` comes from ``analytics.queries`` (the usage rows billing
    reads) for the plan's billing period (calendar month or year, UTC) holding ``now``
    (default: now): a yearly plan's quota counts every month of the year so far.
    """
    plan = subscription.plan
    policy = Policy.from_plan(plan)
    usage = subscription_limits_usage(policy, subscription.pk)
    windows = [
        {
            "limit": row.kind,
            "label": WINDOW_LABELS.get(row.kind, row.kind),
            "measure": "bytes" if row.kind == "bytes" else "events",
            "unit": row.unit,
            "allowed": row.limit,
            "used": row.used,
            "remaining": row.remaining,
            "percent_used": _percent(row.used, row.limit),
            "resets_at": row.resets_at,
        }
        for row in usage or ()
    ]
    return {
        "subscription": subscription.pk,
        "plan": plan.name,
        "policy": {key: getattr(plan, key) for key in POLICY_KEYS},
        "windows": windows,
        "period": _period_usage(subscription, plan, now),
        "redis_available": usage is not None,
    }


def _period_usage(subscription: Subscription, plan: BusinessPlan, now: datetime | None) -> dict[str, Any]:
    start, end = period_bounds(now, plan.billing_period)
    directions = plan.directions_counted
    # Through analytics.queries, which reads minute, hour or day rows, whichever are complete:
    # the figures billing charges for the same period.
    by_direction = usage_grouped(subscriptions=[subscription.pk], start=start, end=end, by=("direction",))
    counted = [counts for (direction,), counts in by_direction.items() if direction in directions]
    totals = {
        "events": sum(counts.events for counts in counted),
        "bytes": sum(counts.bytes for counts in counted),
        "throttled_events": sum(counts.throttled_events for counts in by_direction.values()),
        "throttled_bytes": sum(counts.throttled_bytes for counts in by_direction.values()),
    }
    events, size = totals["events"] or 0, totals["bytes"] or 0
    return {
        "billing_period": plan.billing_period,
        "start": start,
        "end": end,
        "directions": list(directions),
        "events": events,
        "bytes": size,
        "throttled_events": totals["throttled_events"] or 0,
        "throttled_bytes": totals["throttled_bytes"] or 0,
        "quota_events": plan.quota_events,
        "events_remaining": _remaining(events, plan.quota_events),
        "events_percent": _percent(events, plan.quota_events),
        "quota_bytes": plan.quota_bytes,
        "bytes_remaining": _remaining(size, plan.quota_bytes),
        "bytes_percent": _percent(size, plan.quota_bytes),
        "overage_events": max(0, events - plan.quota_events) if plan.quota_events is not None else 0,
        "overage_bytes": max(0, size - plan.quota_bytes) if plan.quota_bytes is not None else 0,
        "quota_action": plan.quota_action,
    }
