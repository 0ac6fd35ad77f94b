"""Provider pages: my APIs, AsyncAPI import, channels preview, publishing and business plans."""

from __future__ import annotations

import re

from django.contrib import messages
from django.core.exceptions import RequestDataTooBig, ValidationError
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
from portal.forms import ImportForm, PlanForm, add_service_errors
from portal.models import API, APIVersion, Subscription
from portal.services.apis import api_import, api_publish
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
    """The provider's own APIs with their versions, plans and subscriber counts."""
    apis = (
        API.objects.filter(provider=request.user)
        .prefetch_related(Prefetch("versions", queryset=APIVersion.objects.order_by("-created")))
        .annotate(
            approved_plan_count=Count("plans", filter=Q(plans__is_approved=True), distinct=True),
            awaiting_plan_count=Count("plans", filter=Q(plans__is_approved=False), distinct=True),
            subscriber_count=Count(
                "subscriptions", filter=Q(subscriptions__status=Subscription.Status.ACTIVE), distinct=True
            ),
        )
    )
    return render(request, "portal/provider/api_list.html", {"apis": apis})


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


@provider_required
def provider_api_detail(request: HttpRequest, slug: str) -> HttpResponse:
    """One of the provider's APIs: versions (publish), channels of the newest, plans; POST adds a plan."""
    api = _get_api_for_provider(request, slug)
    form = PlanForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            plan = plan_create(api=api, **form.plan_fields())
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(
                request, f"Added the plan {plan.name}. An admin approves it before consumers can pick it."
            )
            return redirect(reverse("portal:provider_api_detail", args=[api.slug]) + "#plans")
    versions = list(api.versions.order_by("-created"))
    version = versions[0] if versions else None
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
        "versions": versions,
        "version": version,
        "channels": channels_of(version) if version else [],
        "plans": plans,
        # Consumers see the API once a version is published, and can subscribe once a plan is approved.
        "is_listed": api.status == API.Status.PUBLISHED
        and any(v.status == APIVersion.Status.PUBLISHED for v in versions),
        "has_approved_plan": any(plan.is_approved for plan in plans),
        "form": form,
    }
    return render(request, "portal/provider/api_detail.html", context)


@provider_required
@require_POST
def provider_version_publish(request: HttpRequest, slug: str, version_id: int) -> HttpResponse:
    """POST: publish one version of the provider's API (it then appears in the catalog)."""
    api = _get_api_for_provider(request, slug)
    version = _get_version_for_provider(request, api, version_id)
    try:
        api_publish(api_version=version)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        if api.plans.filter(is_approved=True).exists():
            next_step = "Consumers can subscribe to its approved plans."
        else:
            next_step = "Consumers can subscribe once an admin has approved one of its plans."
        messages.success(
            request, f"Published {api.name} {version.version}: it is in the catalog. {next_step}"
        )
    return redirect("portal:provider_api_detail", slug=api.slug)
