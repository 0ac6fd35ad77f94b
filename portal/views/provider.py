"""Provider pages: my APIs, AsyncAPI import, channels preview, lifecycle (API and versions)
and business plans."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from django.contrib import messages
from django.core.exceptions import PermissionDenied, RequestDataTooBig, ValidationError
from django.db import transaction
from django.db.models import Count, Prefetch, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.urls.converters import SlugConverter
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from portal.asyncapi import MAX_DOCUMENT_BYTES, AsyncAPIError, DocumentTooLargeError
from portal.forms import (
    ImportForm,
    OrganizationForm,
    PlanForm,
    ReasonForm,
    add_service_errors,
    service_error_text,
)
from portal.models import API, APIVersion, Subscription, User
from portal.plans import PLAN_TEMPLATES, plan_template
from portal.services.apis import (
    api_import,
    api_publish,
    api_version_payload_validation_set,
    provider_organization_set,
)
from portal.services.lifecycle import Block, api_block_details, api_transition, api_version_transition
from portal.services.subscriptions import plan_create
from portal.views.catalog import channels_of, summary_repeats_description
from portal.views.decorators import provider_required


def _get_api_for_provider(request: HttpRequest, slug: str) -> API:
    """The provider's own API ``slug`` (any status), or 404 (never another provider's).

    ``slug`` may come from the query string (``?api=``), where no URL converter checked it: what
    is not a slug is a 404 before it reaches PostgreSQL, which cannot compare text with NUL.
    """
    if not re.fullmatch(SlugConverter.regex, slug):
        raise Http404("No such API.")
    return get_object_or_404(API, slug=slug, provider=request.user)


def _get_version_for_provider(request: HttpRequest, api: API, version_id: int) -> APIVersion:
    return get_object_or_404(APIVersion, pk=version_id, api=api, api__provider=request.user)


@provider_required
def provider_api_list(request: HttpRequest) -> HttpResponse:
    """The provider's own APIs with their versions, plans and subscriber counts; POST sets the
    organization name consumers see as the provider of these APIs."""
    organization_form = OrganizationForm(
        request.POST if request.method == "POST" else None,
        initial={"organization": request.user.organization},
    )
    if request.method == "POST" and organization_form.is_valid():
        try:
            provider_organization_set(
                provider=request.user, organization=organization_form.cleaned_data["organization"]
            )
        except ValidationError as error:
            request.user.refresh_from_db(fields=["organization"])
            add_service_errors(organization_form, error)
        else:
            messages.success(
                request, f"Consumers now see your APIs as provided by {request.user.public_name}."
            )
            return redirect("portal:provider_api_list")
    apis = (
        API.objects.filter(provider=request.user)
        .prefetch_related(Prefetch("versions", queryset=APIVersion.objects.order_by("-created")))
        .annotate(
            approved_plan_count=Count("plans", filter=Q(plans__is_approved=True), distinct=True),
            awaiting_plan_count=Count(
                "plans", filter=Q(plans__is_approved=False, plans__rejected_at__isnull=True), distinct=True
            ),
            rejected_plan_count=Count("plans", filter=Q(plans__rejected_at__isnull=False), distinct=True),
            subscriber_count=Count(
                "subscriptions", filter=Q(subscriptions__status=Subscription.Status.ACTIVE), distinct=True
            ),
        )
    )
    return render(
        request, "portal/provider/api_list.html", {"apis": apis, "organization_form": organization_form}
    )


def _csrf_rejection(request: HttpRequest) -> HttpResponse | None:
    """The CSRF middleware's verdict on ``request``: None when it passes, else its 403 page.

    Run inside a ``csrf_exempt`` view, as DRF's ``SessionAuthentication.enforce_csrf`` does. It
    reads the token from ``request.POST``, so it raises ``RequestDataTooBig`` for form fields over
    ``DATA_UPLOAD_MAX_MEMORY_SIZE``, which the view can then answer on its own page.
    """
    check = CsrfViewMiddleware(lambda request: HttpResponse())
    check.process_request(request)
    return check.process_view(request, None, (), {})


# The CSRF middleware would read a pasted document over DATA_UPLOAD_MAX_MEMORY_SIZE before the
# view and answer Django's bare "Bad Request (400)"; the view runs the same check itself instead.
@csrf_exempt
@provider_required
def provider_api_import(request: HttpRequest) -> HttpResponse:
    """Upload or paste an AsyncAPI document; ``?api=<slug>`` adds a new version to that API."""
    api = _get_api_for_provider(request, request.GET["api"]) if request.GET.get("api") else None
    form = ImportForm()
    import_error: AsyncAPIError | None = None
    if request.method == "POST":
        try:
            if (rejection := _csrf_rejection(request)) is not None:
                return rejection
            form = ImportForm(request.POST, request.FILES)
        except RequestDataTooBig:
            # Files do not count towards Django's limit, so this is pasted text. The token was
            # never read, and need not be: this answer stores and changes nothing.
            import_error = DocumentTooLargeError(
                f"the pasted document is larger than the {MAX_DOCUMENT_BYTES // (1024 * 1024)} MB "
                "Eventgate accepts for an AsyncAPI document",
                filename="pasted document",
            )
    if form.is_bound and form.is_valid():
        try:
            # The service stores nothing on error; the transaction makes that hold for any failure.
            with transaction.atomic():
                version = api_import(
                    provider=request.user,
                    content=form.cleaned_data["document"],
                    filename=form.cleaned_data["filename"],
                    api=api,
                )
        except AsyncAPIError as error:
            import_error = error
            form.add_error(None, error.message)
        except ValidationError as error:
            form.add_error(None, error)
        else:
            channel_count = version.channels.count()
            imported = (
                f"Imported {version.api.name} {version.version} with {channel_count} "
                f"channel{pluralize(channel_count)} as a draft. Check the channels below, then publish "
                "the version to list it in the catalog."
            )
            if not version.api.plans.filter(is_approved=True).exists():
                imported += (
                    " Consumers can subscribe once an admin has approved one of your plans; publishing "
                    "and plan approval are independent, in either order."
                )
            messages.success(request, imported)
            return redirect("portal:provider_api_detail", slug=version.api.slug)
    context = {"form": form, "api": api, "import_error": import_error}
    return render(request, "portal/provider/api_import.html", context)


# Button words and confirmations for lifecycle moves: (from, to) first, then by target state.
MOVE_LABELS: dict[str | tuple[str, str], str] = {
    ("blocked", "published"): "Unblock",
    ("blocked", "deprecated"): "Unblock",
    ("deprecated", "published"): "Publish again",
    "published": "Publish",
    "deprecated": "Deprecate",
    "blocked": "Block",
    "retired": "Retire",
}
MOVE_CONFIRMATIONS: dict[str | tuple[str, str], str] = {
    ("draft", "published"): "It is listed in the catalog; consumers can subscribe and connect.",
    ("blocked", "published"): "Connections are accepted again and consumers can subscribe.",
    ("blocked", "deprecated"): "Connections are accepted again; it stays deprecated: no new subscriptions.",
    "published": "Consumers can subscribe and connect again.",
    "deprecated": "Listed, but no new subscriptions; live ones keep working.",
    "blocked": "Live connections close now and new ones are refused until it is unblocked.",
    "retired": "Final: live connections close now and it cannot be published again.",
}
# Retiring a whole API also ends its subscriptions (portal.services.lifecycle); a version's does not.
API_RETIRE_CONFIRMATION = (
    "Final: live connections close now, active subscriptions are cancelled, pending ones rejected, "
    "and it cannot be published again."
)


def lifecycle_moves(current: str, transitions: dict[str, tuple[str, ...]]) -> list[dict[str, str]]:
    """The moves the lifecycle allows from ``current``: ``[{to, label, confirm}]`` for buttons."""
    return [
        {
            "to": to,
            "label": MOVE_LABELS.get((current, to)) or MOVE_LABELS[to],
            "confirm": MOVE_CONFIRMATIONS.get((current, to)) or MOVE_CONFIRMATIONS[to],
        }
        for to in transitions.get(current, ())
    ]


def api_moves(api: API, *, user: User, block: Block | None = None) -> list[dict[str, str]]:
    """The API-level lifecycle buttons ``user`` can press with success: ``[{to, label, confirm}]``.

    Of ``API.TRANSITIONS``, leaves out what ``portal.services.lifecycle`` would refuse or what
    would surprise: publishing without a published version (a draft's version has its own
    Publish button); of a blocked API's two ways back, all but the one "Unblock" to the state
    before the block (the REST API still takes the other); and every move of an API an admin
    blocked, for its provider. ``block`` is ``api_block_details(api=api)`` when the caller has it;
    ``api.versions`` may be prefetched.
    """
    if api.status == API.Status.BLOCKED and block is None:
        block = api_block_details(api=api)
    if block is not None and block.by_admin and not user.is_staff:
        return []
    has_published_version = any(v.status == APIVersion.Status.PUBLISHED for v in api.versions.all())
    moves = lifecycle_moves(api.status, API.TRANSITIONS)
    if block is not None:
        moves = [m for m in moves if m["to"] not in API.CONNECTABLE_STATUSES or m["to"] == block.restores]
    if not has_published_version:
        moves = [m for m in moves if m["to"] != API.Status.PUBLISHED]
    return [m | {"confirm": API_RETIRE_CONFIRMATION} if m["to"] == API.Status.RETIRED else m for m in moves]


@provider_required
def provider_api_detail(request: HttpRequest, slug: str) -> HttpResponse:
    """One of the provider's APIs: lifecycle (moves and history), versions side by side with
    their moves, channels of the newest, plans; POST adds a plan. ``?template=<key>`` prefills
    the plan form from a ``portal.plans.PLAN_TEMPLATES`` entry."""
    api = _get_api_for_provider(request, slug)
    template = plan_template(request.GET.get("template", ""))
    initial = PlanForm.initial_from_template(template) if template else None
    form = PlanForm(request.POST if request.method == "POST" else None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            plan = plan_create(
                api=api, price_model=form.cleaned_data.get("price_model") or None, **form.plan_fields()
            )
        except ValidationError as error:
            add_service_errors(form, error, PlanForm.FIELD_MAP)
        else:
            messages.success(
                request, f"Added the plan {plan.name}. An admin approves it before consumers can pick it."
            )
            return redirect(reverse("portal:provider_api_detail", args=[api.slug]) + "#plans")
    versions = list(api.versions.order_by("-created"))
    version = versions[0] if versions else None
    block = api_block_details(api=api)
    plans = list(
        api.plans.annotate(
            subscriber_count=Count(
                "subscriptions", filter=Q(subscriptions__status=Subscription.Status.ACTIVE)
            )
        )
    )
    context = {
        "api": api,
        "summary_repeats_description": summary_repeats_description(api),
        "api_moves": api_moves(api, user=request.user, block=block),  # type: ignore[arg-type]
        "api_block": block,  # not "block": Django's {% block %} sets that name for {{ block.super }}
        "history": api.lifecycle_events.select_related("actor", "api_version")[:50],
        "versions": [(v, _version_moves(api, v)) for v in versions],
        "version": version,
        "channels": channels_of(version) if version else [],
        "plans": plans,
        # Consumers see the API once a version is published, and can subscribe once a plan is approved.
        "is_listed": api.status in API.LISTED_STATUSES
        and any(v.status in APIVersion.LIVE_STATUSES for v in versions),
        "accepts_subscriptions": api.status == API.Status.PUBLISHED
        and any(v.status == APIVersion.Status.PUBLISHED for v in versions),
        "has_approved_plan": any(plan.is_approved for plan in plans),
        "form": form,
        "plan_templates": PLAN_TEMPLATES,
        "template": template,
    }
    return render(request, "portal/provider/api_detail.html", context)


def _version_moves(api: API, version: APIVersion) -> list[dict[str, str]]:
    """A version's lifecycle buttons; a draft's publication is the Publish button (``api_publish``,
    which also publishes a draft API), so it is not offered twice."""
    if api.status == API.Status.RETIRED:
        return []
    moves = lifecycle_moves(version.status, APIVersion.TRANSITIONS)
    if version.status == APIVersion.Status.DRAFT:
        moves = [move for move in moves if move["to"] != APIVersion.Status.PUBLISHED]
    return moves


def lifecycle_move_posted(request: HttpRequest, *, what: str, move: Callable[..., API | APIVersion]) -> None:
    """Apply the lifecycle move a form POSTed (``to_status`` and an optional ``reason``) with
    ``move(to_status=..., actor=request.user, reason=...)`` (a ``portal.services.lifecycle``
    transition with its subject bound), and say how it went in a flash message naming ``what``."""
    form = ReasonForm(request.POST)
    form.is_valid()  # an optional, length-capped reason: nothing to refuse but over-long text
    try:
        moved = move(
            to_status=request.POST.get("to_status", ""),
            actor=request.user,
            reason=form.cleaned_data.get("reason", ""),
        )
    except (ValidationError, PermissionDenied) as error:
        messages.error(request, service_error_text(error))
    else:
        messages.success(request, f"{what} is now {moved.get_status_display().lower()}.")


@provider_required
@require_POST
def provider_api_lifecycle(request: HttpRequest, slug: str) -> HttpResponse:
    """POST ``to_status`` (and an optional ``reason``): move the provider's API in its lifecycle."""
    api = _get_api_for_provider(request, slug)
    lifecycle_move_posted(request, what=api.name, move=functools.partial(api_transition, api=api))
    return redirect("portal:provider_api_detail", slug=api.slug)


@provider_required
@require_POST
def provider_version_lifecycle(request: HttpRequest, slug: str, version_id: int) -> HttpResponse:
    """POST ``to_status`` (and an optional ``reason``): move one version of the provider's API."""
    api = _get_api_for_provider(request, slug)
    version = _get_version_for_provider(request, api, version_id)
    lifecycle_move_posted(
        request,
        what=f"{api.name} {version.version}",
        move=functools.partial(api_version_transition, api_version=version),
    )
    return redirect("portal:provider_api_detail", slug=api.slug)


@provider_required
@require_POST
def provider_version_publish(request: HttpRequest, slug: str, version_id: int) -> HttpResponse:
    """POST: publish one version of the provider's API (and a draft API with it): it then
    appears in the catalog."""
    api = _get_api_for_provider(request, slug)
    version = _get_version_for_provider(request, api, version_id)
    try:
        api_publish(api_version=version, actor=request.user)
    except (ValidationError, PermissionDenied) as error:
        messages.error(request, service_error_text(error))
    else:
        if api.plans.filter(is_approved=True).exists():
            next_step = "Consumers can subscribe to its approved plans."
        else:
            next_step = "Consumers can subscribe once an admin has approved one of its plans."
        messages.success(
            request, f"Published {api.name} {version.version}: it is in the catalog. {next_step}"
        )
    return redirect("portal:provider_api_detail", slug=api.slug)


@provider_required
@require_POST
def provider_version_validation(request: HttpRequest, slug: str, version_id: int) -> HttpResponse:
    """POST ``enabled`` ("on" or absent): check client events of one version against their
    payload schemas, or stop checking (``api_version_payload_validation_set``)."""
    api = _get_api_for_provider(request, slug)
    version = _get_version_for_provider(request, api, version_id)
    enabled = request.POST.get("enabled") == "on"
    api_version_payload_validation_set(api_version=version, enabled=enabled, actor=request.user)
    if enabled:
        messages.success(
            request,
            f"{api.name} {version.version}: events clients send are now checked against their payload "
            "schemas (new connections); events that fail are refused with the reason.",
        )
    else:
        messages.success(request, f"{api.name} {version.version}: events clients send are no longer checked.")
    return redirect("portal:provider_api_detail", slug=api.slug)
