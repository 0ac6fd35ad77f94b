"""REST endpoints of the provider's and the platform's analytics (mounted at /api/v1/analytics/):
the same reports as the pages (``analytics.views_dashboards``), as JSON.

Range parameters are the pages' (``analytics.dashboard``): ``range`` (preset), or ``from`` and
``to`` (which replace ``range`` when given), and ``step``; a bad one answers 400 with the
field's errors (``{"from": ["..."]}``). The answer's ``range`` says which was used (``preset``
is empty for from/to).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import permissions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from analytics.api_consumer import WebhookMetricsSerializer
from analytics.dashboard import PRESETS, DateRange, DateRangeForm, LatencySecondsField
from analytics.live import LiveUnavailable
from analytics.views_dashboards import (
    get_api_for_analytics,
    live_connections,
    platform_report,
    provider_report,
)
from portal.api.common import V1View

# --- output serializers -------------------------------------------------------------------------


class RangeSerializer(serializers.Serializer):
    start = serializers.DateTimeField(help_text="Start (UTC), rounded down to the step.")
    end = serializers.DateTimeField(help_text="End (UTC), exclusive.")
    step = serializers.ChoiceField(choices=["minute", "hour", "day"], help_text="Bucket of `series`.")
    preset = serializers.CharField(
        help_text="The preset the range came from (`24h`, ...); empty for `from`/`to`, which replace it."
    )
    label = serializers.CharField()


class CountsSerializer(serializers.Serializer):
    events = serializers.IntegerField(help_text="Events delivered (out) or accepted (in): what is billed.")
    bytes = serializers.IntegerField(help_text="Bytes of those events.")
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


class SeriesPointSerializer(serializers.Serializer):
    start = serializers.DateTimeField(help_text="Start of the step (UTC).")
    events_out = serializers.IntegerField(help_text="Events delivered server → client.")
    bytes_out = serializers.IntegerField()
    events_in = serializers.IntegerField(help_text="Events accepted client → server.")
    bytes_in = serializers.IntegerField()
    errors = serializers.IntegerField(help_text="Events not delivered, both directions.")


class ApplicationUsageSerializer(CountsSerializer):
    application_id = serializers.IntegerField()
    application = serializers.CharField(help_text="The application's name.")


class PlatformApplicationUsageSerializer(ApplicationUsageSerializer):
    owner = serializers.EmailField(help_text="The consumer who owns the application.")


class ChannelUsageSerializer(CountsSerializer):
    channel = serializers.CharField(help_text="Channel address template.")
    # A plain string: a choice field here would name the ["out", "in"] enum a second time in the schema.
    direction = serializers.CharField(help_text="`out`: server → client; `in`: client → server.")


class RefusalSerializer(serializers.Serializer):
    outcome = serializers.CharField(help_text="Refusal reason, e.g. invalid_credential, quota_exhausted.")
    code = serializers.IntegerField(allow_null=True, help_text="WebSocket close code or HTTP status (SSE).")
    count = serializers.IntegerField()


class HandshakesSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    refused = serializers.IntegerField()
    refusal_rate = serializers.FloatField(allow_null=True, help_text="refused / all, 0–1.")
    refusals = RefusalSerializer(many=True)


class PercentilesSerializer(serializers.Serializer):
    p50 = LatencySecondsField(allow_null=True, help_text="Seconds (upper bound of the histogram bucket).")
    p95 = LatencySecondsField(allow_null=True, help_text="Seconds.")
    p99 = LatencySecondsField(allow_null=True, help_text="Seconds.")
    events = serializers.IntegerField(help_text="Events measured.")


class ChannelLatencySerializer(PercentilesSerializer):
    channel = serializers.CharField()


class LatencyPointSerializer(PercentilesSerializer):
    start = serializers.DateTimeField()


class LatencySerializer(serializers.Serializer):
    overall = PercentilesSerializer()
    channels = ChannelLatencySerializer(many=True)
    series = LatencyPointSerializer(many=True)


class WebhookTotalsSerializer(WebhookMetricsSerializer):
    webhooks = serializers.IntegerField(help_text="Webhooks that made attempts in the range.")


class ChannelWebhooksSerializer(WebhookTotalsSerializer):
    channel = serializers.CharField(help_text="Channel address template.")


class APIWebhooksSerializer(WebhookTotalsSerializer):
    slug = serializers.SlugField()
    name = serializers.CharField()
    provider = serializers.EmailField()


class ProviderWebhooksSerializer(serializers.Serializer):
    totals = WebhookTotalsSerializer()
    channels = ChannelWebhooksSerializer(many=True, help_text="Per channel template, most attempts first.")


class PlatformWebhooksSerializer(serializers.Serializer):
    totals = WebhookTotalsSerializer()
    apis = APIWebhooksSerializer(many=True, help_text="Top 10 APIs by attempts.")


class LiveConnectionSerializer(serializers.Serializer):
    id = serializers.CharField()
    application_id = serializers.IntegerField(allow_null=True)
    application = serializers.CharField()
    version = serializers.CharField()
    channels = serializers.ListField(child=serializers.CharField(), help_text="Channel templates served.")
    protocol = serializers.ChoiceField(choices=["websocket", "sse"])
    since = serializers.DateTimeField(allow_null=True, help_text="When it opened (UTC).")
    events_out = serializers.IntegerField()
    events_in = serializers.IntegerField()
    events = serializers.IntegerField(help_text="events_out + events_in.")
    bytes_out = serializers.IntegerField()
    bytes_in = serializers.IntegerField()
    bytes = serializers.IntegerField(help_text="bytes_out + bytes_in.")
    client_ip = serializers.CharField()
    process = serializers.CharField(help_text="Gateway process (host:pid) holding it.")


class ProcessSerializer(serializers.Serializer):
    process = serializers.CharField(help_text="host:pid")
    started_at = serializers.DateTimeField(allow_null=True)
    seen_at = serializers.DateTimeField(allow_null=True, help_text="Its last snapshot.")
    connections = serializers.IntegerField()
    events_out = serializers.IntegerField(help_text="Since the process started.")
    events_in = serializers.IntegerField()
    events = serializers.IntegerField()
    bytes_out = serializers.IntegerField()
    bytes_in = serializers.IntegerField()
    bytes = serializers.IntegerField()


class APIRefSerializer(serializers.Serializer):
    slug = serializers.SlugField()
    name = serializers.CharField()


class SubscribersSerializer(serializers.Serializer):
    active = serializers.IntegerField(help_text="Active subscriptions now.")
    new = serializers.IntegerField(help_text="Subscriptions created in the range (not rejected ones).")


class ProviderAnalyticsSerializer(serializers.Serializer):
    api = APIRefSerializer()
    range = RangeSerializer()
    subscribers = SubscribersSerializer()
    totals = CountsSerializer()
    series = SeriesPointSerializer(many=True)
    applications = ApplicationUsageSerializer(many=True, help_text="Top 10 by events.")
    channels = ChannelUsageSerializer(many=True)
    handshakes = HandshakesSerializer()
    webhooks = ProviderWebhooksSerializer(help_text="Webhook delivery attempts to the API's subscribers.")
    latency = LatencySerializer()
    connections = LiveConnectionSerializer(
        many=True, help_text="Open now (empty when `live_available` is false)."
    )
    live_available = serializers.BooleanField(
        help_text="False when Redis cannot be reached: the connections open now are unknown, and "
        "`connections` is empty for that reason, not because none is open."
    )


class PlatformCountsSerializer(serializers.Serializer):
    apis = serializers.IntegerField(help_text="APIs listed in the catalog.")
    applications = serializers.IntegerField()
    subscriptions = serializers.IntegerField(help_text="Active subscriptions.")
    new_subscriptions = serializers.IntegerField(help_text="Created in the range.")
    processes = serializers.IntegerField(
        allow_null=True, help_text="Gateway processes alive; null when Redis cannot be reached."
    )
    connections = serializers.IntegerField(
        allow_null=True, help_text="Connections open now; null when Redis cannot be reached."
    )


class PlatformAPIUsageSerializer(CountsSerializer):
    slug = serializers.SlugField()
    name = serializers.CharField()
    provider = serializers.EmailField()


class PlatformAnalyticsSerializer(serializers.Serializer):
    range = RangeSerializer()
    totals = CountsSerializer()
    platform = PlatformCountsSerializer()
    series = SeriesPointSerializer(many=True)
    apis = PlatformAPIUsageSerializer(many=True, help_text="Top 10 by events.")
    applications = PlatformApplicationUsageSerializer(many=True, help_text="Top 10 by events.")
    handshakes = HandshakesSerializer()
    webhooks = PlatformWebhooksSerializer(help_text="Webhook delivery attempts, every API.")
    processes = ProcessSerializer(many=True, help_text="Empty when `live_available` is false.")
    live_available = serializers.BooleanField(
        help_text="False when Redis cannot be reached: the gateway processes and their connections "
        "are unknown (`processes` empty, `platform.processes`/`platform.connections` null)."
    )


class ConnectionsSerializer(serializers.Serializer):
    count = serializers.IntegerField(allow_null=True, help_text="Null when `live_available` is false.")
    connections = LiveConnectionSerializer(many=True)
    live_available = serializers.BooleanField(
        help_text="False when Redis cannot be reached: the connections open now are unknown (not none)."
    )


# --- views --------------------------------------------------------------------------------------

RANGE_PARAMETERS = [
    OpenApiParameter(
        "range",
        str,
        enum=list(PRESETS),
        description="Preset range ending now (default 24h); ignored when `from` or `to` is given.",
    ),
    OpenApiParameter(
        "from", str, description="Start: YYYY-MM-DD (UTC) or an ISO 8601 date-time; replaces `range`."
    ),
    OpenApiParameter(
        "to",
        str,
        description="End: YYYY-MM-DD (inclusive) or an ISO 8601 date-time (exclusive); default now.",
    ),
    OpenApiParameter(
        "step",
        str,
        enum=["minute", "hour", "day"],
        description="Bucket of the series; default: the finest giving at most ~400 points.",
    ),
]
BAD_RANGE = OpenApiResponse(description='A bad range parameter: `{"from": ["..."]}`, by field.')


def date_range_of(request: Request) -> DateRange:
    """The request's range (``DateRangeForm``), or a 400 ``ValidationError`` keyed by the
    query parameter's name (``from``, ``to``, ``range``, ``step``)."""
    form = DateRangeForm(request.query_params)
    if not form.is_valid():
        raise serializers.ValidationError(
            {"from" if field == "from_" else field: messages for field, messages in form.errors.items()}
        )
    return form.date_range


class IsPlatformAdmin(permissions.BasePermission):
    message = "Platform analytics are for platform admins."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user.is_authenticated and request.user.is_staff)


class ProviderAPIAnalyticsView(V1View):
    @extend_schema(
        summary="Analytics of one of your APIs",
        description="Subscribers, usage totals and series, top applications, usage per channel and "
        "direction, errors by kind, handshake outcomes, webhook delivery attempts (totals and per "
        "channel), latency percentiles (seconds) and the connections open now. The API's provider, "
        "or a platform admin; 404 for anyone else.",
        parameters=RANGE_PARAMETERS,
        responses={200: ProviderAnalyticsSerializer, 400: BAD_RANGE},
    )
    def get(self, request: Request, slug: str) -> Response:
        api = get_api_for_analytics(request.user, slug)
        report = provider_report(api, date_range_of(request))
        return Response(ProviderAnalyticsSerializer(report).data)


class ProviderAPIConnectionsView(V1View):
    @extend_schema(
        summary="Connections to one of your APIs open now",
        description="Across every gateway process, newest first (each process reports every few "
        "seconds); `live_available` false (and `count` null) when Redis cannot be reached. The API's "
        "provider, or a platform admin; 404 for anyone else.",
        responses={200: ConnectionsSerializer},
    )
    def get(self, request: Request, slug: str) -> Response:
        api = get_api_for_analytics(request.user, slug)
        try:
            connections = live_connections(api)
        except LiveUnavailable:
            data: dict[str, Any] = {"count": None, "connections": [], "live_available": False}
        else:
            data = {"count": len(connections), "connections": connections, "live_available": True}
        return Response(ConnectionsSerializer(data).data)


class PlatformAnalyticsView(V1View):
    permission_classes = [IsPlatformAdmin]

    @extend_schema(
        summary="Platform analytics (admins)",
        description="Totals over every API, usage series, the busiest APIs and applications with "
        "error rates, handshake outcomes, webhook delivery attempts (totals and the busiest APIs) "
        "and the gateway processes alive.",
        parameters=RANGE_PARAMETERS,
        responses={200: PlatformAnalyticsSerializer, 400: BAD_RANGE},
    )
    def get(self, request: Request) -> Response:
        return Response(PlatformAnalyticsSerializer(platform_report(date_range_of(request))).data)
