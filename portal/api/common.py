"""What every v1 view shares: the base view, permissions, error and pagination helpers, and the
access helpers (one per resource, returning the object or raising 404)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Prefetch, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponsePermanentRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import Resolver404, resolve
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions, permissions, serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from portal.authentication import RateLimitedBasicAuthentication
from portal.models import (
    API,
    APIKey,
    APIVersion,
    Application,
    BusinessPlan,
    Channel,
    Operation,
    Subscription,
    User,
)
from portal.serializers import APIDetailSerializer


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


# --- access helpers: the object or 404 ---------------------------------------------------------

APIAccess = Literal["read", "manage", "write"]


def get_api_for_user(user: User, slug: str, *, access: APIAccess) -> API:
    """API ``slug`` as ``user`` may reach it for ``access``, or 404 ("No such API.").

    - ``read``: ``API.objects.visible_to(user)``: listed APIs, plus the ones ``user`` manages.
    - ``manage`` (lifecycle, sources): ``API.objects.managed_by(user)``: their own, any for admins.
    - ``write`` (import a version, publish, add plans): only the API's own provider, in any
      state; admins manage an API but do not author it.
    """
    if access == "read":
        apis = API.objects.visible_to(user)
    elif access == "manage":
        apis = API.objects.managed_by(user)
    else:
        apis = API.objects.filter(provider=user)
    api = apis.filter(slug=slug).select_related("provider").first()
    if api is None:
        raise Http404("No such API.")
    return api


def manages(user: User, api: API) -> bool:
    """Whether ``user`` sees everything of ``api`` (``API.objects.managed_by``)."""
    return API.objects.managed_by(user).filter(pk=api.pk).exists()


def visible_versions(user: User, api: API) -> QuerySet[APIVersion]:
    """Every version for those who manage ``api``; published and deprecated ones for others."""
    versions = api.versions.order_by("-created")
    return versions if manages(user, api) else versions.filter(status__in=APIVersion.LIVE_STATUSES)


def get_version_of(versions: QuerySet[APIVersion], version: str) -> APIVersion:
    """Version ``version`` among ``versions``, or 404.

    ``version`` is a ``<str:>`` URL segment, so it may hold NUL, which PostgreSQL cannot compare
    (DataError); no stored version holds control characters (the importer refuses them).
    """
    if "\x00" in version:
        raise Http404("No such version.")
    return get_object_or_404(versions, version=version)


def get_application_for_user(user: User, pk: int) -> Application:
    """Application ``pk`` if ``user`` owns it, or 404."""
    return get_object_or_404(Application, pk=pk, owner=user)


def get_subscription_for_user(user: User, pk: int, *, as_admin: bool = False) -> Subscription:
    """Subscription ``pk`` of one of ``user``'s applications, or 404.

    With ``as_admin`` (the approval views), any subscription if ``user`` is a platform admin.
    """
    subscriptions = Subscription.objects.select_related("api", "plan", "application")
    if not (as_admin and user.is_staff):
        subscriptions = subscriptions.filter(application__owner=user)
    return get_object_or_404(subscriptions, pk=pk)


def get_subscription_for_reader(user: User, pk: int) -> Subscription:
    """Subscription ``pk`` for those who may read its usage and limits, or 404: the owner of
    its application, the provider of its API, and platform admins."""
    subscriptions = Subscription.objects.select_related("api", "plan", "application")
    if not user.is_staff:
        subscriptions = subscriptions.filter(Q(application__owner=user) | Q(api__provider=user))
    return get_object_or_404(subscriptions, pk=pk)


def get_key_for_user(user: User, application_pk: int, key_pk: int) -> APIKey:
    """API key ``key_pk`` of application ``application_pk`` if ``user`` owns it, or 404."""
    return get_object_or_404(APIKey, pk=key_pk, application_id=application_pk, application__owner=user)


def get_plan_for_admin(user: User, pk: int) -> BusinessPlan:
    """Business plan ``pk`` for a platform admin deciding on it, or 404 (providers reach their
    plans through their API)."""
    plans = BusinessPlan.objects.select_related("api") if user.is_staff else BusinessPlan.objects.none()
    return get_object_or_404(plans, pk=pk)


def version_in_full(api_version: APIVersion) -> APIVersion:
    """``api_version`` reloaded with its channels and their operations prefetched."""
    channels = Prefetch(
        "channels", queryset=Channel.objects.prefetch_related(Prefetch("operations", Operation.objects.all()))
    )
    return APIVersion.objects.prefetch_related(channels).get(pk=api_version.pk)


def api_detail(user: User, api: API) -> dict[str, Any]:
    """``APIDetailSerializer`` data of ``api`` as ``user`` may see it."""
    versions = list(visible_versions(user, api))
    live = [version for version in versions if version.status in APIVersion.LIVE_STATUSES]
    newest = (live or versions or [None])[0]
    api.latest = version_in_full(newest) if newest else None  # type: ignore[attr-defined]
    api.visible_versions = versions  # type: ignore[attr-defined]
    api.visible_plans = list(  # type: ignore[attr-defined]
        api.plans.all() if manages(user, api) else api.plans.filter(is_approved=True)
    )
    return APIDetailSerializer(api).data


def endpoint_not_found(request: HttpRequest, path: str) -> HttpResponse:
    """A JSON 404 for paths under ``/api/v1/`` that name no endpoint, instead of the portal's
    HTML page: ``{"detail": ...}`` like every other v1 error. A path that lacks only its
    trailing slash is redirected to it for GET and HEAD, as Django's ``APPEND_SLASH`` would do
    (this catch-all route otherwise stops that redirect)."""
    with_slash = f"{request.path}/"
    if request.method in ("GET", "HEAD") and not request.path.endswith("/"):
        try:
            match = resolve(with_slash)
        except Resolver404:
            match = None
        if match is not None and match.func is not endpoint_not_found:
            query = request.META.get("QUERY_STRING", "")
            return HttpResponsePermanentRedirect(with_slash + (f"?{query}" if query else ""))
    return JsonResponse(
        {"detail": f"No endpoint at {request.path}; GET /api/v1/ lists them, /api/docs/ documents them."},
        status=404,
    )
