"""REST API v1: the catalog, AsyncAPI import and publishing, applications, subscriptions and keys.

One small view per operation with explicit serializers (portal/serializers.py); the work is
done by ``portal.services``. Clients authenticate with the portal session (browser, CSRF token
required for writes) or HTTP Basic with email and password (``curl -u email:password``).
Another user's application, or an API you do not own, answers 404 as if it did not exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Prefetch
from django.http import Http404
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import permissions, serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.asyncapi import MAX_DOCUMENT_BYTES, AsyncAPIError, DocumentTooLargeError, check_document_size
from portal.authentication import RateLimitedBasicAuthentication
from portal.models import API, APIVersion, Application, Channel, Operation, Subscription, User
from portal.serializers import (
    APIDetailSerializer,
    APIImportErrorSerializer,
    APIImportTextSerializer,
    APIImportUploadSerializer,
    APIKeyCreatedSerializer,
    APIKeyCreateSerializer,
    APIListSerializer,
    APIVersionSerializer,
    ApplicationDetailSerializer,
    ApplicationSerializer,
    SubscriptionCreateSerializer,
    SubscriptionSerializer,
)
from portal.services.apis import api_import, api_publish
from portal.services.subscriptions import api_key_create, application_create, subscription_create


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


@contextmanager
def django_errors_as_400() -> Iterator[None]:
    """Turn a service's Django ``ValidationError`` into DRF's 400 with field errors."""
    try:
        yield
    except DjangoValidationError as error:
        if hasattr(error, "error_dict"):
            raise serializers.ValidationError(error.message_dict) from None
        raise serializers.ValidationError({"non_field_errors": error.messages}) from None


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


def _get_published_api(slug: str) -> API:
    """A published API with ``latest`` (its newest published version) and ``approved_plans``."""
    api = get_object_or_404(API.objects.listed(), slug=slug)
    api.latest = (  # type: ignore[attr-defined]
        api.versions.filter(status=APIVersion.Status.PUBLISHED)
        .order_by("-created")
        .prefetch_related(_channels_prefetch())
        .first()
    )
    api.approved_plans = list(api.plans.filter(is_approved=True))  # type: ignore[attr-defined]
    return api


def _get_api_for_owner(user: User, slug: str) -> API:
    return get_object_or_404(API, slug=slug, provider=user)


def _get_version_of(api: API, version: str) -> APIVersion:
    """Version ``version`` of ``api`` (any status), or 404.

    ``version`` is a ``<str:>`` URL segment, so it may hold NUL, which PostgreSQL cannot compare
    (DataError); no stored version holds control characters (the importer refuses them).
    """
    if "\x00" in version:
        raise Http404("No such version.")
    return get_object_or_404(api.versions, version=version)


def _get_application_for_user(user: User, pk: int) -> Application:
    return get_object_or_404(Application, pk=pk, owner=user)


# --- catalog -----------------------------------------------------------------------------------


class APIListView(V1View):
    permission_classes = [permissions.AllowAny]

    @extend_schema(responses=APIListSerializer(many=True), summary="Published APIs")
    def get(self, request: Request) -> Response:
        apis = API.objects.listed().order_by("name")
        return Response(APIListSerializer(apis, many=True).data)


class APIDetailView(V1View):
    permission_classes = [permissions.AllowAny]

    @extend_schema(
        responses=APIDetailSerializer, summary="A published API: channels, operations, messages, plans"
    )
    def get(self, request: Request, slug: str) -> Response:
        return Response(APIDetailSerializer(_get_published_api(slug)).data)


class APIImportView(V1View):
    """Import an AsyncAPI 2.0–2.6, 3.0 or 3.1 document (YAML or JSON) as a draft API or version.

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
        version = APIVersion.objects.prefetch_related(_channels_prefetch()).get(pk=version.pk)
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
    @extend_schema(request=None, responses=APIVersionSerializer, summary="Publish a version of your API")
    def post(self, request: Request, slug: str, version: str) -> Response:
        api = _get_api_for_owner(request.user, slug)
        api_version = _get_version_of(api, version)
        with django_errors_as_400():
            api_publish(api_version=api_version)
        api_version = APIVersion.objects.prefetch_related(_channels_prefetch()).get(pk=api_version.pk)
        return Response(APIVersionSerializer(api_version).data)


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
        with django_errors_as_400():
            application = application_create(owner=request.user, **serializer.validated_data)
        return Response(ApplicationSerializer(application).data, status=status.HTTP_201_CREATED)


class ApplicationDetailView(V1View):
    @extend_schema(responses=ApplicationDetailSerializer, summary="One of your applications")
    def get(self, request: Request, pk: int) -> Response:
        application = _get_application_for_user(request.user, pk)
        return Response(ApplicationDetailSerializer(application).data)


class ApplicationSubscriptionCreateView(V1View):
    @extend_schema(
        request=SubscriptionCreateSerializer,
        responses={201: SubscriptionSerializer},
        summary="Subscribe an application to an API under a plan",
        description="Active at once, or pending until an admin approves when the plan requires approval.",
    )
    def post(self, request: Request, pk: int) -> Response:
        application = _get_application_for_user(request.user, pk)
        serializer = SubscriptionCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        with django_errors_as_400():
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


class ApplicationKeyCreateView(V1View):
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
