"""The consumer's usage dashboard at /usage/: per subscription of the user's applications, the
events and bytes of a date range (totals, over time, per channel), what was not delivered
(throttled, dropped, rejected, failed), publish → deliver latency percentiles, the quota used and
left this billing period, and the connections (finished in the range, and open now).

Subscriptions with webhooks also show their webhook deliveries (``analytics.webhooks``): per
webhook, attempts, deliveries, retries, dead letters, answers by status class, success rate and
mean attempt time, and attempts over time.

The page, its CSV export (same query string plus ``format=csv``) and the REST endpoints
(``analytics.api_consumer``) all build their numbers with ``consumer_usage``, which reads usage
through ``analytics.queries`` only: what the page shows for a month is what billing charges.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from analytics import live
from analytics.dashboard import DateRange, DateRangeForm, csv_response, format_refusal, latency_text
from analytics.models import ConnectionRecord, Direction, WebhookRecord
from analytics.queries import STEP, Counts, floor, latency_histogram, percentiles, usage_grouped
from analytics.webhooks import webhook_series, webhook_summary
from portal.models import Application, BusinessPlan, Subscription, User
from portal.services.limits import period_bounds

# The preset buttons of the date range picker (analytics.dashboard.PRESETS has more; the URL
# takes any of them).
PICKER_PRESETS = (("1h", "1 hour"), ("24h", "24 hours"), ("7d", "7 days"), ("30d", "30 days"))
# Finished connections listed per subscription on the page (REST pages through all of them).
PAGE_CONNECTIONS = 25
# Subscriptions listed even without usage in the range; the others only when they have some.
LIVE_STATUSES = (Subscription.Status.ACTIVE, Subscription.Status.SUSPENDED, Subscription.Status.PENDING)

# Close codes in words (docs/gateway.md, "Refusals and close codes"; RFC 6455 §7.4), as the
# browser pages say them (static/js/live.js), short enough for a table cell. 1001, 1006 and 1012
# arrive as the client's close: the gateway records 1006 as "connection lost (no close frame)" and
# 1012, which its server sends while shutting down, as "gateway restarting" (gateway.capture).
CLOSE_CODES = {
    1000: "closed normally",
    1001: "going away: the client left",
    1005: "closed without a code",
    1006: "connection lost",
    1008: "policy violation (binary frame)",
    1009: "frame too big",
    1011: "gateway error",
    1012: "gateway restarting",
    1013: "try again later (backbone down or slow client)",
    4400: "bad request",
    4401: "credential revoked or expired",
    4403: "subscription ended or suspended",
    4404: "unknown API, version or channel",
    4405: "direction or scope not allowed",
    4408: "connection duration limit reached",
    4409: "business plan changed",
    4410: "API or version retired",
    4429: "throttled: a plan limit was reached",
}


def close_code_words(code: int | None, reason: str = "") -> str:
    """What a WebSocket close code means, in words: ``4429`` → ``"throttled: a plan limit was
    reached"``; no code → ``"client disconnected"``; an unknown code → the gateway's reason or
    ``"closed"``."""
    if code is None:
        return "client disconnected"
    return CLOSE_CODES.get(code) or reason or "closed"


def duration_words(seconds: float) -> str:
    """A duration as a person reads it: ``0.4`` → ``"0.4 s"``, ``75`` → ``"1 min 15 s"``,
    ``9000`` → ``"2 h 30 min"``, ``200000`` → ``"2 d 7 h"``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def latency_words(seconds: float | None) -> str:
    """A latency percentile in words (``analytics.dashboard.latency_text``)."""
    return latency_text(seconds)


def rate_words(rate: float | None) -> str:
    """A 0-1 rate as a percentage with one decimal, rounded down so that only a perfect rate
    reads 100: ``0.99996`` → ``"99.9 %"``, ``1`` → ``"100 %"``, ``0`` → ``"0 %"``; None → ``"–"``."""
    if rate is None:
        return "–"
    if rate in (0, 1):
        return f"{int(rate * 100)} %"
    # The epsilon keeps 0.29 (289.99999... per mille in binary) at 29.0, not 28.9.
    return f"{math.floor(rate * 1000 + 1e-9) / 10:.1f} %"


def milliseconds_words(milliseconds: float | None) -> str:
    """A mean round trip in milliseconds in words: ``4.25`` → ``"4.3 ms"``, ``123.4`` →
    ``"123 ms"``, ``1530`` → ``"1.53 s"``; None → ``"–"``."""
    if milliseconds is None:
        return "–"
    if milliseconds < 10:
        return f"{milliseconds:.1f} ms"
    if milliseconds < 1000:
        return f"{milliseconds:.0f} ms"
    return f"{milliseconds / 1000:.2f} s"


# Webhook answers by status class, as the pages show them: (counts key, label, colour, meaning).
WEBHOOK_CLASSES = (
    ("status_2xx", "2xx", "#2f9e6e", "accepted: the delivery succeeded"),
    ("status_3xx", "3xx", "#8a8aa3", "redirect: never followed, so failed"),
    ("status_4xx", "4xx", "#e8891a", "refused by your endpoint"),
    ("status_5xx", "5xx", "#dc3545", "your endpoint's error"),
    ("errors", "No answer", "#495057", "timeout, connection refused or reset, address refused"),
)


def webhook_classes(counts: dict[str, Any]) -> list[dict[str, Any]]:
    """The attempts of webhook ``counts`` (``analytics.webhooks`` shape) per status class, for a
    stacked bar and its legend: ``[{"key", "label", "color", "help", "count", "percent"}, ...]``
    with ``percent`` the share of all attempts (0-100, float)."""
    attempts = counts["attempts"]
    return [
        {
            "key": key,
            "label": label,
            "color": color,
            "help": help_text,
            "count": counts[key],
            "percent": 100.0 * counts[key] / attempts if attempts else 0.0,
        }
        for key, label, color, help_text in WEBHOOK_CLASSES
    ]


def webhook_display(counts: dict[str, Any]) -> dict[str, Any]:
    """Webhook ``counts`` with what the pages show beside them: ``failed_attempts`` (attempts
    without a 2xx), ``success_text`` (``rate_words``), ``attempt_ms_text``
    (``milliseconds_words``) and ``classes`` (``webhook_classes``)."""
    return {
        **counts,
        "failed_attempts": counts["attempts"] - counts["status_2xx"],
        "success_text": rate_words(counts["success_rate"]),
        "attempt_ms_text": milliseconds_words(counts["attempt_ms_mean"]),
        "classes": webhook_classes(counts),
    }


# --- the range and filters a user picked -------------------------------------------------------


class ConsumerUsageForm(DateRangeForm):
    """``DateRangeForm`` (range, from, to, step) plus the consumer's filters: ``application`` and
    ``subscription`` ids, which must be the user's own (anything else is a field error, so
    another user's ids are never looked up)."""

    application = forms.ModelChoiceField(
        queryset=Application.objects.none(),
        required=False,
        empty_label="All applications",
        error_messages={"invalid_choice": "not one of your applications"},
    )
    subscription = forms.ModelChoiceField(
        queryset=Subscription.objects.none(),
        required=False,
        error_messages={"invalid_choice": "not a subscription of your applications"},
    )

    def __init__(self, data: Any = None, *, user: User, now: datetime | None = None, **kwargs: Any) -> None:
        super().__init__(data, now=now, **kwargs)
        self.fields["application"].queryset = Application.objects.filter(owner=user).order_by("name")
        self.fields["subscription"].queryset = Subscription.objects.filter(application__owner=user)

    def field_errors(self) -> dict[str, list[str]]:
        """Errors by query parameter name (``from_`` → ``from``), for REST's 400 body."""
        return {
            ("from" if name == "from_" else name): list(messages) for name, messages in self.errors.items()
        }


# --- what the page, the CSV and REST show ------------------------------------------------------


# Usage counts in CSV and REST, named as on the provider's and platform's CSV and REST
# (analytics.views_dashboards COUNT_COLUMNS and SERIES_COLUMNS, analytics.api_dashboards
# CountsSerializer): per direction ``events_out``/``bytes_out`` (server → client: delivered, what
# billing charges) and ``events_in``/``bytes_in`` (client → server: accepted), then the events not
# delivered, both directions, and their sum ``errors``.
DIRECTION_COLUMNS = ("events_out", "bytes_out", "events_in", "bytes_in")
NOT_DELIVERED_COLUMNS = (
    "throttled_events",
    "throttled_bytes",
    "dropped_events",
    "rejected_events",
    "failed_events",
    "errors",
)
COUNT_COLUMNS = ("events", "bytes", *NOT_DELIVERED_COLUMNS)


def error_rate(events: int, errors: int) -> float | None:
    """Events not delivered / (delivered + not delivered), 0-1; None without any (as the
    provider's pages compute it)."""
    return errors / (events + errors) if events + errors else None


def counts_row(counts: Counts) -> dict[str, Any]:
    """One direction's (or one channel's) ``counts`` under ``COUNT_COLUMNS`` names, plus
    ``error_rate``: ``{"events": 1200, "bytes": 1500000, "throttled_events": 30, ...,
    "errors": 35, "error_rate": 0.028}`` (events, bytes)."""
    return {
        **counts.as_dict(),
        "errors": counts.errors,
        "error_rate": error_rate(counts.events, counts.errors),
    }


def directions_row(out: Counts, into: Counts) -> dict[str, Any]:
    """Both directions' counts under ``DIRECTION_COLUMNS`` and ``NOT_DELIVERED_COLUMNS`` names
    (not-delivered counts of both directions summed, as the page shows them), plus
    ``error_rate`` (``errors`` / all events, 0-1, or None)."""
    both = _sum([out, into])
    return {
        "events_out": out.events,
        "bytes_out": out.bytes,
        "events_in": into.events,
        "bytes_in": into.bytes,
        "throttled_events": both.throttled_events,
        "throttled_bytes": both.throttled_bytes,
        "dropped_events": both.dropped_events,
        "rejected_events": both.rejected_events,
        "failed_events": both.failed_events,
        "errors": both.errors,
        "error_rate": error_rate(both.events, both.errors),
    }


@dataclass
class SeriesPoint:
    """One step of the chart: ``delivered`` (out: server → client, what billing charges) and
    ``sent`` (in: client → server) counts starting at ``start`` (UTC)."""

    start: datetime
    delivered: Counts
    sent: Counts

    @property
    def both(self) -> Counts:
        return _sum([self.delivered, self.sent])

    @property
    def row(self) -> dict[str, Any]:
        """``start`` and ``directions_row`` of the step, as CSV and REST name them."""
        return {"start": self.start, **directions_row(self.delivered, self.sent)}


@dataclass
class ChannelUsage:
    """Counts of one channel template and direction over the range."""

    channel: str
    direction: str
    counts: Counts

    @property
    def direction_label(self) -> str:
        return Direction(self.direction).label


@dataclass
class ConnectionRow:
    """A finished connection (``ConnectionRecord``) with its duration and close code in words."""

    record: ConnectionRecord

    @property
    def duration(self) -> str:
        return duration_words(self.record.duration_seconds)

    @property
    def close_words(self) -> str:
        return close_code_words(self.record.close_code, self.record.close_reason)

    @property
    def throttled_close(self) -> bool:
        return self.record.close_code == 4429

    def as_dict(self) -> dict[str, Any]:
        """What the page shows of the connection, with its ids, as REST and the CSV name it:
        ``id``, ``subscription_id``, ``protocol``, ``version``, ``channels`` (list of channel
        templates), ``client_ip``, ``user_agent``, ``opened_at``/``closed_at`` (UTC),
        ``duration_seconds``, ``close_code`` (None: the client left), ``close_reason``,
        ``close_meaning`` (``close_code_words``), ``events_out``/``bytes_out``,
        ``events_in``/``bytes_in``, ``throttled_events``, ``dropped_events``."""
        record = self.record
        return {
            "id": record.pk,
            "subscription_id": record.subscription_id,
            "protocol": record.protocol,
            "version": record.version,
            "channels": [channel for channel in record.channels.split(",") if channel],
            "client_ip": record.client_ip,
            "user_agent": record.user_agent,
            "opened_at": record.opened_at,
            "closed_at": record.closed_at,
            "duration_seconds": record.duration_seconds,
            "close_code": record.close_code,
            "close_reason": record.close_reason,
            "close_meaning": self.close_words,
            "events_out": record.events_out,
            "bytes_out": record.bytes_out,
            "events_in": record.events_in,
            "bytes_in": record.bytes_in,
            "throttled_events": record.throttled_events,
            "dropped_events": record.dropped_events,
        }


@dataclass
class WebhookUsage:
    """The webhook deliveries of one subscription over the range (``analytics.webhooks``):
    ``totals`` and each webhook's counts (busiest first; ``webhook_id`` is the gateway's
    webhook id, ``channel`` its channel template), and ``series``, one point per step with
    ``start`` (UTC), oldest first. Counts are ``webhook_display`` dicts: attempts, delivered,
    retries, dead, answers per status class, ``errors`` (attempts without an answer),
    ``success_rate`` (0-1 or None) and ``attempt_ms_mean`` (milliseconds or None)."""

    totals: dict[str, Any]
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)

    @property
    def attempts(self) -> int:
        return int(self.totals["attempts"])


@dataclass
class SubscriptionUsage:
    """Everything the dashboard shows of one subscription for one range.

    ``delivered``/``sent``: totals of the range, out and in (``delivered.events``/``bytes`` is
    what billing charges); ``series``: one point per step, oldest first, empty steps as zeros;
    ``channels``: per channel and direction, busiest first; ``latency``: ``p50``/``p95``/``p99``
    in seconds (histogram bucket upper bounds) or None without deliveries; ``quota``: this
    billing period (calendar month, UTC), the shape of ``portal.services.limits`` ``period``;
    ``connections``: the newest finished connections overlapping the range (at most
    ``PAGE_CONNECTIONS``) of ``connections_total``; ``open_now``: ``analytics.live`` snapshots,
    empty with ``live_available`` False when Redis cannot be reached (unknown, not none);
    ``webhooks``: its webhook deliveries in the range (``WebhookUsage``), None when none of its
    webhooks ever made an attempt.
    """

    subscription: Subscription
    delivered: Counts
    sent: Counts
    series: list[SeriesPoint]
    channels: list[ChannelUsage]
    latency: dict[str, float | None]
    latency_events: int
    quota: dict[str, Any]
    connections: list[ConnectionRow] = field(default_factory=list)
    connections_total: int = 0
    open_now: list[dict[str, Any]] = field(default_factory=list)
    live_available: bool = True
    ever_used: bool = True
    step: str = "hour"
    end: datetime | None = None
    webhooks: WebhookUsage | None = None

    @property
    def both(self) -> Counts:
        """Both directions: the not-delivered counts (throttled, dropped, ...) of the range."""
        return _sum([self.delivered, self.sent])

    @property
    def totals(self) -> dict[str, Any]:
        """The range's totals as CSV and REST name them (``directions_row``)."""
        return directions_row(self.delivered, self.sent)

    @property
    def latency_unrecorded(self) -> bool:
        """Events were delivered in the range but none has a latency measurement (their
        publisher did not stamp the publish time, or they were SSE resume replays)."""
        return not self.latency_events and self.delivered.events > 0

    @property
    def has_usage(self) -> bool:
        return any(self.both.as_dict().values())

    @property
    def is_quiet(self) -> bool:
        """Nothing in the range: no usage, no finished connection, none open now, no webhook
        attempt."""
        webhook_attempts = self.webhooks.attempts if self.webhooks else 0
        return not (self.has_usage or self.connections_total or self.open_now or webhook_attempts)

    @property
    def chart(self) -> dict[str, Any]:
        """The chart's data (``json_script``): ISO step starts and one list per series."""
        return {
            "step": self.step,
            # The last step is still filling up when the range ends now (mid-step): drawn lighter.
            "partial": bool(self.series) and self.series[-1].start + STEP[self.step] > self.end,
            "labels": [point.start.isoformat() for point in self.series],
            "delivered": [point.delivered.events for point in self.series],
            "sent": [point.sent.events for point in self.series],
            "throttled": [point.both.throttled_events for point in self.series],
            "dropped": [point.both.dropped_events for point in self.series],
            "rejected": [point.both.rejected_events for point in self.series],
            "failed": [point.both.failed_events for point in self.series],
            "bytes_delivered": [point.delivered.bytes for point in self.series],
            "bytes_sent": [point.sent.bytes for point in self.series],
        }

    @property
    def latency_display(self) -> list[tuple[str, str]]:
        """``[("p50", "≤ 5 ms"), ...]``: each percentile as the bound it is at most."""
        return [(name, latency_words(value)) for name, value in self.latency.items()]

    @property
    def chart_id(self) -> str:
        return f"usage-chart-{self.subscription.pk}"

    @property
    def webhook_chart(self) -> dict[str, Any]:
        """The webhook chart's data (``json_script``): per step, deliveries (2xx answers),
        failed attempts (retried or not) and dead letters."""
        points = self.webhooks.series if self.webhooks else []
        return {
            "step": self.step,
            "partial": bool(points) and points[-1]["start"] + STEP[self.step] > self.end,
            "labels": [point["start"].isoformat() for point in points],
            "delivered": [point["status_2xx"] for point in points],
            "failed": [point["attempts"] - point["status_2xx"] for point in points],
            "dead": [point["dead"] for point in points],
        }

    @property
    def webhook_chart_id(self) -> str:
        return f"webhook-chart-{self.subscription.pk}"


def _sum(counts: Iterable[Counts]) -> Counts:
    total = Counts()
    for item in counts:
        total.add(item.as_dict())
    return total


def range_bounds(date_range: DateRange) -> tuple[datetime, datetime]:
    """The range the dashboard reads: ``[start, end)`` with ``start`` rounded down to the step,
    so the totals are exactly the sum of the chart's steps."""
    return floor(date_range.start, date_range.step), date_range.end


def _percent(used: int, allowed: int | None) -> float | None:
    return round(min(100.0, 100.0 * used / allowed), 1) if allowed else None


def quota_period(plan: BusinessPlan, by_direction: dict[str, Counts], start: datetime, end: datetime) -> dict:
    """The billing period's usage against the plan's quotas, in the shape of
    ``portal.services.limits`` ``period`` (events and bytes of the plan's counted directions,
    throttled events and bytes of all directions, used, left and percent of each quota), plus
    the delivered (``out``) events and bytes the plan's price includes (``included_events``,
    ``included_bytes``), which is what the invoice compares with them."""
    directions = plan.directions_counted
    delivered = by_direction.get("out", Counts())
    counted = _sum(by_direction.get(direction, Counts()) for direction in directions)
    both = _sum(by_direction.values())
    events, size = counted.events, counted.bytes
    return {
        "kind": plan.billing_period,
        "start": start,
        "end": end,
        "directions": list(directions),
        "events": events,
        "bytes": size,
        "throttled_events": both.throttled_events,
        "throttled_bytes": both.throttled_bytes,
        "quota_events": plan.quota_events,
        "events_remaining": None if plan.quota_events is None else max(0, plan.quota_events - events),
        "events_percent": _percent(events, plan.quota_events),
        "quota_bytes": plan.quota_bytes,
        "bytes_remaining": None if plan.quota_bytes is None else max(0, plan.quota_bytes - size),
        "bytes_percent": _percent(size, plan.quota_bytes),
        "overage_events": max(0, events - plan.quota_events) if plan.quota_events is not None else 0,
        "overage_bytes": max(0, size - plan.quota_bytes) if plan.quota_bytes is not None else 0,
        "quota_action": plan.quota_action,
        "counted_directions": plan.counted_directions,
        "delivered_events": delivered.events,
        "delivered_bytes": delivered.bytes,
        "included_events": plan.included_events if plan.prices_events else None,
        "events_over_included": max(0, delivered.events - plan.included_events) if plan.prices_events else 0,
        "included_events_percent": _percent(delivered.events, plan.included_events)
        if plan.prices_events
        else None,
        "included_bytes": plan.included_bytes if plan.price_per_gb_minor else None,
        "included_bytes_percent": _percent(delivered.bytes, plan.included_bytes)
        if plan.price_per_gb_minor
        else None,
    }


def consumer_subscriptions(
    user: User, *, application: Application | None = None, subscription: Subscription | None = None
) -> QuerySet[Subscription]:
    """The subscriptions of ``user``'s applications (only these are ever read), optionally of one
    application or just one subscription, by application and API name."""
    subscriptions = Subscription.objects.filter(application__owner=user)
    if application is not None:
        subscriptions = subscriptions.filter(application=application)
    if subscription is not None:
        subscriptions = subscriptions.filter(pk=subscription.pk)
    return subscriptions.select_related("application", "api", "plan").order_by(
        "application__name", "api__name", "-created"
    )


def connection_records(subscription_ids: Iterable[int], start: datetime, end: datetime) -> QuerySet:
    """Finished connections of the subscriptions that were open at some time in ``[start, end)``,
    newest first."""
    return ConnectionRecord.objects.filter(
        subscription_id__in=list(subscription_ids), closed_at__gte=start, opened_at__lt=end
    ).order_by("-closed_at", "-pk")


def connection_counts(subscription_ids: Iterable[int], start: datetime, end: datetime) -> dict[int, int]:
    """Subscription id → how many of its connections were open at some time in ``[start, end)``."""
    rows = connection_records(subscription_ids, start, end).order_by().values("subscription_id")
    return dict(rows.annotate(n=Count("pk")).values_list("subscription_id", "n"))


def open_connections(subscription_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """Subscription id → its connections open now (``analytics.live`` snapshots, newest first),
    each with ``open_seconds`` (float), ``duration`` (in words) and ``since_at`` (aware UTC).
    Raises ``analytics.live.LiveUnavailable`` when Redis cannot be reached."""
    now = time.time()
    found: dict[int, list[dict[str, Any]]] = {}
    for connection in live.connections(subscription_ids=set(subscription_ids)):
        open_seconds = max(0.0, now - connection["since"])
        found.setdefault(connection["subscription_id"], []).append(
            {
                **connection,
                "open_seconds": open_seconds,
                "duration": duration_words(open_seconds),
                "since_at": datetime.fromtimestamp(connection["since"], tz=UTC),
            }
        )
    return found


def webhook_usage(
    subscription_ids: list[int], start: datetime, end: datetime, step: str
) -> dict[int, WebhookUsage]:
    """Subscription id → its webhook deliveries in ``[start, end)`` (``WebhookUsage``, series
    per ``step``), for the subscriptions whose webhooks made an attempt in the range or ever
    (those show zeros). One grouped read for all, one series read per subscription with attempts
    in the range, and one existence read for the others."""
    summary = webhook_summary(subscriptions=subscription_ids, start=start, end=end)
    rows: dict[int, list[dict[str, Any]]] = {}
    for row in summary["webhooks"]:
        rows.setdefault(row["subscription_id"], []).append(row)
    found: dict[int, WebhookUsage] = {}
    for pk, webhooks in rows.items():
        totals = {name: sum(row[name] for row in webhooks) for name in WebhookRecord.COUNT_FIELDS}
        series = webhook_series(subscriptions=[pk], start=start, end=end, step=step)
        found[pk] = WebhookUsage(
            totals=webhook_display(webhook_counts(totals)),
            webhooks=[webhook_display(row) for row in webhooks],
            series=series,
        )
    quiet = [pk for pk in subscription_ids if pk not in found]
    if quiet:
        earlier = WebhookRecord.objects.filter(subscription_id__in=quiet).order_by().distinct()
        for pk in earlier.values_list("subscription_id", flat=True):
            found[pk] = WebhookUsage(totals=webhook_display(webhook_counts({})))
    return found


def webhook_counts(sums: dict[str, int]) -> dict[str, Any]:
    """Summed ``WebhookRecord.COUNT_FIELDS`` (missing ones: 0) with what ``analytics.webhooks``
    derives from them: ``responses``, ``attempt_ms_mean`` (milliseconds or None) and
    ``success_rate`` (2xx answers per attempt, 0-1, or None)."""
    counts: dict[str, Any] = {name: int(sums.get(name) or 0) for name in WebhookRecord.COUNT_FIELDS}
    responses = sum(counts[f"status_{n}xx"] for n in range(2, 6))
    counts["responses"] = responses
    counts["attempt_ms_mean"] = counts["attempt_ms_total"] / responses if responses else None
    counts["success_rate"] = counts["status_2xx"] / counts["attempts"] if counts["attempts"] else None
    return counts


def consumer_usage(
    subscriptions: Iterable[Subscription],
    date_range: DateRange,
    *,
    with_connections: bool = True,
    only_used: bool = False,
) -> list[SubscriptionUsage]:
    """``SubscriptionUsage`` of each of ``subscriptions`` (already limited to what the user may
    see) for ``date_range``. Usage comes from ``analytics.queries`` in one grouped read per kind
    (series, channels, the billing period), latency from one histogram per subscription.
    ``only_used``: cancelled and rejected subscriptions without usage or connections in the
    range are left out."""
    subscriptions = list(subscriptions)
    ids = [subscription.pk for subscription in subscriptions]
    if not ids:
        return []
    start, end = range_bounds(date_range)
    step = date_range.step
    grouped = usage_grouped(
        subscriptions=ids, start=start, end=end, by=("subscription_id", "direction"), step=step
    )
    per_channel = usage_grouped(
        subscriptions=ids, start=start, end=end, by=("subscription_id", "channel", "direction")
    )
    # The billing period of each plan (calendar month or year): one grouped read per kind in use.
    kinds = {subscription.plan.billing_period for subscription in subscriptions}
    bounds = {kind: period_bounds(kind=kind) for kind in kinds}
    period: dict[tuple, Counts] = {}
    for kind, (kind_start, kind_end) in bounds.items():
        kind_ids = [s.pk for s in subscriptions if s.plan.billing_period == kind]
        grouped_period = usage_grouped(
            subscriptions=kind_ids, start=kind_start, end=kind_end, by=("subscription_id", "direction")
        )
        period.update(grouped_period)
    steps = [start + STEP[step] * index for index in range(int((end - start) / STEP[step]) + 1)]
    steps = [moment for moment in steps if moment < end]
    counts = connection_counts(ids, start, end) if with_connections else {}
    open_now: dict[int, list[dict[str, Any]]] = {}
    live_available = True
    if with_connections:
        try:
            open_now = open_connections(ids)
        except live.LiveUnavailable:
            live_available = False
    webhooks = webhook_usage(ids, start, end, step)

    usages = []
    for subscription in subscriptions:
        pk = subscription.pk
        series = [
            SeriesPoint(
                start=moment,
                delivered=grouped.get((moment, pk, "out"), Counts()),
                sent=grouped.get((moment, pk, "in"), Counts()),
            )
            for moment in steps
        ]
        channels = sorted(
            (
                ChannelUsage(channel=channel, direction=direction, counts=counts)
                for (sub, channel, direction), counts in per_channel.items()
                if sub == pk
            ),
            key=lambda row: (-row.counts.events, -row.counts.bytes, row.channel, row.direction),
        )
        histogram = latency_histogram(subscriptions=[pk], start=start, end=end, direction="out").get(None, {})
        quantiles = percentiles(histogram)
        by_direction = {direction: counts for (sub, direction), counts in period.items() if sub == pk}
        usage = SubscriptionUsage(
            subscription=subscription,
            delivered=_sum(point.delivered for point in series),
            sent=_sum(point.sent for point in series),
            series=series,
            channels=channels,
            latency={"p50": quantiles[0.5], "p95": quantiles[0.95], "p99": quantiles[0.99]},
            latency_events=sum(histogram.values()),
            quota=quota_period(subscription.plan, by_direction, *bounds[subscription.plan.billing_period]),
            connections_total=counts.get(pk, 0),
            open_now=open_now.get(pk, []),
            live_available=live_available,
            step=step,
            end=end,
            webhooks=webhooks.get(pk),
        )
        if usage.connections_total:
            usage.connections = [
                ConnectionRow(record) for record in connection_records([pk], start, end)[:PAGE_CONNECTIONS]
            ]
        if only_used and subscription.status not in LIVE_STATUSES and usage.is_quiet:
            continue
        usages.append(usage)
    _mark_never_used([usage for usage in usages if not usage.has_usage])
    # Subscriptions with something to show first, each group in the given order.
    return sorted(usages, key=lambda usage: usage.is_quiet)


def _mark_never_used(usages: list[SubscriptionUsage]) -> None:
    """Set ``ever_used`` of subscriptions without usage in the range: one all-time read."""
    if not usages:
        return
    used = usage_grouped(subscriptions=[usage.subscription.pk for usage in usages], by=("subscription_id",))
    for usage in usages:
        usage.ever_used = any(used.get((usage.subscription.pk,), Counts()).as_dict().values())


# --- CSV ----------------------------------------------------------------------------------------

SERIES_CSV_HEADER = (
    "subscription_id",
    "application",
    "api",
    "start",
    *DIRECTION_COLUMNS,
    *NOT_DELIVERED_COLUMNS,
)
CHANNELS_CSV_HEADER = ("subscription_id", "application", "api", "channel", "direction", *COUNT_COLUMNS)
# ``ConnectionRow.as_dict`` keys (``id`` as ``connection_id``; channels space-separated), with the
# application's name and the API's slug after the subscription id.
CONNECTION_COLUMNS = (
    "protocol",
    "version",
    "channels",
    "opened_at",
    "closed_at",
    "duration_seconds",
    "close_code",
    "close_reason",
    "close_meaning",
    "events_out",
    "bytes_out",
    "events_in",
    "bytes_in",
    "throttled_events",
    "dropped_events",
    "client_ip",
    "user_agent",
)
CONNECTIONS_CSV_HEADER = ("connection_id", "subscription_id", "application", "api", *CONNECTION_COLUMNS)

WEBHOOK_COUNT_COLUMNS = (
    "attempts",
    "delivered",
    "retries",
    "dead",
    "status_2xx",
    "status_3xx",
    "status_4xx",
    "status_5xx",
    "errors",
)
WEBHOOKS_CSV_HEADER = (
    "subscription_id",
    "application",
    "api",
    "webhook_id",
    "channel",
    *WEBHOOK_COUNT_COLUMNS,
    "success_rate",
    "attempt_ms_mean",
)


def webhook_csv_tail(counts: dict[str, Any]) -> list[Any]:
    """A CSV row's webhook numbers: ``WEBHOOK_COUNT_COLUMNS``, then the success rate (0-1, four
    decimals) and the mean attempt time (milliseconds, one decimal); empty without attempts or
    answers."""
    rate, mean = counts["success_rate"], counts["attempt_ms_mean"]
    return [
        *(counts[name] for name in WEBHOOK_COUNT_COLUMNS),
        "" if rate is None else round(rate, 4),
        "" if mean is None else round(mean, 1),
    ]


# The CSV tables of /usage/?format=csv (``table``); the first is the default.
USAGE_TABLES = ("series", "channels", "webhooks", "connections")


def usage_csv(usages: list[SubscriptionUsage], date_range: DateRange, *, table: str) -> HttpResponse:
    """The page's numbers as CSV: ``table="series"`` one row per subscription and step (the
    charts), ``table="channels"`` one per subscription, channel and direction (the per-channel
    tables), ``table="webhooks"`` one per subscription and webhook with attempts in the range
    (the webhook tables). Not-delivered counts are of both directions, as on the page.
    (``table="connections"`` is ``connections_csv``.)"""
    stamp = _csv_stamp(date_range)
    if table == "webhooks":
        rows = [
            [
                usage.subscription.pk,
                usage.subscription.application.name,
                usage.subscription.api.slug,
                webhook["webhook_id"],
                webhook["channel"],
                *webhook_csv_tail(webhook),
            ]
            for usage in usages
            if usage.webhooks
            for webhook in usage.webhooks.webhooks
        ]
        return csv_response(f"usage-webhooks-{stamp}.csv", WEBHOOKS_CSV_HEADER, rows)
    if table == "channels":
        rows = [
            [
                usage.subscription.pk,
                usage.subscription.application.name,
                usage.subscription.api.slug,
                row.channel,
                row.direction,
                *_pick(counts_row(row.counts), COUNT_COLUMNS),
            ]
            for usage in usages
            for row in usage.channels
        ]
        return csv_response(f"usage-channels-{stamp}.csv", CHANNELS_CSV_HEADER, rows)
    rows = [
        [
            usage.subscription.pk,
            usage.subscription.application.name,
            usage.subscription.api.slug,
            *_pick(point.row, SERIES_CSV_HEADER[3:]),
        ]
        for usage in usages
        for point in usage.series
    ]
    return csv_response(f"usage-{stamp}.csv", SERIES_CSV_HEADER, rows)


def connections_csv(subscriptions: QuerySet[Subscription], date_range: DateRange) -> HttpResponse:
    """The finished connections of ``subscriptions`` that were open at some time in the range
    (all of them: the page lists the newest ``PAGE_CONNECTIONS`` per subscription), newest
    first, one row per connection under ``CONNECTIONS_CSV_HEADER``: the values REST's
    connection history gives (``ConnectionRow.as_dict``), durations in seconds, bytes, UTC."""
    start, end = range_bounds(date_range)
    records = connection_records(subscriptions.values_list("pk", flat=True), start, end)
    records = records.select_related("subscription__application", "subscription__api")

    def rows() -> Iterable[list[Any]]:
        for record in records.iterator(chunk_size=2000):
            data = ConnectionRow(record).as_dict()
            data["channels"] = " ".join(data["channels"])
            subscription = record.subscription
            yield [
                data["id"],
                subscription.pk,
                subscription.application.name,
                subscription.api.slug,
                *_pick(data, CONNECTION_COLUMNS),
            ]

    return csv_response(f"usage-connections-{_csv_stamp(date_range)}.csv", CONNECTIONS_CSV_HEADER, rows())


def _pick(row: dict[str, Any], names: Iterable[str]) -> list[Any]:
    return [row[name] for name in names]


def _csv_stamp(date_range: DateRange) -> str:
    return f"{date_range.start:%Y%m%dT%H%M}-{date_range.end:%Y%m%dT%H%M}"


# --- the page -----------------------------------------------------------------------------------


def _query_without(request: HttpRequest, *names: str) -> str:
    query = request.GET.copy()
    for name in names:
        query.pop(name, None)
    return query.urlencode()


@login_required
def usage(request: HttpRequest) -> HttpResponse:
    """The usage dashboard (``analytics:usage``) of the signed-in user's subscriptions; with
    ``format=csv`` its numbers as CSV (``table=series``, the default, for the charts,
    ``table=channels`` for the per-channel tables, ``table=webhooks`` for the webhook tables,
    ``table=connections`` for the finished connections).
    A bad range or filter is shown next to its field (400), or answered as ``text/plain`` for
    CSV; an unknown ``format`` or ``table`` is a plain-text 400 naming it."""
    refusal = format_refusal(request)
    if refusal is not None:
        return refusal
    form = ConsumerUsageForm(request.GET, user=request.user)
    wants_csv = request.GET.get("format") == "csv"
    table = request.GET.get("table") or "series"
    if wants_csv and table not in USAGE_TABLES:
        return HttpResponse(
            f"table: {table!r} is not one of {', '.join(USAGE_TABLES)}",
            status=400,
            content_type="text/plain; charset=utf-8",
        )
    if not form.is_valid():
        if wants_csv:
            return HttpResponse(form.error_text(), status=400, content_type="text/plain; charset=utf-8")
        context = {
            "form": form,
            "usages": None,
            "presets": PICKER_PRESETS,
            "applications": _applications(request),
            "picker_dates": picker_dates(form, None),
        }
        return render(request, "analytics/usage.html", context, status=400)
    date_range = form.date_range
    subscriptions = consumer_subscriptions(
        request.user,
        application=form.cleaned_data.get("application"),
        subscription=form.cleaned_data.get("subscription"),
    )
    if wants_csv and table == "connections":
        return connections_csv(subscriptions, date_range)
    usages = consumer_usage(subscriptions, date_range, only_used=True)
    if wants_csv:
        return usage_csv(usages, date_range, table=table)
    start, end = range_bounds(date_range)
    application = form.cleaned_data.get("application")
    keep = f"&application={application.pk}" if application else ""
    context = {
        "form": form,
        "usages": usages,
        "date_range": date_range,
        "start": start,
        "end": end,
        "presets": PICKER_PRESETS,
        "applications": _applications(request),
        "selected_application": application,
        "keep_filters": keep,
        "query": _query_without(request, "format", "table"),
        "has_any_subscription": Subscription.objects.filter(application__owner=request.user).exists(),
        "has_webhooks": any(usage.webhooks for usage in usages),
        "has_connections": any(usage.connections_total for usage in usages),
        "picker_dates": picker_dates(form, date_range),
        "live_unavailable": live.LIVE_UNAVAILABLE if not all(u.live_available for u in usages) else "",
    }
    return render(request, "analytics/usage.html", context)


def picker_dates(form: ConsumerUsageForm, date_range: DateRange | None) -> dict[str, str]:
    """The ``from`` and ``to`` (inclusive) days the picker's date inputs show, ``YYYY-MM-DD``:
    what the user typed when it is a date; for an ISO date-time range (the invoice page links
    one) the days it covers, so that Apply keeps a range that starts and ends at midnight; for a
    preset, nothing."""
    typed = {"from": form.data.get("from") or "", "to": form.data.get("to") or ""}
    if date_range is None or date_range.preset:
        return typed
    last = date_range.end - timedelta(microseconds=1)
    return {
        "from": typed["from"] if len(typed["from"]) == 10 else f"{date_range.start:%Y-%m-%d}",
        "to": typed["to"] if len(typed["to"]) == 10 else (f"{last:%Y-%m-%d}" if typed["to"] else ""),
    }


def _applications(request: HttpRequest) -> QuerySet[Application]:
    return Application.objects.filter(owner=request.user).order_by("name")
