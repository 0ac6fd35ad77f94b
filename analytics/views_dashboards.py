"""The provider's and the platform's analytics dashboards: pages, CSV exports and live JSON.

Pages (mounted at /analytics/, ``analytics.urls_dashboards``):

- ``/analytics/``: the provider's APIs (every API for staff) with headline numbers;
- ``/analytics/apis/<slug>/``: one API, for its provider (staff: any API): subscribers, top
  applications, events and bytes over time, per channel and direction, errors by kind, handshake
  refusals, webhook deliveries, latency percentiles, and the connections open now
  (``.../live/``, polled by ``static/js/dashboards.js``);
- ``/analytics/platform/``: staff only: platform totals, busiest APIs and applications, error
  rates, handshake outcomes, webhook deliveries and the gateway processes alive
  (``/analytics/platform/live/``).

Every page takes the date range of ``analytics.dashboard.DateRangeForm`` and answers the same
query string plus ``format=csv`` (and ``table=<name>`` for one of the page's tables) with a CSV
of the numbers shown. The reports (``provider_report``, ``platform_report``, ``index_report``)
are plain dicts, shared with the REST API (``analytics.api_dashboards``). Usage is read through
``analytics.queries`` only, so the numbers are those billing and the consumer's page read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Count, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from analytics import live
from analytics.dashboard import DateRange, DateRangeForm, csv_response, format_refusal, latency_text
from analytics.models import Direction, HandshakeRecord
from analytics.queries import (
    STEP,
    Counts,
    floor,
    latency_histogram,
    percentiles,
    usage_grouped,
    usage_series,
    usage_totals,
)
from analytics.views import WEBHOOK_COUNT_COLUMNS, webhook_counts, webhook_csv_tail, webhook_display
from analytics.webhooks import webhook_summary
from portal.models import API, Application, Subscription, User

View = Callable[..., HttpResponse]

TOP_ROWS = 10
# Per-channel latency costs one query per channel: the busiest ones only.
LATENCY_CHANNELS = 20
ERROR_KINDS = (
    ("throttled_events", "Throttled", "Stopped by the business plan's throttling policy"),
    ("dropped_events", "Dropped", "Skipped for a slow consumer (outbox full)"),
    ("rejected_events", "Rejected", "Refused for size, schema or scope"),
    ("failed_events", "Failed", "The gateway could not hand them on"),
)
DIRECTION_LABELS = dict(Direction.choices)
# The preset buttons of the range picker, as the consumer's page words them (analytics.views);
# providers and staff get 6 hours and 90 days too.
PICKER_PRESETS = (
    ("1h", "1 hour"),
    ("6h", "6 hours"),
    ("24h", "24 hours"),
    ("7d", "7 days"),
    ("30d", "30 days"),
    ("90d", "90 days"),
)


# --- access -----------------------------------------------------------------------------------


def get_api_for_analytics(user: User, slug: str) -> API:
    """API ``slug`` if ``user`` may see its analytics (its provider; staff: any API), or 404
    (another provider's API looks like no API at all)."""
    api = API.objects.managed_by(user).filter(slug=slug).select_related("provider").first()
    if api is None:
        raise Http404("No such API.")
    return api


def _forbidden(request: HttpRequest, role: str, explanation: str) -> HttpResponse:
    return render(request, "portal/forbidden.html", {"role": role, "explanation": explanation}, status=403)


def provider_or_staff_required(view: View) -> View:
    """Providers and platform admins; anonymous users go to sign in, others get a 403 page."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not (request.user.is_provider or request.user.is_staff):
            return _forbidden(request, "provider", "API analytics are for the providers of the APIs.")
        return view(request, *args, **kwargs)

    return wrapper


def staff_only(view: View) -> View:
    """Platform admins; anonymous users go to sign in, others get a 403 page."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not request.user.is_staff:
            return _forbidden(request, "admin", "Platform analytics are for platform admins.")
        return view(request, *args, **kwargs)

    return wrapper


# --- report building ----------------------------------------------------------------------------


def bounds(date_range: DateRange) -> tuple[datetime, datetime]:
    """``[start, end)`` of a report: the range's start rounded down to its step, so the totals
    are exactly the sum of the chart's buckets."""
    return floor(date_range.start, date_range.step), date_range.end


def range_dict(date_range: DateRange) -> dict[str, Any]:
    """``start``/``end`` (``bounds``), ``step``, ``preset`` (``""`` for from/to) and ``label``."""
    start, end = bounds(date_range)
    return {
        "start": start,
        "end": end,
        "step": date_range.step,
        "preset": date_range.preset,
        "label": date_range.label,
    }


def error_rate(events: int, errors: int) -> float | None:
    """Errors (events not delivered) / (delivered + not delivered), 0–1; None without any."""
    return errors / (events + errors) if events + errors else None


def counts_dict(counts: Counts) -> dict[str, Any]:
    """Counts (``analytics.queries.Counts``) with ``errors`` and ``error_rate`` added."""
    return {
        **counts.as_dict(),
        "errors": counts.errors,
        "error_rate": error_rate(counts.events, counts.errors),
    }


def _step_label(moment: datetime, step: str, many_days: bool) -> str:
    if step == "minute":
        return f"{moment:%d %b %H:%M}" if many_days else f"{moment:%H:%M}"
    if step == "hour":
        return f"{moment:%d %b %H:00}"
    return f"{moment:%d %b %Y}"


def series(subscriptions: QuerySet | None, date_range: DateRange) -> list[dict[str, Any]]:
    """Events and bytes per step, each direction, and events not delivered: oldest first,
    empty steps as zeros. ``label`` is the step's start as the chart shows it (UTC)."""
    start, end = bounds(date_range)
    common = {"subscriptions": subscriptions, "start": start, "end": end, "step": date_range.step}
    out = usage_series(**common, direction=Direction.OUT)
    into = usage_series(**common, direction=Direction.IN)
    many_days = (end - start).total_seconds() > 86_400
    return [
        {
            "start": moment,
            "label": _step_label(moment, date_range.step, many_days),
            "events_out": sent.events,
            "bytes_out": sent.bytes,
            "events_in": received.events,
            "bytes_in": received.bytes,
            "errors": sent.errors + received.errors,
        }
        for (moment, sent), (_, received) in zip(out, into, strict=True)
    ]


def _latency(histogram: dict[int, int]) -> dict[str, Any]:
    """p50/p95/p99 in seconds (upper bound of the histogram bucket) and the events measured."""
    found = percentiles(histogram)
    return {"p50": found[0.5], "p95": found[0.95], "p99": found[0.99], "events": sum(histogram.values())}


def latency(
    subscriptions: QuerySet | None, date_range: DateRange, channels: Iterable[str], steps: list[datetime]
) -> dict[str, Any]:
    """Publish → deliver latency (server → client) over the range: overall, per channel (the
    ``LATENCY_CHANNELS`` first of ``channels``; those with measured events) and per step (the
    starts of ``steps``, as ``series`` has them)."""
    start, end = bounds(date_range)
    common = {"subscriptions": subscriptions, "start": start, "end": end}
    overall = latency_histogram(**common).get(None, {})
    per_channel = [
        {"channel": channel, **_latency(latency_histogram(**common, channel=channel).get(None, {}))}
        for channel in list(channels)[:LATENCY_CHANNELS]
    ]
    by_step = latency_histogram(**common, step=date_range.step)
    return {
        "overall": _latency(overall),
        "channels": [row for row in per_channel if row["events"]],
        "series": [{"start": moment, **_latency(by_step.get(moment, {}))} for moment in steps],
    }


def channels(subscriptions: QuerySet | None, date_range: DateRange) -> list[dict[str, Any]]:
    """Usage per channel template and direction, busiest first."""
    start, end = bounds(date_range)
    grouped = usage_grouped(subscriptions=subscriptions, start=start, end=end, by=("channel", "direction"))
    rows = [
        {
            "channel": channel,
            "direction": direction,
            "direction_label": DIRECTION_LABELS.get(direction, direction),
        }
        | counts_dict(counts)
        for (channel, direction), counts in grouped.items()
    ]
    return sorted(rows, key=lambda row: (-row["events"], -row["errors"], row["channel"], row["direction"]))


def _per_subscription(subscriptions: QuerySet | None, date_range: DateRange) -> dict[int, Counts]:
    start, end = bounds(date_range)
    grouped = usage_grouped(subscriptions=subscriptions, start=start, end=end, by=("subscription_id",))
    return {key[0]: counts for key, counts in grouped.items()}


def _summed(groups: dict[Any, Counts]) -> list[tuple[Any, Counts]]:
    return sorted(groups.items(), key=lambda item: (-item[1].events, -item[1].errors, str(item[0])))


def top_applications(
    per_subscription: dict[int, Counts], *, limit: int | None = TOP_ROWS, with_owner: bool = False
) -> list[dict[str, Any]]:
    """Usage per application (its subscriptions summed), busiest first. ``owner`` (the
    consumer's email) only ``with_owner`` (platform admins)."""
    application_of = dict(
        Subscription.objects.filter(pk__in=per_subscription).values_list("pk", "application_id")
    )
    groups: dict[int, Counts] = {}
    for subscription_id, counts in per_subscription.items():
        if subscription_id not in application_of:  # deleted since its usage was read
            continue
        total = groups.setdefault(application_of[subscription_id], Counts())
        total.add(counts.as_dict())
    ranked = _summed(groups)[:limit]
    applications = Application.objects.select_related("owner").in_bulk([pk for pk, _ in ranked])
    rows = []
    for pk, counts in ranked:
        application = applications.get(pk)
        if application is None:  # deleted meanwhile
            continue
        row = {"application_id": pk, "application": application.name} | counts_dict(counts)
        if with_owner:
            row["owner"] = application.owner.email
        rows.append(row)
    return rows


def handshakes(apis: QuerySet | None, date_range: DateRange) -> dict[str, Any]:
    """Handshake outcomes in the range (``HandshakeRecord``): accepted, refused, and the
    refusals per reason and code, most frequent first. ``apis``: those in scope (None: all,
    including refusals before the API was known)."""
    start, end = bounds(date_range)
    records = HandshakeRecord.objects.filter(at__gte=start, at__lt=end)
    if apis is not None:
        records = records.filter(api__in=apis)
    rows = records.values("outcome", "code").annotate(count=Count("id")).order_by("-count", "outcome")
    accepted = sum(row["count"] for row in rows if row["outcome"] == HandshakeRecord.ACCEPTED)
    refusals = [
        {
            "outcome": row["outcome"],
            "label": row["outcome"].replace("_", " ").capitalize(),
            "code": row["code"],
            "count": row["count"],
        }
        for row in rows
        if row["outcome"] != HandshakeRecord.ACCEPTED
    ]
    refused = sum(row["count"] for row in refusals)
    return {
        "accepted": accepted,
        "refused": refused,
        "refusal_rate": refused / (accepted + refused) if accepted + refused else None,
        "refusals": refusals,
    }


WEBHOOK_SUMMED = (*WEBHOOK_COUNT_COLUMNS, "attempt_ms_total")


def _webhook_groups(
    rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]
) -> dict[Any, dict[str, Any]]:
    """``webhook_summary`` rows summed per ``key(row)``: key → counts (``webhook_counts``) plus
    ``webhooks``, how many webhooks made attempts."""
    groups: dict[Any, dict[str, Any]] = {}
    for row in rows:
        group = groups.setdefault(key(row), {"sums": dict.fromkeys(WEBHOOK_SUMMED, 0), "ids": set()})
        for name in WEBHOOK_SUMMED:
            group["sums"][name] += row[name]
        group["ids"].add(row["webhook_id"])
    return {
        name: webhook_counts(group["sums"]) | {"webhooks": len(group["ids"])}
        for name, group in groups.items()
    }


def _webhook_totals(summary: dict[str, Any]) -> dict[str, Any]:
    """``webhook_summary``'s totals plus ``webhooks``: how many webhooks made attempts."""
    return summary["totals"] | {"webhooks": len({row["webhook_id"] for row in summary["webhooks"]})}


def _by_attempts(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda row: (-row["attempts"], -row["dead"], str(row[name])))


def api_webhooks(subscriptions: QuerySet, date_range: DateRange) -> dict[str, Any]:
    """Webhook deliveries of ``subscriptions`` (one API's) in the range (``analytics.webhooks``):
    ``totals`` (counts as ``webhook_summary`` has them, plus ``webhooks``: how many webhooks made
    attempts) and ``channels``, the same per channel template, most attempts first."""
    start, end = bounds(date_range)
    summary = webhook_summary(subscriptions=subscriptions, start=start, end=end)
    per_channel = _webhook_groups(summary["webhooks"], lambda row: row["channel"])
    return {
        "totals": _webhook_totals(summary),
        "channels": _by_attempts(
            [{"channel": channel} | counts for channel, counts in per_channel.items()], "channel"
        ),
    }


def platform_webhooks(date_range: DateRange) -> dict[str, Any]:
    """Webhook deliveries of every subscription in the range: ``totals`` (as ``api_webhooks``)
    and ``apis``, the same per API (``slug``, ``name``, ``provider``), most attempts first (the
    ``TOP_ROWS`` first)."""
    start, end = bounds(date_range)
    summary = webhook_summary(subscriptions=None, start=start, end=end)
    subscription_ids = {row["subscription_id"] for row in summary["webhooks"]}
    api_of = dict(Subscription.objects.filter(pk__in=subscription_ids).values_list("pk", "api_id"))
    # A subscription deleted since the summary was read has taken its rows with it.
    rows = [row for row in summary["webhooks"] if row["subscription_id"] in api_of]
    per_api = _webhook_groups(rows, lambda row: api_of[row["subscription_id"]])
    apis = API.objects.select_related("provider").in_bulk(list(per_api))
    ranked = _by_attempts(
        [
            {"slug": apis[pk].slug, "name": apis[pk].name, "provider": apis[pk].provider.email} | counts
            for pk, counts in per_api.items()
        ],
        "slug",
    )
    return {"totals": _webhook_totals(summary), "apis": ranked[:TOP_ROWS]}


def _since(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, tz=UTC) if epoch else None


def connection_row(connection: dict[str, Any]) -> dict[str, Any]:
    """A live connection (``analytics.live`` snapshot shape) as the dashboards show it."""
    events_out, events_in = connection.get("events_out", 0), connection.get("events_in", 0)
    bytes_out, bytes_in = connection.get("bytes_out", 0), connection.get("bytes_in", 0)
    return {
        "id": connection["id"],
        "application_id": connection.get("application_id"),
        "application": connection.get("application", ""),
        "api": connection.get("api", ""),
        "version": connection.get("version", ""),
        "channels": list(connection.get("channels") or []),
        "protocol": connection.get("protocol", ""),
        "since": _since(connection.get("since")),
        "events_out": events_out,
        "events_in": events_in,
        "events": events_out + events_in,
        "bytes_out": bytes_out,
        "bytes_in": bytes_in,
        "bytes": bytes_out + bytes_in,
        "client_ip": connection.get("client_ip") or "",
        "process": connection.get("process", ""),
    }


def live_connections(api: API) -> list[dict[str, Any]]:
    """The connections to ``api`` open now across gateway processes, newest first. Raises
    ``analytics.live.LiveUnavailable`` when Redis cannot be reached."""
    return [connection_row(connection) for connection in live.connections(api_ids={api.pk})]


def _live_or_unknown(read: Callable[[], list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], bool]:
    """``(read(), True)``, or ``([], False)`` when the live snapshots cannot be read: the
    reports carry ``live_available`` so an empty list is never taken for "none open"."""
    try:
        return read(), True
    except live.LiveUnavailable:
        return [], False


def process_row(process: dict[str, Any]) -> dict[str, Any]:
    """A gateway process (``analytics.live`` snapshot shape) as the platform page shows it."""
    events_out, events_in = process.get("events_out", 0), process.get("events_in", 0)
    bytes_out, bytes_in = process.get("bytes_out", 0), process.get("bytes_in", 0)
    return {
        "process": process["process"],
        "started_at": _since(process.get("started_at")),
        "seen_at": _since(process.get("seen_at")),
        "connections": process.get("connections", 0),
        "events_out": events_out,
        "events_in": events_in,
        "events": events_out + events_in,
        "bytes_out": bytes_out,
        "bytes_in": bytes_in,
        "bytes": bytes_out + bytes_in,
    }


def live_processes() -> list[dict[str, Any]]:
    """The gateway processes alive now, oldest first. Raises ``analytics.live.LiveUnavailable``."""
    return [process_row(process) for process in live.processes()]


def provider_report(api: API, date_range: DateRange) -> dict[str, Any]:
    """Everything the provider's page of ``api`` shows, for ``date_range``: ``range``,
    ``subscribers`` (``active`` now, ``new`` subscriptions created in the range), ``totals``
    (counts, ``errors``, ``error_rate``), ``series``, ``applications`` (top ``TOP_ROWS``),
    ``channels``, ``handshakes``, ``webhooks`` (``api_webhooks``), ``latency`` (seconds),
    ``connections`` open now and ``live_available`` (False, with no connections, when Redis
    cannot be reached)."""
    subscriptions = Subscription.objects.filter(api=api)
    connections, live_available = _live_or_unknown(lambda: live_connections(api))
    start, end = bounds(date_range)
    per_channel = channels(subscriptions, date_range)
    usage = series(subscriptions, date_range)
    out_channels = [row["channel"] for row in per_channel if row["direction"] == Direction.OUT]
    return {
        "api": {"slug": api.slug, "name": api.name},
        "range": range_dict(date_range),
        "subscribers": {
            "active": subscriptions.filter(status=Subscription.Status.ACTIVE).count(),
            "new": subscriptions.filter(created__gte=start, created__lt=end)
            .exclude(status=Subscription.Status.REJECTED)
            .count(),
        },
        "totals": counts_dict(usage_totals(subscriptions=subscriptions, start=start, end=end)),
        "series": usage,
        "applications": top_applications(_per_subscription(subscriptions, date_range)),
        "channels": per_channel,
        "handshakes": handshakes(API.objects.filter(pk=api.pk), date_range),
        "webhooks": api_webhooks(subscriptions, date_range),
        "latency": latency(
            subscriptions, date_range, dict.fromkeys(out_channels), [row["start"] for row in usage]
        ),
        "connections": connections,
        "live_available": live_available,
    }


def index_report(user: User, date_range: DateRange) -> dict[str, Any]:
    """The APIs ``user`` manages with their headline numbers in the range (busiest first) and
    the totals over all of them. ``connections`` (per API and in all) is None, and
    ``live_available`` False, when Redis cannot be reached."""
    apis = list(API.objects.managed_by(user).select_related("provider").order_by("name"))
    scope = Subscription.objects.filter(api__in=[api.pk for api in apis])
    per_subscription = _per_subscription(scope, date_range)
    api_of = dict(scope.values_list("pk", "api_id"))
    per_api: dict[int, Counts] = {}
    for subscription_id, counts in per_subscription.items():
        if subscription_id in api_of:  # a subscription deleted since its usage was read is skipped
            per_api.setdefault(api_of[subscription_id], Counts()).add(counts.as_dict())
    active = dict(
        scope.filter(status=Subscription.Status.ACTIVE)
        .values("api_id")
        .annotate(n=Count("id"))
        .values_list("api_id", "n")
    )
    found, live_available = _live_or_unknown(lambda: live.connections(api_ids={api.pk for api in apis}))
    open_now: dict[int, int] = {}
    for connection in found:
        open_now[connection["api_id"]] = open_now.get(connection["api_id"], 0) + 1
    rows = [
        {
            "slug": api.slug,
            "name": api.name,
            "status": api.status,
            "provider": api.provider.email,
            "subscribers": active.get(api.pk, 0),
            "connections": open_now.get(api.pk, 0) if live_available else None,
        }
        | counts_dict(per_api.get(api.pk, Counts()))
        for api in apis
    ]
    rows.sort(key=lambda row: (-row["events"], -row["errors"], row["name"]))
    total = Counts()
    for counts in per_api.values():
        total.add(counts.as_dict())
    return {
        "range": range_dict(date_range),
        "totals": counts_dict(total),
        "subscribers": sum(active.values()),
        "connections": sum(open_now.values()) if live_available else None,
        "live_available": live_available,
        "apis": rows,
    }


def platform_report(date_range: DateRange) -> dict[str, Any]:
    """Everything the platform page shows: ``totals`` over every subscription, ``platform``
    (APIs, applications, active subscriptions), ``series``, busiest ``apis`` and
    ``applications`` (with error rates), ``handshakes``, ``webhooks`` (``platform_webhooks``),
    the gateway ``processes`` alive and ``live_available`` (False when Redis cannot be reached:
    no processes listed, and ``platform`` ``processes``/``connections`` None)."""
    start, end = bounds(date_range)
    per_subscription = _per_subscription(None, date_range)
    api_of = dict(Subscription.objects.filter(pk__in=per_subscription).values_list("pk", "api_id"))
    per_api: dict[int, Counts] = {}
    for subscription_id, counts in per_subscription.items():
        if subscription_id in api_of:  # a subscription deleted since its usage was read is skipped
            per_api.setdefault(api_of[subscription_id], Counts()).add(counts.as_dict())
    ranked = _summed(per_api)[:TOP_ROWS]
    apis = API.objects.select_related("provider").in_bulk([pk for pk, _ in ranked])
    processes, live_available = _live_or_unknown(live_processes)
    return {
        "range": range_dict(date_range),
        "totals": counts_dict(usage_totals(subscriptions=None, start=start, end=end)),
        "platform": {
            "apis": API.objects.filter(status__in=API.LISTED_STATUSES).count(),
            "applications": Application.objects.count(),
            "subscriptions": Subscription.objects.filter(status=Subscription.Status.ACTIVE).count(),
            "new_subscriptions": Subscription.objects.filter(created__gte=start, created__lt=end).count(),
            "processes": len(processes) if live_available else None,
            "connections": sum(process["connections"] for process in processes) if live_available else None,
        },
        "series": series(None, date_range),
        "apis": [
            {
                "slug": apis[pk].slug,
                "name": apis[pk].name,
                "provider": apis[pk].provider.email,
            }
            | counts_dict(counts)
            for pk, counts in ranked
        ],
        "applications": top_applications(per_subscription, with_owner=True),
        "handshakes": handshakes(None, date_range),
        "webhooks": platform_webhooks(date_range),
        "processes": processes,
        "live_available": live_available,
    }


# --- CSV ----------------------------------------------------------------------------------------

COUNT_COLUMNS = (
    "events",
    "bytes",
    "throttled_events",
    "throttled_bytes",
    "dropped_events",
    "rejected_events",
    "failed_events",
    "errors",
)


def _columns(rows: list[dict[str, Any]], columns: Iterable[str]) -> list[list[Any]]:
    return [[row[column] for column in columns] for row in rows]


SERIES_COLUMNS = ("start", "events_out", "bytes_out", "events_in", "bytes_in", "errors")
CONNECTION_COLUMNS = (
    "application", "channels", "protocol", "since", "events_out", "bytes_out", "events_in", "bytes_in",
    "client_ip", "version", "process",
)  # fmt: skip
PROCESS_COLUMNS = (
    "process", "started_at", "seen_at", "connections", "events_out", "bytes_out", "events_in", "bytes_in",
)  # fmt: skip


def _latency_rows(report: dict[str, Any]) -> list[list[Any]]:
    overall = report["latency"]["overall"]
    rows = [["(all channels)", overall["events"], overall["p50"], overall["p95"], overall["p99"]]]
    rows += _columns(report["latency"]["channels"], ("channel", "events", "p50", "p95", "p99"))
    return rows


def _error_rows(report: dict[str, Any]) -> list[list[Any]]:
    totals = report["totals"]
    rows: list[list[Any]] = [["events", kind, "", totals[kind]] for kind, _, _ in ERROR_KINDS]
    rows += [["handshakes", "accepted", "", report["handshakes"]["accepted"]]]
    rows += [
        ["handshakes", row["outcome"], row["code"] or "", row["count"]]
        for row in report["handshakes"]["refusals"]
    ]
    return rows


def _connection_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [" ".join(row["channels"]) if column == "channels" else row[column] for column in CONNECTION_COLUMNS]
        for row in rows
    ]


WEBHOOK_CSV_COLUMNS = ("webhooks", *WEBHOOK_COUNT_COLUMNS, "success_rate", "attempt_ms_mean")


def _webhook_rows(report: dict[str, Any], group: str, names: tuple[str, ...]) -> list[list[Any]]:
    """The webhooks card: a first row of the totals (``(all)`` in the first name column), then
    one per ``group`` (``channels`` or ``apis``) row."""
    webhooks = report["webhooks"]
    rows = [
        [
            "(all)",
            *[""] * (len(names) - 1),
            webhooks["totals"]["webhooks"],
            *webhook_csv_tail(webhooks["totals"]),
        ]
    ]
    rows += [
        [*(row[name] for name in names), row["webhooks"], *webhook_csv_tail(row)] for row in webhooks[group]
    ]
    return rows


# table name → (header, rows of the report)
PROVIDER_TABLES: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any]], list[list[Any]]]]] = {
    "series": (SERIES_COLUMNS, lambda report: _columns(report["series"], SERIES_COLUMNS)),
    "applications": (
        ("application", *COUNT_COLUMNS),
        lambda report: _columns(report["applications"], ("application", *COUNT_COLUMNS)),
    ),
    "channels": (
        ("channel", "direction", *COUNT_COLUMNS),
        lambda report: _columns(report["channels"], ("channel", "direction", *COUNT_COLUMNS)),
    ),
    "errors": (("what", "kind", "code", "count"), _error_rows),
    "latency": (("channel", "events", "p50_seconds", "p95_seconds", "p99_seconds"), _latency_rows),
    "connections": (CONNECTION_COLUMNS, lambda report: _connection_rows(report["connections"])),
    "webhooks": (
        ("channel", *WEBHOOK_CSV_COLUMNS),
        lambda report: _webhook_rows(report, "channels", ("channel",)),
    ),
}
INDEX_COLUMNS = ("slug", "name", "status", "subscribers", "connections", *COUNT_COLUMNS)
INDEX_TABLES = {"apis": (INDEX_COLUMNS, lambda report: _columns(report["apis"], INDEX_COLUMNS))}
PLATFORM_TABLES: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any]], list[list[Any]]]]] = {
    "series": PROVIDER_TABLES["series"],
    "apis": (
        ("slug", "name", "provider", *COUNT_COLUMNS),
        lambda report: _columns(report["apis"], ("slug", "name", "provider", *COUNT_COLUMNS)),
    ),
    "applications": (
        ("application", "owner", *COUNT_COLUMNS),
        lambda report: _columns(report["applications"], ("application", "owner", *COUNT_COLUMNS)),
    ),
    "errors": PROVIDER_TABLES["errors"],
    "webhooks": (
        ("slug", "name", "provider", *WEBHOOK_CSV_COLUMNS),
        lambda report: _webhook_rows(report, "apis", ("slug", "name", "provider")),
    ),
    "processes": (PROCESS_COLUMNS, lambda report: _columns(report["processes"], PROCESS_COLUMNS)),
}


# CSV tables read from analytics.live: a 503 when Redis cannot be reached.
LIVE_TABLES = ("connections", "processes")


def _csv(
    request: HttpRequest, report: dict[str, Any], tables: dict[str, Any], *, name: str, default: str
) -> HttpResponse:
    """The ``table`` (query parameter, default ``default``) of ``report`` as a CSV download, or
    400 naming the field when there is no such table, or 503 for a live table (``LIVE_TABLES``)
    when Redis cannot be reached."""
    table = request.GET.get("table") or default
    if table not in tables:
        return HttpResponse(
            f"table: {table!r} is not one of {', '.join(tables)}", status=400, content_type="text/plain"
        )
    if table in LIVE_TABLES and not report.get("live_available", True):
        # An empty CSV would read as "nothing open"; the truth is "unknown".
        return HttpResponse(live.LIVE_UNAVAILABLE, status=503, content_type="text/plain; charset=utf-8")
    header, rows = tables[table]
    start, end = report["range"]["start"], report["range"]["end"]
    filename = f"{name}-{table}-{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}.csv"
    return csv_response(filename, header, rows(report))


def _bad_range_csv(form: DateRangeForm) -> HttpResponse:
    return HttpResponse(form.error_text(), status=400, content_type="text/plain; charset=utf-8")


# --- pages --------------------------------------------------------------------------------------


def _page_context(request: HttpRequest, form: DateRangeForm) -> dict[str, Any]:
    """What every dashboard page's range picker (``provider_range.html``) needs."""
    valid = form.is_valid()
    return {
        "form": form,
        "presets": PICKER_PRESETS,
        "current_preset": form.date_range.preset if valid else "",
        "query": form.date_range.query() if valid else "",
    }


def error_kinds(totals: dict[str, Any]) -> list[dict[str, Any]]:
    """Events not delivered, per kind, with their share of all events (delivered or not)."""
    attempted = totals["events"] + totals["errors"]
    return [
        {
            "key": key,
            "label": label,
            "help": help_text,
            "count": totals[key],
            "percent": f"{totals[key] / attempted * 100:.2f} %" if attempted else "—",
        }
        for key, label, help_text in ERROR_KINDS
    ]


def _latency_text(seconds: float | None) -> str:
    return latency_text(seconds)


def for_page(value: Any) -> Any:
    """``value`` (a report) with display texts beside the numbers the page formats:
    ``error_percent``/``refusal_percent`` next to rates, ``p50_text``... next to latencies, and
    ``webhook_display``'s texts and status classes next to webhook counts."""
    if isinstance(value, list):
        return [for_page(item) for item in value]
    if not isinstance(value, dict):
        return value
    result = {key: for_page(item) for key, item in value.items()}
    for rate, text in (("error_rate", "error_percent"), ("refusal_rate", "refusal_percent")):
        if rate in value:
            result[text] = "—" if value[rate] is None else f"{value[rate] * 100:.2f} %"
    for quantile in ("p50", "p95", "p99"):
        if quantile in value:
            result[f"{quantile}_text"] = _latency_text(value[quantile])
    if "success_rate" in value and "status_2xx" in value:
        result = webhook_display(result)
    return result


@require_GET
@provider_or_staff_required
def analytics_index(request: HttpRequest) -> HttpResponse:
    """The APIs the user manages with events, bytes, errors, subscribers and connections now."""
    if (refusal := format_refusal(request)) is not None:
        return refusal
    form = DateRangeForm(request.GET)
    valid = form.is_valid()
    if request.GET.get("format") == "csv":
        if not valid:
            return _bad_range_csv(form)
        return _csv(
            request,
            index_report(request.user, form.date_range),
            INDEX_TABLES,
            name="analytics",
            default="apis",
        )
    context = _page_context(request, form)
    context["report"] = for_page(index_report(request.user, form.date_range)) if valid else None
    return render(request, "analytics/provider_index.html", context, status=200 if valid else 400)


@require_GET
@provider_or_staff_required
def provider_api(request: HttpRequest, slug: str) -> HttpResponse:
    """One API's analytics for its provider (staff: any API); 404 for another provider's."""
    api = get_api_for_analytics(request.user, slug)
    if (refusal := format_refusal(request)) is not None:
        return refusal
    form = DateRangeForm(request.GET)
    valid = form.is_valid()
    if request.GET.get("format") == "csv":
        if not valid:
            return _bad_range_csv(form)
        report = provider_report(api, form.date_range)
        return _csv(request, report, PROVIDER_TABLES, name=api.slug, default="series")
    context = _page_context(request, form) | {"api": api}
    if valid:
        report = provider_report(api, form.date_range)
        context |= {
            "report": for_page(report),
            "charts": provider_charts(report),
            "error_kinds": error_kinds(report["totals"]),
            "is_provider": api.provider_id == request.user.pk,
        }
    return render(request, "analytics/provider_api.html", context, status=200 if valid else 400)


@require_GET
@staff_only
def platform(request: HttpRequest) -> HttpResponse:
    """The platform's totals, busiest APIs and applications, error rates, handshake outcomes
    and gateway processes (staff only)."""
    if (refusal := format_refusal(request)) is not None:
        return refusal
    form = DateRangeForm(request.GET)
    valid = form.is_valid()
    if request.GET.get("format") == "csv":
        if not valid:
            return _bad_range_csv(form)
        return _csv(
            request, platform_report(form.date_range), PLATFORM_TABLES, name="platform", default="series"
        )
    context = _page_context(request, form) | {
        "stale_seconds": f"{settings.GATEWAY_LIVE_INTERVAL * live.STALE_INTERVALS:g}"
    }
    if valid:
        report = platform_report(form.date_range)
        context |= {
            "report": for_page(report),
            "charts": platform_charts(report),
            "error_kinds": error_kinds(report["totals"]),
        }
    return render(request, "analytics/platform.html", context, status=200 if valid else 400)


def _json(data: dict[str, Any], status: int = 200) -> JsonResponse:
    return JsonResponse(data, status=status, encoder=DjangoJSONEncoder)


def _live_unavailable(kind: str, **extra: Any) -> JsonResponse:
    """503 ``{"detail": LIVE_UNAVAILABLE, "live_available": false, <kind>: [], "count": null}``
    (plus ``extra``): the page's live panel shows ``detail`` instead of an empty table."""
    data = {"detail": live.LIVE_UNAVAILABLE, "live_available": False, kind: [], "count": None, **extra}
    return _json(data, status=503)


@require_GET
def provider_api_live(request: HttpRequest, slug: str) -> JsonResponse:
    """``{"connections": [...], "count": n, "live_available": true}``: the API's connections open
    now (polled by the page). 403 for anyone but providers and staff, 404 for an API the user
    does not manage, 503 (``_live_unavailable``) when Redis cannot be reached."""
    if not request.user.is_authenticated or not (request.user.is_provider or request.user.is_staff):
        return _json({"detail": "Sign in as the API's provider."}, status=403)
    try:
        api = get_api_for_analytics(request.user, slug)
    except Http404:
        return _json({"detail": "No such API."}, status=404)
    try:
        connections = live_connections(api)
    except live.LiveUnavailable:
        return _live_unavailable("connections")
    return _json({"connections": connections, "count": len(connections), "live_available": True})


@require_GET
def platform_live(request: HttpRequest) -> JsonResponse:
    """``{"processes": [...], "count": n, "connections": n, "live_available": true}``: gateway
    processes alive now (staff only; 403 for others; 503, ``_live_unavailable``, when Redis
    cannot be reached)."""
    if not request.user.is_authenticated or not request.user.is_staff:
        return _json({"detail": "Platform analytics are for platform admins."}, status=403)
    try:
        processes = live_processes()
    except live.LiveUnavailable:
        return _live_unavailable("processes", connections=None)
    return _json(
        {
            "processes": processes,
            "count": len(processes),
            "connections": sum(process["connections"] for process in processes),
            "live_available": True,
        }
    )


# --- charts (Chart.js, drawn by static/js/dashboards.js) ---------------------------------------

COLORS = {
    "out": "#5b4ddb",
    "in": "#20a4a4",
    "errors": "#dc3545",
    "p50": "#20a4a4",
    "p95": "#5b4ddb",
    "p99": "#e8891a",
}
STEP_WORDS = {"minute": "minute", "hour": "hour", "day": "day (UTC)"}
# Percentiles often coincide (a whole histogram bucket): the widest, lighter line is drawn first
# and the narrowest, dashed one last (``order``: lower on top), each with its own point shape and
# size, so all three stay visible when they lie on each other.
LATENCY_STYLES: dict[str, dict[str, Any]] = {
    "p50": {"width": 4, "fade": 0.6, "point": "circle", "radius": 3.5, "order": 3},
    "p95": {"width": 2.5, "point": "rect", "radius": 3, "order": 2},
    "p99": {"width": 2, "point": "triangle", "radius": 3.5, "order": 1, "dashed": True},
}


def _chart(
    kind: str,
    labels: list[str],
    datasets: list[dict[str, Any]],
    *,
    y_title: str,
    x_title: str,
    unit: str,
    step: str = "",
    partial: str = "",
) -> dict[str, Any]:
    """A chart spec for dashboards.js: ``kind`` ``line``/``bar``/``hbar``, ``unit``
    ``events``/``bytes``/``ms`` (tick and tooltip format); over time, the ``step`` of each point
    and ``partial`` (``partial_step``): when set, why the last point is drawn dashed and lighter.
    A dataset has ``label``, ``data``, ``color`` and optionally ``fill``, ``dashed``, ``width``
    and ``radius`` (pixels), ``fade`` (the line's opacity), ``point`` (Chart.js point style) and
    ``order`` (lower is drawn on top)."""
    return {
        "kind": kind,
        "labels": labels,
        "datasets": datasets,
        "y_title": y_title,
        "x_title": x_title,
        "unit": unit,
        "step": step,
        "partial": partial,
    }


def partial_step(report: dict[str, Any], now: datetime | None = None) -> str:
    """Why the series' last step holds less than a whole step, as the charts' note says it, or
    ``""`` when it is whole: ``"still filling"`` while that step is not over yet (the range
    ends now), ``"cut at 10:30 UTC"`` when the range ends inside it. The first step is always
    whole: the report's start is rounded down to the step (``bounds``)."""
    rows, step, end = report["series"], report["range"]["step"], report["range"]["end"]
    if not rows or rows[-1]["start"] + STEP[step] <= end:
        return ""
    if rows[-1]["start"] + STEP[step] > (now or timezone.now()):
        return "still filling"
    return f"cut at {end:%H:%M} UTC" if step == "minute" or end.second == 0 else f"cut at {end:%H:%M:%S} UTC"


def _ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds for a chart; a percentile above the histogram (infinity) is a
    gap: JSON has no infinity."""
    return None if seconds is None or seconds == math.inf else round(seconds * 1000, 3)


def usage_charts(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Events and bytes over time, per direction, with events not delivered."""
    rows, step = report["series"], report["range"]["step"]
    labels = [row["label"] for row in rows]
    x_title = f"Time (UTC), per {STEP_WORDS[step]}"
    partial = partial_step(report)

    def line(label: str, key: str, color: str, **extra: Any) -> dict[str, Any]:
        return {"label": label, "data": [row[key] for row in rows], "color": color, **extra}

    return {
        "events": _chart(
            "line",
            labels,
            [
                line("Delivered, server → client", "events_out", COLORS["out"], fill=True),
                line("Accepted, client → server", "events_in", COLORS["in"]),
                line("Not delivered (errors)", "errors", COLORS["errors"], dashed=True),
            ],
            y_title=f"Events per {step}",
            x_title=x_title,
            unit="events",
            step=step,
            partial=partial,
        ),
        "bytes": _chart(
            "line",
            labels,
            [
                line("Server → client", "bytes_out", COLORS["out"], fill=True),
                line("Client → server", "bytes_in", COLORS["in"]),
            ],
            y_title=f"Bytes per {step}",
            x_title=x_title,
            unit="bytes",
            step=step,
            partial=partial,
        ),
    }


def provider_charts(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``usage_charts`` plus events per channel (by direction) and latency percentiles over time."""
    charts = usage_charts(report)
    names = list(dict.fromkeys(row["channel"] for row in report["channels"]))[:15]
    by_key = {(row["channel"], row["direction"]): row for row in report["channels"]}
    charts["channels"] = _chart(
        "hbar",
        names,
        [
            {
                "label": DIRECTION_LABELS[direction],
                "data": [by_key.get((name, direction), {}).get("events", 0) for name in names],
                "color": COLORS[direction],
            }
            for direction in (Direction.OUT, Direction.IN)
        ],
        y_title="Channel",
        x_title="Events",
        unit="events",
    )
    latency_rows = report["latency"]["series"]
    step = report["range"]["step"]
    charts["latency"] = _chart(
        "line",
        [row["label"] for row in report["series"]],
        [
            {"label": name, "data": [_ms(row[name]) for row in latency_rows], "color": COLORS[name]}
            | LATENCY_STYLES[name]
            for name in ("p50", "p95", "p99")
        ],
        y_title="Publish → deliver (ms, at most)",
        x_title=f"Time (UTC), per {STEP_WORDS[step]}",
        unit="ms",
        step=step,
        partial=partial_step(report),
    )
    return charts


def platform_charts(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``usage_charts`` plus the busiest APIs' events."""
    charts = usage_charts(report)
    charts["apis"] = _chart(
        "hbar",
        [row["name"] for row in report["apis"]],
        [
            {"label": "Delivered", "data": [row["events"] for row in report["apis"]], "color": COLORS["out"]},
            {
                "label": "Not delivered",
                "data": [row["errors"] for row in report["apis"]],
                "color": COLORS["errors"],
            },
        ],
        y_title="API",
        x_title="Events",
        unit="events",
    )
    return charts
