"""The catalog, for anyone: the API root, searching APIs, an API and its versions, and the
consumer-facing AsyncAPI document of a version."""

from __future__ import annotations

import re
from typing import Any

from django.db.models import Prefetch
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, permissions
from rest_framework.authentication import SessionAuthentication
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.api.common import (
    PAGINATION_PARAMETERS,
    LinkHeaderPagination,
    V1View,
    api_detail,
    get_api_for_user,
    get_version_of,
    version_in_full,
    visible_versions,
)
from portal.authentication import RateLimitedBasicAuthentication
from portal.consumer_document import consumer_document, document_dump
from portal.models import APIVersion, BusinessPlan
from portal.serializers import (
    APIDetailSerializer,
    APIListSerializer,
    APIVersionSerializer,
    APIVersionSummarySerializer,
    CatalogQuerySerializer,
)
from portal.services.catalog import api_search


class APIRootView(APIView):
    """Links to the v1 resources, the OpenAPI schema and the interactive docs."""

    authentication_classes = [RateLimitedBasicAuthentication, SessionAuthentication]
    permission_classes = [permissions.AllowAny]

    @extend_schema(
        responses={200: OpenApiResponse(description="Links to the v1 resources.")}, operation_id="api_root"
    )
    def get(self, request: Request) -> Response:
        def link(name: str) -> str:
            return request.build_absolute_uri(reverse(name))

        return Response(
            {
                "apis": link("api:api_list"),
                "api_import": link("api:api_import"),
                "provider_apis": link("api:provider_api_list"),
                "plan_templates": link("api:plan_template_list"),
                "approvals": link("api:approval_list"),
                "applications": link("api:application_list"),
                "subscriptions": link("api:subscription_list"),
                "webhooks": link("api:webhook_list"),
                "usage": link("api:usage:list"),
                "invoices": link("api:billing_invoices"),
                "billing_estimate": link("api:billing_estimate"),
                "revenue": link("api:billing_revenue"),
                "platform_analytics": link("api:analytics_api_urls_provider:platform"),
                "schema": link("schema"),
                "docs": link("api-docs"),
            }
        )


class APIListView(V1View):
    permission_classes = [permissions.AllowAny]

    @extend_schema(
        parameters=[CatalogQuerySerializer, *PAGINATION_PARAMETERS],
        responses=APIListSerializer(many=True),
        summary="Search the catalog",
        description="Published, deprecated and blocked APIs, filtered by the parameters (combined with "
        "AND), one page at a time (see the `Link` and `X-Total-Count` headers).",
    )
    def get(self, request: Request) -> Response:
        query = CatalogQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        criteria = dict(query.validated_data)
        apis = api_search(text=criteria.pop("q"), **criteria).prefetch_related(
            Prefetch(
                "versions",
                APIVersion.objects.filter(status__in=APIVersion.LIVE_STATUSES).order_by("-created"),
                to_attr="live_versions",
            ),
            Prefetch("plans", BusinessPlan.objects.filter(is_approved=True), to_attr="approved_plans"),
            "provider",
        )
        paginator = LinkHeaderPagination()
        page = paginator.paginate_queryset(apis, request, view=self)
        return paginator.get_paginated_response(APIListSerializer(page, many=True).data)


class APIDetailView(V1View):
    permission_classes = [permissions.AllowAny]

    @extend_schema(
        responses=APIDetailSerializer,
        summary="An API: lifecycle state, versions, the latest version's channels, plans",
        description="Listed APIs for everyone; a provider also sees their own drafts and retired APIs, "
        "with every version and every plan (with its approval).",
    )
    def get(self, request: Request, slug: str) -> Response:
        return Response(api_detail(request.user, get_api_for_user(request.user, slug, access="read")))


class APIVersionListView(V1View):
    permission_classes = [permissions.AllowAny]

    @extend_schema(
        responses=APIVersionSummarySerializer(many=True), summary="Versions of an API, newest first"
    )
    def get(self, request: Request, slug: str) -> Response:
        api = get_api_for_user(request.user, slug, access="read")
        return Response(APIVersionSummarySerializer(visible_versions(request.user, api), many=True).data)


class APIVersionDetailView(V1View):
    permission_classes = [permissions.AllowAny]

    @extend_schema(
        responses=APIVersionSerializer, summary="A version: servers, security schemes, channels, operations"
    )
    def get(self, request: Request, slug: str, version: str) -> Response:
        api = get_api_for_user(request.user, slug, access="read")
        api_version = get_version_of(visible_versions(request.user, api), version)
        return Response(APIVersionSerializer(version_in_full(api_version)).data)


class DocumentRenderer(BaseRenderer):
    """Renders a document (or an error body) with ``portal.consumer_document.document_dump``."""

    charset = "utf-8"

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        return document_dump(data, fmt=self.format).encode()


class JSONDocumentRenderer(DocumentRenderer):
    media_type = "application/json"
    format = "json"


class YAMLDocumentRenderer(DocumentRenderer):
    media_type = "application/yaml"
    format = "yaml"


class FormatNegotiation(DefaultContentNegotiation):
    """``?format=`` outside the offered ones is a 400 naming them (DRF would answer 404)."""

    def select_renderer(
        self, request: Request, renderers: list[BaseRenderer], format_suffix: str | None = None
    ) -> Any:
        wanted = format_suffix or request.query_params.get(self.settings.URL_FORMAT_OVERRIDE)
        offered = [renderer.format for renderer in renderers]
        if wanted and wanted not in offered:
            raise exceptions.ValidationError({"format": [f"Choose one of: {', '.join(offered)}."]})
        return super().select_renderer(request, renderers, format_suffix)


class ConsumerDocumentView(V1View):
    """The consumer-facing AsyncAPI document of a version (``portal.consumer_document``)."""

    permission_classes = [permissions.AllowAny]
    renderer_classes = [JSONDocumentRenderer, YAMLDocumentRenderer]
    content_negotiation_class = FormatNegotiation

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "format",
                str,
                enum=["json", "yaml"],
                description="Default json (or as the Accept header asks).",
            )
        ],
        responses={
            (200, "application/json"): OpenApiTypes.OBJECT,
            (200, "application/yaml"): OpenApiTypes.STR,
        },
        summary="Download the AsyncAPI document to connect through this gateway",
        description="The version's AsyncAPI document with its servers replaced by this gateway's WebSocket "
        "and SSE URLs and its security schemes by the ones the gateway accepts (an API key).",
    )
    def get(self, request: Request, slug: str, version: str) -> Response:
        api = get_api_for_user(request.user, slug, access="read")
        api_version = get_version_of(visible_versions(request.user, api), version)
        document = consumer_document(api_version=api_version, base_url=request.build_absolute_uri("/"))
        fmt = request.accepted_renderer.format
        filename = re.sub(r"[^A-Za-z0-9._-]", "_", f"{api.slug}-{api_version.version}.asyncapi.{fmt}")
        return Response(document, headers={"Content-Disposition": f'attachment; filename="{filename}"'})
