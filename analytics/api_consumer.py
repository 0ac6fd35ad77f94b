"""REST endpoints of the consumer's usage dashboard, under ``/api/v1/usage/`` (docs/rest-api.md):
the same numbers as the /usage/ page (``analytics.views.consumer_usage``), for the signed-in
user's own subscriptions only.

Every endpoint takes the dashboard's range parameters (``analytics.dashboard``): ``range`` (a
preset: ``1h``, ``6h``, ``24h`` (default), ``7d``, ``30d``, ``90d``) or ``from``/``to`` (dates,
UTC, ``to`` inclusive, or ISO 8601 date-times, ``to`` exclusive), and ``step`` (``minute``,
``hour``, ``day``). A bad parameter answers 400 with the field's error; another user's
subscription answers 404.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from analytics.dashboard import PRESETS, DateRange, LatencySecondsField
from analytics.live import LiveUnavailable
from analytics.queries import RESOLUTIONS
from analytics.views import (
    ConnectionRow,
    ConsumerUsageForm,
    SubscriptionUsage,
    connection_counts,
    connection_records,
    consumer_subscriptions,
    consumer_usage,
    counts_row,
    open_connections,
    range_bounds,
    webhook_counts,
)
from portal.api.common import V1View, get_subscription_for_user
from portal.serializers import LimitPeriodSerializer

# --- serializers (output only) -----------------------------------------------------------------


# The events not delivered, never billed, as the provider's and platform's endpoints name them
# (analytics.api_dashboards CountsSerializer): stopped by the plan's throttling policy
# (``throttled_*``), skipped for a slow consumer (``dropped_events``), refused for size, schema
# or scope (``rejected_events``), not handed on (``failed_events``), and their sum (``errors``).
# Fields are declared in each serializer so that they follow the events and bytes in the output.


class UsageCountsSerializer(serializers.Serializer[Any]):
    """Summed counts of one channel and direction: ``events``/``bytes`` delivered (out) or
    accepted and published (in), and the events not delivered."""

    events = serializers.IntegerField(help_text="Events delivered (out) or accepted (in).")
    bytes = serializers.IntegerField(help_text="Bytes of those events (frames as sent).")
    throttled_events = serializers.IntegerField(help_text="Stopped by the plan's throttling policy.")
    throttled_bytes = serializers.IntegerField()
    dropped_events = serializers.IntegerField(help_text="Skipped for a slow consumer.")
    rejected_events = serializers.IntegerField(help_text="Refused for size, schema or scope.")
    failed_events = serializers.IntegerField(help_text="The gateway could not hand them on.")
    errors = serializers.IntegerField(
        help_text="Events not delivered: throttled + dropped + rejected + failed."
    )
    error_rate = serializers.FloatField(
        allow_null=True, help_text="errors / (events + errors), 0–1; null without any event."
    )


class UsageDirectionsSerializer(serializers.Serializer[Any]):
    """Counts of both directions: ``events_out``/``bytes_out`` delivered server → client (what
    billing charges), ``events_in``/``bytes_in`` accepted client → server, and the events not
    delivered in either direction."""

    events_out = serializers.IntegerField(help_text="Events delivered server → client (billed).")
    bytes_out = serializers.IntegerField(help_text="Bytes of those events.")
    events_in = serializers.IntegerField(help_text="Events accepted client → server.")
    bytes_in = serializers.IntegerField()
    throttled_events = serializers.IntegerField(help_text="Stopped by the plan's throttling policy.")
    throttled_bytes = serializers.IntegerField()
    dropped_events = serializers.IntegerField(help_text="Skipped for a slow consumer.")
    rejected_events = serializers.IntegerField(help_text="Refused for size, schema or scope.")
    failed_events = serializers.IntegerField(help_text="The gateway could not hand them on.")
    errors = serializers.IntegerField(
        help_text="Events not delivered: throttled + dropped + rejected + failed."
    )


class UsageTotalsSerializer(UsageDirectionsSerializer):
    error_rate = serializers.FloatField(
        allow_null=True,
        help_text="errors / (events_out + events_in + errors), 0–1; null without any event.",
    )


class UsageRangeSerializer(serializers.Serializer[Any]):
    """The range read: ``[start, end)`` in UTC, ``start`` rounded down to the step."""

    start = serializers.DateTimeField()
    end = serializers.DateTimeField(help_text="Exclusive.")
    step = serializers.ChoiceField(choices=RESOLUTIONS)
    preset = serializers.CharField(help_text="The preset asked for (`24h`, ...), empty for from/to.")
    label = serializers.CharField()


class UsageApplicationSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    name = serializers.CharField()


class UsageAPISerializer(serializers.Serializer[Any]):
    slug = serializers.SlugField()
    name = serializers.CharField()


class UsageSubscriptionSerializer(serializers.Serializer[Any]):
    """A subscription's usage totals over the range (``events_out``/``bytes_out``: server →
    client, billed; ``events_in``/``bytes_in``: client → server)."""

    id = serializers.IntegerField()
    status = serializers.CharField()
    plan = serializers.CharField()
    application = UsageApplicationSerializer()
    api = UsageAPISerializer()
    totals = UsageTotalsSerializer()


class UsageListSerializer(serializers.Serializer[Any]):
    range = UsageRangeSerializer()
    subscriptions = UsageSubscriptionSerializer(many=True)


class _StepStartSerializer(serializers.Serializer[Any]):
    start = serializers.DateTimeField(help_text="Start of the step (UTC).")


class UsagePointSerializer(_StepStartSerializer, UsageDirectionsSerializer):
    """One step of the series: its start (UTC), then the counts of both directions."""


class UsageChannelSerializer(UsageCountsSerializer):
    channel = serializers.CharField(help_text="Channel address template.")
    direction = serializers.CharField(help_text="`out`: server → client; `in`: client → server.")


class UsageLatencySerializer(serializers.Serializer[Any]):
    """Publish → deliver latency of delivered events in seconds: the upper bound of the
    histogram bucket holding each percentile (the true value is at most this); null without
    measured events (``events`` 0: none delivered, or none carried its publish time)."""

    p50 = LatencySecondsField(allow_null=True)
    p95 = LatencySecondsField(allow_null=True)
    p99 = LatencySecondsField(allow_null=True)
    events = serializers.IntegerField(help_text="Events measured.")


class WebhookMetricsSerializer(serializers.Serializer[Any]):
    """Webhook delivery attempts summed over a range (docs/webhooks.md, *Metrics*):
    ``attempts`` = ``status_2xx + status_3xx + status_4xx + status_5xx + errors``."""

    attempts = serializers.IntegerField(help_text="POSTs whose outcome was recorded, retries included.")
    delivered = serializers.IntegerField(help_text="Deliveries (events) that ended with a 2xx.")
    retries = serializers.IntegerField(help_text="Attempts after a delivery's first.")
    dead = serializers.IntegerField(help_text="Deliveries (events) that became dead letters.")
    status_2xx = serializers.IntegerField(help_text="Attempts answered 2xx.")
    status_3xx = serializers.IntegerField(help_text="Attempts answered 3xx (redirects are not followed).")
    status_4xx = serializers.IntegerField(help_text="Attempts answered 4xx.")
    status_5xx = serializers.IntegerField(help_text="Attempts answered 5xx.")
    errors = serializers.IntegerField(
        help_text="Attempts without an answer: timeout, connection refused or reset, address refused."
    )
    responses = serializers.IntegerField(help_text="Attempts answered with a 2xx-5xx status.")
    attempt_ms_total = serializers.IntegerField(help_text="Sum of the answered attempts' round trips (ms).")
    attempt_ms_mean = serializers.FloatField(
        allow_null=True, help_text="Mean round trip of the answered attempts (ms); null without answers."
    )
    success_rate = serializers.FloatField(
        allow_null=True, help_text="Attempts answered 2xx / attempts, 0-1; null without attempts."
    )


class UsageWebhookSerializer(WebhookMetricsSerializer):
    webhook_id = serializers.IntegerField(help_text="The webhook's id (`/api/v1/webhooks/<id>/`).")
    channel = serializers.CharField(help_text="Channel address template.")


class UsageWebhookPointSerializer(WebhookMetricsSerializer):
    start = serializers.DateTimeField(help_text="Start of the step (UTC).")


class UsageWebhooksSerializer(serializers.Serializer[Any]):
    totals = WebhookMetricsSerializer()
    webhooks = UsageWebhookSerializer(
        many=True, help_text="Webhooks with attempts in the range, busiest first."
    )
    series = UsageWebhookPointSerializer(
        many=True, help_text="One point per step, oldest first, empty steps as zeros; empty without attempts."
    )


class UsageDetailSerializer(UsageSubscriptionSerializer):
    range = UsageRangeSerializer()
    series = UsagePointSerializer(
        many=True, help_text="One point per step, oldest first; empty steps are zeros."
    )
    channels = UsageChannelSerializer(many=True, help_text="Per channel and direction, busiest first.")
    latency = UsageLatencySerializer()
    quota = LimitPeriodSerializer(
        help_text="This billing period (calendar month, UTC) against the plan's quotas."
    )
    webhooks = UsageWebhooksSerializer(
        help_text="Webhook delivery attempts in the range: totals, per webhook, per step (zeros without any)."
    )


class UsageConnectionHistorySerializer(serializers.Serializer[Any]):
    """A finished WebSocket or SSE connection."""

    id = serializers.IntegerField()
    protocol = serializers.CharField()
    version = serializers.CharField()
    channels = serializers.ListField(child=serializers.CharField(), help_text="Channel templates served.")
    client_ip = serializers.IPAddressField(allow_null=True)
    user_agent = serializers.CharField()
    opened_at = serializers.DateTimeField()
    closed_at = serializers.DateTimeField()
    duration_seconds = serializers.FloatField()
    close_code = serializers.IntegerField(allow_null=True, help_text="RFC 6455 §7.4; null: the client left.")
    close_reason = serializers.CharField()
    close_meaning = serializers.CharField(help_text="The close code in words, e.g. 4429 → throttled.")
    events_out = serializers.IntegerField()
    bytes_out = serializers.IntegerField()
    events_in = serializers.IntegerField()
    bytes_in = serializers.IntegerField()
    throttled_events = serializers.IntegerField()
    dropped_events = serializers.IntegerField()


class UsageOpenConnectionSerializer(serializers.Serializer[Any]):
    """A connection open now, as its gateway process last reported it (every few seconds)."""

    id = serializers.CharField()
    protocol = serializers.CharField()
    version = serializers.CharField()
    channels = serializers.ListField(child=serializers.CharField())
    client_ip = serializers.CharField(allow_null=True)
    since = serializers.DateTimeField(source="since_at")
    open_seconds = serializers.FloatField()
    events_out = serializers.IntegerField()
    bytes_out = serializers.IntegerField()
    events_in = serializers.IntegerField()
    bytes_in = serializers.IntegerField()


class UsageConnectionsSerializer(serializers.Serializer[Any]):
    range = UsageRangeSerializer()
    live_available = serializers.BooleanField(
        help_text="False when the gateways' live snapshots cannot be read (Redis cannot be reached): "
        "`open_now` is then empty because it is unknown, not because nothing is open."
    )
    open_now = UsageOpenConnectionSerializer(many=True)
    history = UsageConnectionHistorySerializer(many=True, help_text="Newest first, at most `limit`.")
    history_total = serializers.IntegerField(help_text="Finished connections overlapping the range.")


# --- helpers ------------------------------------------------------------------------------------

RANGE_PARAMETERS = [
    OpenApiParameter("range", str, enum=list(PRESETS), description="A preset ending now (default `24h`)."),
    OpenApiParameter(
        "from",
        str,
        description="Start: a date (YYYY-MM-DD, UTC) or an ISO 8601 date-time; with `to`, not `range`.",
    ),
    OpenApiParameter(
        "to", str, description="End: a date (inclusive) or an ISO 8601 date-time (exclusive); default now."
    ),
    OpenApiParameter(
        "step",
        str,
        enum=list(RESOLUTIONS),
        description="Series step; by default the finest giving ≤ ~400 points.",
    ),
]


def _form(request: Request) -> ConsumerUsageForm:
    """The valid range and filters of the query string, or a 400 naming each bad parameter."""
    form = ConsumerUsageForm(request.query_params, user=request.user)
    if not form.is_valid():
        raise serializers.ValidationError(form.field_errors())
    return form


def _range(date_range: DateRange) -> dict[str, Any]:
    start, end = range_bounds(date_range)
    return {
        "start": start,
        "end": end,
        "step": date_range.step,
        "preset": date_range.preset,
        "label": date_range.label,
    }


def _webhooks(usage: SubscriptionUsage) -> dict[str, Any]:
    """The subscription's webhook metrics (``UsageWebhooksSerializer``): zeros and empty lists
    when none of its webhooks made an attempt in the range."""
    webhooks = usage.webhooks
    if webhooks is None or not webhooks.attempts:
        return {"totals": webhook_counts({}), "webhooks": [], "series": []}
    return {"totals": webhooks.totals, "webhooks": webhooks.webhooks, "series": webhooks.series}


def _summary(usage: SubscriptionUsage) -> dict[str, Any]:
    subscription = usage.subscription
    return {
        "id": subscription.pk,
        "status": subscription.status,
        "plan": subscription.plan.name,
        "application": {"id": subscription.application_id, "name": subscription.application.name},
        "api": {"slug": subscription.api.slug, "name": subscription.api.name},
        "totals": usage.totals,
    }


# --- views --------------------------------------------------------------------------------------


class UsageListView(V1View):
    @extend_schema(
        parameters=[
            *RANGE_PARAMETERS,
            OpenApiParameter("application", int, description="Only this application's subscriptions."),
        ],
        responses=UsageListSerializer,
        summary="Usage of your subscriptions over a date range",
        description="Per subscription of your applications, summed over the range: events and bytes "
        "delivered server → client (`events_out`, `bytes_out`; billed) and accepted client → server "
        "(`events_in`, `bytes_in`), and the events not delivered by reason. The same numbers as /usage/.",
    )
    def get(self, request: Request) -> Response:
        form = _form(request)
        subscriptions = consumer_subscriptions(request.user, application=form.cleaned_data.get("application"))
        usages = consumer_usage(subscriptions, form.date_range, with_connections=False)
        data = {"range": _range(form.date_range), "subscriptions": [_summary(usage) for usage in usages]}
        return Response(UsageListSerializer(data).data)


class UsageSubscriptionView(V1View):
    @extend_schema(
        parameters=RANGE_PARAMETERS,
        responses=UsageDetailSerializer,
        summary="Usage of one of your subscriptions: totals, series, channels, latency, quota, webhooks",
        description="Totals of the range, one point per step (the dashboard's chart), per channel and "
        "direction, publish → deliver latency percentiles (seconds), this billing period's quota "
        "used and left, and webhook delivery attempts (totals, per webhook, per step). 404 for a "
        "subscription that is not of your applications.",
    )
    def get(self, request: Request, pk: int) -> Response:
        subscription = get_subscription_for_user(request.user, pk)
        form = _form(request)
        (usage,) = consumer_usage([subscription], form.date_range, with_connections=False)
        data = {
            **_summary(usage),
            "range": _range(form.date_range),
            "series": [point.row for point in usage.series],
            "channels": [
                {"channel": row.channel, "direction": row.direction, **counts_row(row.counts)}
                for row in usage.channels
            ],
            "latency": {**usage.latency, "events": usage.latency_events},
            "quota": usage.quota,
            "webhooks": _webhooks(usage),
        }
        return Response(UsageDetailSerializer(data).data)


class UsageConnectionsView(V1View):
    @extend_schema(
        parameters=[
            *RANGE_PARAMETERS,
            OpenApiParameter(
                "limit", int, description="Finished connections to list: default 100, at most 1,000."
            ),
        ],
        responses=UsageConnectionsSerializer,
        summary="Connections of one of your subscriptions: open now and finished in the range",
        description="`open_now`: WebSocket and SSE connections open now (each gateway process reports "
        "its connections every few seconds; `live_available` is false, and `open_now` empty, when "
        "Redis cannot be reached). `history`: connections that ended after the range's start "
        "and opened before its end, newest first, with the close code in words. 404 for a subscription "
        "that is not of your applications.",
    )
    def get(self, request: Request, pk: int) -> Response:
        subscription = get_subscription_for_user(request.user, pk)
        form = _form(request)
        limit = _limit(request)
        start, end = range_bounds(form.date_range)
        records = connection_records([subscription.pk], start, end)[:limit]
        try:
            open_now, live_available = open_connections([subscription.pk]).get(subscription.pk, []), True
        except LiveUnavailable:
            open_now, live_available = [], False
        data = {
            "range": _range(form.date_range),
            "live_available": live_available,
            "open_now": open_now,
            "history": [ConnectionRow(record).as_dict() for record in records],
            "history_total": connection_counts([subscription.pk], start, end).get(subscription.pk, 0),
        }
        return Response(UsageConnectionsSerializer(data).data)


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    try:
        limit = int(raw)
    except ValueError:
        raise serializers.ValidationError({"limit": [f'"{raw}" is not a whole number']}) from None
    if not 1 <= limit <= 1000:
        raise serializers.ValidationError({"limit": ["must be between 1 and 1,000"]})
    return limit
