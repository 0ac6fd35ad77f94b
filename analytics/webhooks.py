"""Webhook delivery metrics: the batch writer the gateway's delivery worker calls, and the
readers the dashboards and REST endpoints call.

``WebhookRecord`` keeps, per subscription, webhook (the gateway's ``WebhookSubscription`` id, a
plain integer: analytics never imports ``gateway``), channel template and minute: attempts,
deliveries that ended 2xx or as dead letters, retries, answers by status class, attempts without
an answer, and the sum of the answered attempts' round trips. What else a webhook delivery adds
lives with the WebSocket and SSE numbers, so dashboards include webhooks without asking:
delivered events and bytes in ``UsageRecord.events``/``bytes``, dead letters in
``UsageRecord.failed_events`` and the publish → delivered latency in ``LatencyRecord``
(direction ``out``). docs/webhooks.md, *Metrics*.

``WebhookRecord`` is kept per minute only (no hourly or daily roll-up): a webhook makes at most a
few attempts per event, and the readers sum minutes in the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import F, QuerySet, Sum
from django.db.models.functions import Trunc

from analytics.models import WebhookRecord
from analytics.queries import RESOLUTIONS, STEP, Subscriptions, ceil, floor
from analytics.services import _live_rows

# (subscription id, webhook id, minute bucket start (aware UTC), channel template, attempts,
#  delivered, retries, dead, status_2xx, status_3xx, status_4xx, status_5xx, errors,
#  attempt_ms_total): WebhookRecord.COUNT_FIELDS order after the four key columns.
WebhookRow = tuple[int, int, datetime, str, int, int, int, int, int, int, int, int, int, int]

MAX_SERIES_STEPS = 10_000


def webhook_record_batch(*, rows: Iterable[WebhookRow]) -> int:
    """Add a batch of per-minute webhook counts (``WebhookRow``) to ``WebhookRecord``, creating
    rows as needed.

    The same upsert-and-add as ``analytics.services.usage_counts_batch``: one ``INSERT ... ON
    CONFLICT (subscription, webhook_id, bucket_start, channel) DO UPDATE SET col = col +
    excluded.col`` per row, in one transaction (a savepoint when the caller's transaction is
    open, so the counts commit or roll back with it). Rows of all zeros and rows of
    subscriptions deleted meanwhile are skipped. Returns the number of rows written.
    """
    rows = [row for row in rows if any(row[4:])]
    if not rows:
        return 0
    rows = sorted(_live_rows(rows), key=lambda row: row[:4])  # key order: no deadlock between flushes
    table = WebhookRecord._meta.db_table
    fields = WebhookRecord.COUNT_FIELDS
    sql = (
        f"INSERT INTO {table} (subscription_id, webhook_id, bucket_start, channel, {', '.join(fields)}) "
        f"VALUES (%s, %s, %s, %s, {', '.join(['%s'] * len(fields))}) "
        "ON CONFLICT (subscription_id, webhook_id, bucket_start, channel) DO UPDATE SET "
        + ", ".join(f"{field} = {table}.{field} + excluded.{field}" for field in fields)
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(sql, rows)
    return len(rows)


def _counts(row: dict[str, Any] | None = None) -> dict[str, Any]:
    """The count columns of a ``values()`` row (missing or NULL: 0) and what derives from them:
    ``responses`` (attempts answered with a 2xx-5xx status), ``attempt_ms_mean`` (mean round
    trip of those, milliseconds; None without any) and ``success_rate`` (2xx answers / attempts,
    0-1; None without attempts)."""
    counts: dict[str, Any] = {name: int((row or {}).get(name) or 0) for name in WebhookRecord.COUNT_FIELDS}
    responses = sum(counts[f"status_{n}xx"] for n in range(2, 6))
    counts["responses"] = responses
    counts["attempt_ms_mean"] = counts["attempt_ms_total"] / responses if responses else None
    counts["success_rate"] = counts["status_2xx"] / counts["attempts"] if counts["attempts"] else None
    return counts


def _rows(
    subscriptions: Subscriptions,
    start: datetime | None,
    end: datetime | None,
    webhook_ids: Iterable[int] | None,
) -> QuerySet[WebhookRecord]:
    rows = WebhookRecord.objects.all()
    if start is not None:
        rows = rows.filter(bucket_start__gte=floor(start, "minute"))
    if end is not None:
        rows = rows.filter(bucket_start__lt=ceil(end, "minute"))
    if subscriptions is not None:
        rows = rows.filter(
            subscription_id__in=subscriptions if isinstance(subscriptions, QuerySet) else list(subscriptions)
        )
    if webhook_ids is not None:
        rows = rows.filter(webhook_id__in=list(webhook_ids))
    return rows


_SUMS = {name: Sum(name) for name in WebhookRecord.COUNT_FIELDS}


def webhook_summary(
    *,
    subscriptions: Subscriptions,
    start: datetime | None = None,
    end: datetime | None = None,
    webhook_ids: Iterable[int] | None = None,
) -> dict[str, Any]:
    """Webhook delivery metrics of ``subscriptions`` (ids, or a ``Subscription`` queryset; None:
    all, for staff) in the minutes ``[start, end)`` (None: unbounded), optionally only of
    ``webhook_ids``. Who may see which subscriptions is the caller's decision.

    Returns ``{"totals": counts, "webhooks": [counts + {"webhook_id", "subscription_id",
    "channel"}, ...]}``, webhooks ordered by attempts (most first), then webhook id. ``counts``
    is a dict of ``WebhookRecord.COUNT_FIELDS`` — ``attempts``, ``delivered``, ``retries``,
    ``dead`` (events or attempts, integers), ``status_2xx`` … ``status_5xx`` and ``errors``
    (attempts), ``attempt_ms_total`` (milliseconds) — plus ``responses`` (answered attempts),
    ``attempt_ms_mean`` (milliseconds, float or None) and ``success_rate`` (2xx answers per
    attempt, 0-1, or None). A webhook is listed once per channel template (its own, one).
    """
    rows = _rows(subscriptions, start, end, webhook_ids)
    webhooks = []
    totals: dict[str, int] = dict.fromkeys(WebhookRecord.COUNT_FIELDS, 0)
    grouped = rows.values("webhook_id", "subscription_id", "channel").annotate(**_SUMS).order_by()
    for row in grouped:
        counts = _counts(row)
        for name in WebhookRecord.COUNT_FIELDS:
            totals[name] += counts[name]
        webhooks.append(
            {
                "webhook_id": row["webhook_id"],
                "subscription_id": row["subscription_id"],
                "channel": row["channel"],
                **counts,
            }
        )
    webhooks.sort(key=lambda webhook: (-webhook["attempts"], webhook["webhook_id"]))
    return {"totals": _counts(totals), "webhooks": webhooks}


def webhook_series(
    *,
    subscriptions: Subscriptions,
    start: datetime,
    end: datetime,
    step: str,
    webhook_ids: Iterable[int] | None = None,
) -> list[dict[str, Any]]:
    """Webhook delivery metrics of ``subscriptions`` per ``step`` (``minute``, ``hour``,
    ``day``; UTC) from ``start`` rounded down to the step until ``end``, oldest first, steps
    without attempts as zeros (a chart's x axis): ``[{"start": aware datetime, **counts}, ...]``
    with ``counts`` as in ``webhook_summary``. Raises ``ValueError`` for an unknown step or more
    than 10,000 steps (the message says to choose a larger step)."""
    if step not in RESOLUTIONS:
        raise ValueError(f"step must be one of {', '.join(RESOLUTIONS)}, not {step!r}")
    first = floor(start, step)
    count = int((end - first) / STEP[step]) + (0 if ceil(end, step) == end else 1)
    if count > MAX_SERIES_STEPS:
        raise ValueError(
            f"{count:,} {step}s between {start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M}: choose a larger step"
        )
    rows = _rows(subscriptions, first, end, webhook_ids)
    stepped = rows.annotate(
        step_start=Trunc("bucket_start", step, tzinfo=UTC) if step != "minute" else F("bucket_start")
    )
    found = {row["step_start"]: row for row in stepped.values("step_start").annotate(**_SUMS).order_by()}
    return [
        {"start": moment, **_counts(found.get(moment))}
        for moment in (first + STEP[step] * i for i in range(max(count, 0)))
    ]
