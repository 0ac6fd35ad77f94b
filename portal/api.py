"""REST API v1: everything a person can do in the portal, over HTTP.

The catalog and its documents (anyone); AsyncAPI import, publishing, lifecycle, sources and
business plans (providers, for their own APIs); the approval queue (admins); applications,
subscriptions and API keys (every signed-in user, for their own). One small view per operation
with explicit serializers (portal/serializers.py); the work is done by ``portal.services``.

Clients authenticate with the portal session (browser, CSRF token required for writes) or HTTP
Basic with email and password (``curl -u email:password``). Another user's application, key or
subscription, or an API you may not manage, answers 404 as if it did not exist. A service's
``ValidationError`` answers 400 with field errors, its ``PermissionDenied`` 403 with its message.
See docs/rest-api.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Prefetch, QuerySet
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, permissions, serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from portal.asyncapi import MAX_DOCUMENT_BYTES, AsyncAPIError, DocumentTooLargeError, check_document_size
from portal.authentication import RateLimitedBasicAuthentication
from portal.consumer_document import consumer_document, document_dump
from portal.models import (
    API,
    APIKey,
    APILifecycleEvent,
    APIVersion,
    Application,
    BusinessPlan,
    Channel,
    Operation,
    Subscription,
    User,
)
from portal.plans import PLAN_TEMPLATES
from portal.serializers import (
    APIDetailSerializer,
    APIImportErrorSerializer,
    APIImportTextSerializer,
    APIImportUploadSerializer,
    APIKeyCreatedSerializer,
    APIKeyCreateSerializer,
    APIKeySerializer,
    APIListSerializer,
    APIVersionSerializer,
    APIVersionSummarySerializer,
    ApplicationDetailSerializer,
    ApplicationSerializer,
    ApplicationUpdateSerializer,
    ApprovalQueueSerializer,
    BusinessPlanOwnerSerializer,
    BusinessPlanSerializer,
    CatalogQuerySerializer,
    DecisionSerializer,
    LifecycleEventSerializer,
    LifecycleTransitionSerializer,
    PlanCreateSerializer,
    PlanTemplateSerializer,
    ProviderAPISerializer,
    RejectionSerializer,
    SubscriptionCreateSerializer,
    SubscriptionSerializer,
)
from portal.services.apis import api_import, api_publish
from portal.services.catalog import api_search
from portal.services.lifecycle import api_transition, api_version_transition
from portal.services.subscriptions import (
    api_key_create,
    api_key_revoke,
    application_create,
    application_delete,
    application_update,
    plan_approve,
    plan_create,
    plan_reject,
    subscription_approve,
    subscription_cancel,
    subscription_create,
    subscription_reject,
)


class V1View(APIView):
    """Base of the v1 views: HTTP Basic (email + password) or session authentication.

    Basic comes first so an unauthenticated request gets 401 with ``WWW-Authenticate``; failed
    passwords count against the same rate limit as the sign-in page (``portal.authentication``).
    """

    authentication_classes = [RateLimitedBasicAuthentication, SessionAuthentication]
    permission_classes = [permissions.IsAuthenticated]


class IsProvider(permissions.BasePermission):
    message = "Only providers can import APIs."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user.is_authenticated and request.user.is_provider)


class IsStaff(permissions.BasePermission):
    message = "Only platform admins approve or reject plans and subscriptions."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user.is_authenticated and request.user.is_staff)


@contextmanager
def service_errors(field_map: Mapping[str, str] | None = None) -> Iterator[None]:
    """Answer a service's refusal as the client's fault, never a 500.

    Django's ``ValidationError`` becomes 400 with field errors (service field names renamed by
    ``field_map`` to the request's; a message without a field is ``non_field_errors``), and
    Django's ``PermissionDenied`` becomes 403 with the service's message.
    """
    try:
        yield
    except DjangoValidationError as error:
        if hasattr(error, "error_dict"):
            renamed = {
                (field_map or {}).get(name, name): messages for name, messages in error.message_dict.items()
            }
            raise serializers.ValidationError(renamed) from None
        raise serializers.ValidationError({"non_field_errors": error.messages}) from None
    except DjangoPermissionDenied as error:
        raise exceptions.PermissionDenied(str(error) or None) from None


class LinkHeaderPagination(PageNumberPagination):
    """Pages of ``page_size`` (default 20, at most 100) items chosen by ``page`` (1-based).

    The body stays a plain JSON array, as before pagination, so existing clients keep working;
    the links to the other pages are in the ``Link`` header (RFC 8288 relations ``first``,
    ``prev``, ``next``, ``last``, as GitHub's REST API does) and the number of items in
    ``X-Total-Count``. A page past the last answers 404.
    """

    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100

    def get_paginated_response(self, data: Any) -> Response:
        assert self.page is not None and self.request is not None
        url = self.request.build_absolute_uri()
        last = self.page.paginator.num_pages
        links = {
            "first": replace_page(url, 1),
            "prev": self.get_previous_link() and replace_page(url, self.page.number - 1),
            "next": self.get_next_link(),
            "last": replace_page(url, last),
        }
        link = ", ".join(f'<{target}>; rel="{rel}"' for rel, target in links.items() if target)
        return Response(data, headers={"Link": link, "X-Total-Count": str(self.page.paginator.count)})


def replace_page(url: str, number: int) -> str:
    """``url`` with its ``page`` query parameter set to ``number``."""
    return replace_query_param(url, "page", number)


PAGINATION_PARAMETERS = [
    OpenApiParameter("page", int, description="1-based page number (default 1)."),
    OpenApiParameter("page_size", int, description="Items per page: default 20, at most 100."),
    OpenApiParameter(
        "Link",
        str,
        location=OpenApiParameter.HEADER,
        response=True,
        description='RFC 8288 links to the other pages: rel="first", "prev", "next", "last".',
    ),
    OpenApiParameter(
        "X-Total-Count",
        int,
        location=OpenApiParameter.HEADER,
        response=True,
        description="Items on all pages.",
    ),
]


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
                "schema": link("schema"),
                "docs": link("api-docs"),
            }
        )


# --- access helpers: the object or 404 ---------------------------------------------------------


def _channels_prefetch() -> Prefetch:
    return Prefetch(
        "channels", queryset=Channel.objects.prefetch_related(Prefetch("operations", Operation.objects.all()))
    )


def _can_manage(user: User, api: API) -> bool:
    """Whether ``user`` sees everything of ``api``: its provider, or a platform admin."""
    return bool(user.is_authenticated and (user.is_staff or api.provider_id == user.pk))


def _get_api_for_reader(user: User, slug: str) -> API:
    """An API the catalog lists, or one ``user`` manages (their own drafts; any for admins), or 404."""
    api = API.objects.filter(slug=slug).select_related("provider").first()
    if api is None or not (_can_manage(user, api) or API.objects.listed().filter(pk=api.pk).exists()):
        raise Http404("No such API.")
    return api


def _get_api_for_manager(user: User, slug: str) -> API:
    """An API ``user`` provides (any state), or any API for an admin; 404 for everyone else."""
    api = API.objects.filter(slug=slug).select_related("provider").first()
    if api is None or not _can_manage(user, api):
        raise Http404("No such API.")
    return api


def _get_api_for_owner(user: User, slug: str) -> API:
    """The API ``user`` provides (any state), or 404 — also for admins (only providers write it)."""
    return get_object_or_404(API, slug=slug, provider=user)


def _visible_versions(user: User, api: API) -> QuerySet[APIVersion]:
    """Every version for those who manage ``api``; published and deprecated ones for others."""
    versions = api.versions.order_by("-created")
    return versions if _can_manage(user, api) else versions.filter(status__in=APIVersion.LIVE_STATUSES)


def _get_version_of(versions: QuerySet[APIVersion], version: str) -> APIVersion:
    """Version ``version`` among ``versions``, or 404.

    ``version`` is a ``<str:>`` URL segment, so it may hold NUL, which PostgreSQL cannot compare
    (DataError); no stored version holds control characters (the importer refuses them).
    """
    if "\x00" in version:
        raise Http404("No such version.")
    return get_object_or_404(versions, version=version)


def _get_application_for_user(user: User, pk: int) -> Application:
    return get_object_or_404(Application, pk=pk, owner=user)


def _get_subscription_for_user(user: User, pk: int) -> Subscription:
    return get_object_or_404(
        Subscription.objects.select_related("api", "plan", "application"), pk=pk, application__owner=user
    )


def _get_key_for_user(user: User, application_pk: int, key_pk: int) -> APIKey:
    return get_object_or_404(APIKey, pk=key_pk, application_id=application_pk, application__owner=user)


def _get_plan_for_staff(pk: int) -> BusinessPlan:
    return get_object_or_404(BusinessPlan.objects.select_related("api"), pk=pk)


def _get_subscription_for_staff(pk: int) -> Subscription:
    return get_object_or_404(Subscription.objects.select_related("api", "plan", "application"), pk=pk)


def _version_in_full(api_version: APIVersion) -> APIVersion:
    return APIVersion.objects.prefetch_related(_channels_prefetch()).get(pk=api_version.pk)


# --- catalog -----------------------------------------------------------------------------------


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
        return Response(_api_detail(request.user, _get_api_for_reader(request.user, slug)))


def _api_detail(user: User, api: API) -> dict[str, Any]:
    """``APIDetailSerializer`` data of ``api`` as ``user`` may see it."""
    versions = list(_visible_versions(user, api))
    live = [version for version in versions if version.status in APIVersion.LIVE_STATUSES]
    newest = (live or versions or [None])[0]
    api.latest = _version_in_full(newest) if newest else None  # type: ignore[attr-defined]
    api.visible_versions = versions  # type: ignore[attr-defined]
    api.visible_plans = list(  # type: ignore[attr-defined]
        api.plans.all() if _can_manage(user, api) else api.plans.filter(is_approved=True)
    )
    return APIDetailSerializer(api).data


class APIVersionListView(V1View):
    permission_classes = [permissions.AllowAny]

    @extend_schema(
        responses=APIVersionSummarySerializer(many=True), summary="Versions of an API, newest first"
    )
    def get(self, request: Request, slug: str) -> Response:
        api = _get_api_for_reader(request.user, slug)
        return Response(APIVersionSummarySerializer(_visible_versions(request.user, api), many=True).data)


class APIVersionDetailView(V1View):
    permission_classes = [permissions.AllowAny]

    @extend_schema(
        responses=APIVersionSerializer, summary="A version: servers, security schemes, channels, operations"
    )
    def get(self, request: Request, slug: str, version: str) -> Response:
        api = _get_api_for_reader(request.user, slug)
        api_version = _get_version_of(_visible_versions(request.user, api), version)
        return Response(APIVersionSerializer(_version_in_full(api_version)).data)


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
        api = _get_api_for_reader(request.user, slug)
        api_version = _get_version_of(_visible_versions(request.user, api), version)
        document = consumer_document(api_version=api_version, base_url=request.build_absolute_uri("/"))
        fmt = request.accepted_renderer.format
        filename = re.sub(r"[^A-Za-z0-9._-]", "_", f"{api.slug}-{api_version.version}.asyncapi.{fmt}")
        return Response(document, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


# --- provider: own APIs, import, publishing, lifecycle, sources -------------------------------------


class ProviderAPIListView(V1View):
    permission_classes = [IsProvider]

    @extend_schema(responses=ProviderAPISerializer(many=True), summary="Your APIs, in any lifecycle state")
    def get(self, request: Request) -> Response:
        apis = API.objects.filter(provider=request.user).prefetch_related(
            Prefetch("versions", APIVersion.objects.order_by("-created"), to_attr="all_versions"),
            Prefetch("plans", BusinessPlan.objects.select_related("api"), to_attr="all_plans"),
        )
        return Response(ProviderAPISerializer(apis, many=True).data)


class APIImportView(V1View):
    """Import an AsyncAPI 2.0–2.6, 3.0 or 3.1 document (YAML, JSON or a .zip of several files)
    as a draft API or a new version of one of yours.

    Every refusal answers ``{"error", "pointer", "line", "file"}``: 400 for a bad document, 413
    for one over ``MAX_DOCUMENT_BYTES`` or a request body over Django's
    ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (which would otherwise be Django's HTML 400 page).
    """

    permission_classes = [IsProvider]
    parser_classes = [MultiPartParser, FormParser, JSONParser]

    @extend_schema(
        summary="Import an AsyncAPI document",
        request={
            "multipart/form-data": APIImportUploadSerializer,
            "application/json": APIImportTextSerializer,
        },
        responses={
            201: APIVersionSerializer,
            400: OpenApiResponse(
                APIImportErrorSerializer, description="The document was refused; nothing was stored."
            ),
            413: OpenApiResponse(
                APIImportErrorSerializer,
                description=f"The document is over {MAX_DOCUMENT_BYTES // (1024 * 1024)} MB, or the request "
                "body over the server's limit; nothing was stored.",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        if request.content_type.startswith("application/json"):
            text = APIImportTextSerializer(data=request.data)
            text.is_valid(raise_exception=True)
            content: bytes | str = text.validated_data["content"]
            filename, slug = text.validated_data["filename"], text.validated_data.get("api")
        else:
            upload = APIImportUploadSerializer(data=request.data)
            upload.is_valid(raise_exception=True)
            file = upload.validated_data["file"]
            filename, slug = file.name, upload.validated_data.get("api")
            try:
                check_document_size(file.size)  # before reading a huge upload into memory
            except AsyncAPIError as error:
                error.filename = filename
                return _import_error(error)
            content = file.read()
        api = _get_api_for_owner(request.user, slug) if slug else None
        try:
            version = api_import(provider=request.user, content=content, filename=filename, api=api)
        except AsyncAPIError as error:
            return _import_error(error)
        version = _version_in_full(version)
        return Response(APIVersionSerializer(version).data, status=status.HTTP_201_CREATED)

    def handle_exception(self, exc: Exception) -> Response:
        # Django raises this while reading a body over DATA_UPLOAD_MAX_MEMORY_SIZE (JSON or form
        # fields; files do not count), from request.data or the session's CSRF check.
        if isinstance(exc, RequestDataTooBig):
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0
            return _import_error(
                DocumentTooLargeError(
                    f"the request body is larger than the {limit / (1024 * 1024):g} MB this server reads; "
                    f"documents may be up to {MAX_DOCUMENT_BYTES // (1024 * 1024)} MB, so upload a large one "
                    "as a multipart file"
                )
            )
        return super().handle_exception(exc)


def _import_error(error: AsyncAPIError) -> Response:
    too_large = isinstance(error, DocumentTooLargeError)
    return Response(
        APIImportErrorSerializer(error.as_dict()).data,
        status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE if too_large else status.HTTP_400_BAD_REQUEST,
    )


class APIVersionPublishView(V1View):
    @extend_schema(
        request=None,
        responses=APIVersionSerializer,
        summary="Publish a version of your API",
        description="Publishes the version, and the API if it is a draft; both moves are recorded in its "
        "lifecycle history.",
    )
    def post(self, request: Request, slug: str, version: str) -> Response:
        api = _get_api_for_owner(request.user, slug)
        api_version = _get_version_of(api.versions.all(), version)
        with service_errors():
            api_publish(api_version=api_version, actor=request.user)
        return Response(APIVersionSerializer(_version_in_full(api_version)).data)


class APILifecycleView(V1View):
    @extend_schema(
        responses=LifecycleEventSerializer(many=True),
        summary="Lifecycle history of an API and its versions, newest first",
    )
    def get(self, request: Request, slug: str) -> Response:
        api = _get_api_for_manager(request.user, slug)
        events = APILifecycleEvent.objects.filter(api=api).select_related("api_version", "actor")
        return Response(LifecycleEventSerializer(events, many=True).data)

    @extend_schema(
        request=LifecycleTransitionSerializer,
        responses={200: APIDetailSerializer},
        summary="Move an API through its lifecycle",
        description="States: draft → published → deprecated (no new subscriptions) / blocked (connections "
        "refused and closed) → retired (final). A move the lifecycle does not allow answers 400 naming "
        "the allowed ones. The provider or an admin; only an admin lifts an admin's block.",
    )
    def post(self, request: Request, slug: str) -> Response:
        api = _get_api_for_manager(request.user, slug)
        move = LifecycleTransitionSerializer(data=request.data)
        move.is_valid(raise_exception=True)
        with service_errors({"to_status": "status"}):
            api = api_transition(
                api=api,
                to_status=move.validated_data["status"],
                actor=request.user,
                reason=move.validated_data["reason"],
            )
        return Response(_api_detail(request.user, api))


class APIVersionLifecycleView(V1View):
    @extend_schema(
        request=LifecycleTransitionSerializer,
        responses={200: APIVersionSerializer},
        summary="Move a version through its lifecycle",
        description="States: draft → published ⇄ deprecated → retired (final; its live connections are "
        "closed). A move the lifecycle does not allow answers 400 naming the allowed ones.",
    )
    def post(self, request: Request, slug: str, version: str) -> Response:
        api = _get_api_for_manager(request.user, slug)
        api_version = _get_version_of(api.versions.all(), version)
        move = LifecycleTransitionSerializer(data=request.data)
        move.is_valid(raise_exception=True)
        with service_errors({"to_status": "status"}):
            api_version_transition(
                api_version=api_version,
                to_status=move.validated_data["status"],
                actor=request.user,
                reason=move.validated_data["reason"],
            )
        return Response(APIVersionSerializer(_version_in_full(api_version)).data)


SOURCE_TYPES = {".json": "application/json", ".yaml": "application/yaml", ".yml": "application/yaml"}


class APIVersionSourceView(V1View):
    @extend_schema(
        parameters=[
            OpenApiParameter(
                "file", str, description="Path of another file of a .zip upload (default: the root)."
            )
        ],
        responses={(200, "text/plain"): OpenApiTypes.STR},
        summary="The document as you uploaded it (provider and admins)",
        description="Byte-for-byte text of the uploaded root document, or with `file` one of the other "
        "files of a multi-file (.zip) upload; the `X-Source-Files` header lists those.",
    )
    def get(self, request: Request, slug: str, version: str) -> HttpResponse:
        api = _get_api_for_manager(request.user, slug)
        api_version = _get_version_of(api.versions.all(), version)
        path = request.query_params.get("file") or ""
        if path:
            text = (api_version.source_files or {}).get(path)
            if not isinstance(text, str):
                raise Http404(f"The upload of {api.name} {api_version.version} has no file “{path}”.")
        else:
            text, path = api_version.source, api_version.source_filename or "asyncapi.yaml"
        suffix = path[path.rfind(".") :].lower() if "." in path else ""
        response = HttpResponse(text, content_type=f"{SOURCE_TYPES.get(suffix, 'text/plain')}; charset=utf-8")
        name = re.sub(r"[^A-Za-z0-9._-]", "_", path.rsplit("/", 1)[-1]) or "asyncapi.yaml"
        response["Content-Disposition"] = f'inline; filename="{name}"'
        response["X-Source-Files"] = ", ".join(sorted(api_version.source_files or {}))
        return response


# --- business plans ----------------------------------------------------------------------------------


class APIPlanListView(V1View):
    permission_classes = [permissions.IsAuthenticatedOrReadOnly]

    @extend_schema(
        responses=BusinessPlanOwnerSerializer(many=True),
        summary="Plans of an API",
        description="Approved plans for everyone; for its provider (and admins) every plan with where its "
        "approval stands (`approval_status`, `decision_reason`).",
    )
    def get(self, request: Request, slug: str) -> Response:
        api = _get_api_for_reader(request.user, slug)
        if _can_manage(request.user, api):
            return Response(BusinessPlanOwnerSerializer(api.plans.select_related("api"), many=True).data)
        return Response(BusinessPlanSerializer(api.plans.filter(is_approved=True), many=True).data)

    @extend_schema(
        request=PlanCreateSerializer,
        responses={201: BusinessPlanOwnerSerializer},
        summary="Add a business plan to your API",
        description="The plan awaits an admin's approval before consumers can pick it. Prices in minor "
        "units (cents); limits in events or bytes, null for unlimited; `template` starts from a template.",
    )
    def post(self, request: Request, slug: str) -> Response:
        api = _get_api_for_owner(request.user, slug)
        serializer = PlanCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        with service_errors():
            plan = plan_create(api=api, **serializer.plan_fields())
        return Response(BusinessPlanOwnerSerializer(plan).data, status=status.HTTP_201_CREATED)


class PlanTemplateListView(V1View):
    permission_classes = [permissions.AllowAny]

    @extend_schema(responses=PlanTemplateSerializer(many=True), summary="Plan templates to start a plan from")
    def get(self, request: Request) -> Response:
        return Response(PlanTemplateSerializer(PLAN_TEMPLATES, many=True).data)


# --- approvals (admins) ------------------------------------------------------------------------------


class ApprovalListView(V1View):
    permission_classes = [IsStaff]

    @extend_schema(responses=ApprovalQueueSerializer, summary="Plans and subscriptions awaiting an admin")
    def get(self, request: Request) -> Response:
        plans = (
            BusinessPlan.objects.filter(is_approved=False, rejected_at__isnull=True)
            .select_related("api__provider")
            .order_by("api__name", "name")
        )
        subscriptions = (
            Subscription.objects.pending()
            .select_related("application__owner", "api", "plan")
            .order_by("created")
        )
        return Response(ApprovalQueueSerializer({"plans": plans, "subscriptions": subscriptions}).data)


class PlanApproveView(V1View):
    permission_classes = [IsStaff]

    @extend_schema(
        request=DecisionSerializer, responses=BusinessPlanOwnerSerializer, summary="Offer a plan to consumers"
    )
    def post(self, request: Request, pk: int) -> Response:
        plan = _get_plan_for_staff(pk)
        decision = DecisionSerializer(data=request.data)
        decision.is_valid(raise_exception=True)
        with service_errors():
            plan = plan_approve(plan=plan, approver=request.user, reason=decision.validated_data["reason"])
        return Response(BusinessPlanOwnerSerializer(plan).data)


class PlanRejectView(V1View):
    permission_classes = [IsStaff]

    @extend_schema(
        request=RejectionSerializer,
        responses=BusinessPlanOwnerSerializer,
        summary="Refuse a plan, with a reason the provider sees",
    )
    def post(self, request: Request, pk: int) -> Response:
        plan = _get_plan_for_staff(pk)
        decision = RejectionSerializer(data=request.data)
        decision.is_valid(raise_exception=True)
        with service_errors():
            plan = plan_reject(plan=plan, approver=request.user, reason=decision.validated_data["reason"])
        return Response(BusinessPlanOwnerSerializer(plan).data)


class SubscriptionApproveView(V1View):
    permission_classes = [IsStaff]

    @extend_schema(
        request=DecisionSerializer, responses=SubscriptionSerializer, summary="Allow a pending subscription"
    )
    def post(self, request: Request, pk: int) -> Response:
        subscription = _get_subscription_for_staff(pk)
        decision = DecisionSerializer(data=request.data)
        decision.is_valid(raise_exception=True)
        with service_errors():
            subscription = subscription_approve(
                subscription=subscription, approver=request.user, reason=decision.validated_data["reason"]
            )
        return Response(SubscriptionSerializer(subscription).data)


class SubscriptionRejectView(V1View):
    permission_classes = [IsStaff]

    @extend_schema(
        request=RejectionSerializer,
        responses=SubscriptionSerializer,
        summary="Refuse a pending subscription, with a reason the consumer sees",
    )
    def post(self, request: Request, pk: int) -> Response:
        subscription = _get_subscription_for_staff(pk)
        decision = RejectionSerializer(data=request.data)
        decision.is_valid(raise_exception=True)
        with service_errors():
            subscription = subscription_reject(
                subscription=subscription, approver=request.user, reason=decision.validated_data["reason"]
            )
        return Response(SubscriptionSerializer(subscription).data)


# --- applications, subscriptions, keys ---------------------------------------------------------


class ApplicationListView(V1View):
    @extend_schema(responses=ApplicationSerializer(many=True), summary="Your applications")
    def get(self, request: Request) -> Response:
        applications = Application.objects.filter(owner=request.user)
        return Response(ApplicationSerializer(applications, many=True).data)

    @extend_schema(
        request=ApplicationSerializer, responses={201: ApplicationSerializer}, summary="Create an application"
    )
    def post(self, request: Request) -> Response:
        serializer = ApplicationSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        with service_errors():
            application = application_create(owner=request.user, **serializer.validated_data)
        return Response(ApplicationSerializer(application).data, status=status.HTTP_201_CREATED)


class ApplicationDetailView(V1View):
    @extend_schema(responses=ApplicationDetailSerializer, summary="One of your applications")
    def get(self, request: Request, pk: int) -> Response:
        application = _get_application_for_user(request.user, pk)
        return Response(ApplicationDetailSerializer(application).data)

    @extend_schema(
        request=ApplicationUpdateSerializer,
        responses=ApplicationSerializer,
        summary="Rename or describe an application",
    )
    def patch(self, request: Request, pk: int) -> Response:
        application = _get_application_for_user(request.user, pk)
        serializer = ApplicationUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        changes = serializer.validated_data
        with service_errors():
            application = application_update(
                application=application,
                name=changes.get("name", application.name),
                description=changes.get("description", application.description),
            )
        return Response(ApplicationSerializer(application).data)

    @extend_schema(
        request=None,
        responses={204: None},
        summary="Delete an application",
        description="Refused (400) while it has pending or active subscriptions: cancel them first.",
    )
    def delete(self, request: Request, pk: int) -> Response:
        application = _get_application_for_user(request.user, pk)
        with service_errors():
            application_delete(application=application)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApplicationSubscriptionCreateView(V1View):
    @extend_schema(
        responses=SubscriptionSerializer(many=True), summary="Subscriptions of one of your applications"
    )
    def get(self, request: Request, pk: int) -> Response:
        application = _get_application_for_user(request.user, pk)
        subscriptions = application.subscriptions.select_related("api", "plan")
        return Response(SubscriptionSerializer(subscriptions, many=True).data)

    @extend_schema(
        request=SubscriptionCreateSerializer,
        responses={201: SubscriptionSerializer},
        summary="Subscribe an application to an API under a plan",
        description="Active at once, or pending until an admin approves when the plan requires approval. "
        "Deprecated, blocked and retired APIs take no new subscriptions (400).",
    )
    def post(self, request: Request, pk: int) -> Response:
        application = _get_application_for_user(request.user, pk)
        serializer = SubscriptionCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        with service_errors():
            subscription = subscription_create(
                application=application, plan=serializer.validated_data["plan"]
            )
        return Response(SubscriptionSerializer(subscription).data, status=status.HTTP_201_CREATED)


class SubscriptionListView(V1View):
    @extend_schema(responses=SubscriptionSerializer(many=True), summary="Subscriptions of your applications")
    def get(self, request: Request) -> Response:
        subscriptions = Subscription.objects.filter(application__owner=request.user).select_related(
            "api", "plan"
        )
        return Response(SubscriptionSerializer(subscriptions, many=True).data)


def _cancel(request: Request, pk: int) -> Response:
    subscription = _get_subscription_for_user(request.user, pk)
    with service_errors():
        subscription = subscription_cancel(subscription=subscription, actor=request.user)
    return Response(SubscriptionSerializer(subscription).data)


CANCEL_DESCRIPTION = (
    "Ends a pending or active subscription; the gateway closes its live connections. "
    "The application can subscribe to the API again later."
)


class SubscriptionDetailView(V1View):
    @extend_schema(responses=SubscriptionSerializer, summary="A subscription of one of your applications")
    def get(self, request: Request, pk: int) -> Response:
        return Response(SubscriptionSerializer(_get_subscription_for_user(request.user, pk)).data)

    @extend_schema(
        request=None,
        responses=SubscriptionSerializer,
        summary="Cancel a subscription",
        description=CANCEL_DESCRIPTION,
    )
    def delete(self, request: Request, pk: int) -> Response:
        return _cancel(request, pk)


class SubscriptionCancelView(V1View):
    @extend_schema(
        request=None,
        responses=SubscriptionSerializer,
        summary="Cancel a subscription",
        description=CANCEL_DESCRIPTION,
    )
    def post(self, request: Request, pk: int) -> Response:
        return _cancel(request, pk)


class ApplicationKeyCreateView(V1View):
    @extend_schema(
        responses=APIKeySerializer(many=True),
        summary="API keys of one of your applications",
        description="Prefixes only: the secret was shown once, when the key was generated.",
    )
    def get(self, request: Request, pk: int) -> Response:
        application = _get_application_for_user(request.user, pk)
        return Response(APIKeySerializer(application.api_keys.all(), many=True).data)

    @extend_schema(
        request=APIKeyCreateSerializer,
        responses={201: APIKeyCreatedSerializer},
        summary="Generate an API key",
        description="The response's `key` is the secret; it is shown this once and never stored.",
    )
    def post(self, request: Request, pk: int) -> Response:
        application = _get_application_for_user(request.user, pk)
        serializer = APIKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key, secret = api_key_create(application=application, name=serializer.validated_data["name"])
        key.key = secret  # type: ignore[attr-defined]
        return Response(APIKeyCreatedSerializer(key).data, status=status.HTTP_201_CREATED)


class ApplicationKeyRevokeView(V1View):
    @extend_schema(
        request=None,
        responses=APIKeySerializer,
        summary="Revoke an API key",
        description="Handshakes with the key are refused from now on and its open connections are closed "
        "(close code 4401). Revoking twice keeps the first time.",
    )
    def post(self, request: Request, pk: int, key_id: int) -> Response:
        key = api_key_revoke(key=_get_key_for_user(request.user, pk, key_id))
        return Response(APIKeySerializer(key).data)
