"""Providers, for their own APIs: listing them, AsyncAPI import, publishing, the lifecycle of
an API and its versions, the uploaded sources, and business plans."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db.models import Prefetch
from django.http import Http404, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import permissions, serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from portal.api.common import (
    IsProvider,
    V1View,
    api_detail,
    get_api_for_user,
    get_version_of,
    manages,
    service_errors,
    version_in_full,
)
from portal.asyncapi import MAX_DOCUMENT_BYTES, AsyncAPIError, DocumentTooLargeError, check_document_size
from portal.models import API, APILifecycleEvent, APIVersion, BusinessPlan
from portal.plans import PLAN_TEMPLATES
from portal.serializers import (
    APIDetailSerializer,
    APIImportErrorSerializer,
    APIImportTextSerializer,
    APIImportUploadSerializer,
    APIVersionSerializer,
    BusinessPlanOwnerSerializer,
    BusinessPlanSerializer,
    LifecycleEventSerializer,
    LifecycleTransitionSerializer,
    PlanCreateSerializer,
    PlanTemplateSerializer,
    ProviderAPISerializer,
)
from portal.services.apis import api_import, api_publish, api_version_payload_validation_set
from portal.services.lifecycle import api_transition, api_version_transition
from portal.services.subscriptions import plan_create


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
        api = get_api_for_user(request.user, slug, access="write") if slug else None
        try:
            version = api_import(provider=request.user, content=content, filename=filename, api=api)
        except AsyncAPIError as error:
            return _import_error(error)
        version = version_in_full(version)
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
    body = error.as_dict()
    if not too_large:  # a 413 keeps its one-problem shape: there is nothing more to list
        body["errors"] = [problem.as_dict() for problem in error.problems]
    return Response(
        APIImportErrorSerializer(body).data,
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
        api = get_api_for_user(request.user, slug, access="write")
        api_version = get_version_of(api.versions.all(), version)
        with service_errors():
            api_publish(api_version=api_version, actor=request.user)
        return Response(APIVersionSerializer(version_in_full(api_version)).data)


class APILifecycleView(V1View):
    @extend_schema(
        responses=LifecycleEventSerializer(many=True),
        summary="Lifecycle history of an API and its versions, newest first",
    )
    def get(self, request: Request, slug: str) -> Response:
        api = get_api_for_user(request.user, slug, access="manage")
        events = APILifecycleEvent.objects.filter(api=api).select_related("api_version", "actor")
        return Response(LifecycleEventSerializer(events, many=True).data)

    @extend_schema(
        request=LifecycleTransitionSerializer,
        responses={200: APIDetailSerializer},
        summary="Move an API through its lifecycle",
        description="States: draft → published → deprecated (no new subscriptions) / blocked (connections "
        "refused and closed) → retired (final). A move the lifecycle does not allow answers 400 naming "
        "the allowed ones. The provider or an admin; only an admin lifts an admin's block. To unblock, move "
        "to the state before the block (the pages' Unblock does; the other one is allowed too). Retiring "
        "cancels active subscriptions, rejects pending ones and plans awaiting approval, and retires every "
        "version; the reason given is shown to the consumers.",
    )
    def post(self, request: Request, slug: str) -> Response:
        api = _move(request, api_transition, api=get_api_for_user(request.user, slug, access="manage"))
        return Response(api_detail(request.user, api))


def _move(request: Request, transition: Callable[..., Any], **subject: Any) -> Any:
    """Validate a lifecycle move (``{"status", "reason"}``), then call ``transition(**subject,
    to_status=..., actor=<the user>, reason=...)`` and return what it returns; its refusals
    answer 400/403, ``to_status`` errors under the request's ``status``."""
    move = LifecycleTransitionSerializer(data=request.data)
    move.is_valid(raise_exception=True)
    with service_errors({"to_status": "status"}):
        return transition(
            **subject,
            to_status=move.validated_data["status"],
            actor=request.user,
            reason=move.validated_data["reason"],
        )


class PayloadValidationSerializer(serializers.Serializer):
    enabled = serializers.BooleanField(
        help_text="Check events clients send against their send operation's payload schema."
    )


class APIVersionPayloadValidationView(V1View):
    @extend_schema(
        request=PayloadValidationSerializer,
        responses={200: APIVersionSerializer},
        summary="Turn payload validation of client events on or off",
        description="With it on, the gateway refuses an event a client sends whose payload fails the "
        "send operation's message schema (error frame 4400 with the JSON Pointer of the failure); it "
        "applies to connections opened afterwards. Your API's versions only (or an admin).",
    )
    def post(self, request: Request, slug: str, version: str) -> Response:
        api = get_api_for_user(request.user, slug, access="manage")
        api_version = get_version_of(api.versions.all(), version)
        body = PayloadValidationSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with service_errors():
            api_version_payload_validation_set(
                api_version=api_version, enabled=body.validated_data["enabled"], actor=request.user
            )
        return Response(APIVersionSerializer(version_in_full(api_version)).data)


class APIVersionLifecycleView(V1View):
    @extend_schema(
        request=LifecycleTransitionSerializer,
        responses={200: APIVersionSerializer},
        summary="Move a version through its lifecycle",
        description="States: draft → published ⇄ deprecated → retired (final; its live connections are "
        "closed). A move the lifecycle does not allow answers 400 naming the allowed ones.",
    )
    def post(self, request: Request, slug: str, version: str) -> Response:
        api = get_api_for_user(request.user, slug, access="manage")
        api_version = get_version_of(api.versions.all(), version)
        _move(request, api_version_transition, api_version=api_version)
        return Response(APIVersionSerializer(version_in_full(api_version)).data)


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
        api = get_api_for_user(request.user, slug, access="manage")
        api_version = get_version_of(api.versions.all(), version)
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


# --- business plans ----------------------------------------------------------------------------


class APIPlanListView(V1View):
    permission_classes = [permissions.IsAuthenticatedOrReadOnly]

    @extend_schema(
        responses=BusinessPlanOwnerSerializer(many=True),
        summary="Plans of an API",
        description="Approved plans for everyone; for its provider (and admins) every plan with where its "
        "approval stands (`approval_status`, `decision_reason`).",
    )
    def get(self, request: Request, slug: str) -> Response:
        api = get_api_for_user(request.user, slug, access="read")
        if manages(request.user, api):
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
        api = get_api_for_user(request.user, slug, access="write")
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
