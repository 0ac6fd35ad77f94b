"""The public side: home page, API catalog and API pages (with the subscribe form)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Prefetch, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from portal.forms import NEW_APPLICATION, SubscribeForm, add_service_errors
from portal.links import gateway_ws_url
from portal.models import API, APIVersion, BusinessPlan, Channel, Operation, Subscription
from portal.services.subscriptions import application_create, subscription_create

# The demo API that `make run` loads (portal/demo/stock-prices.asyncapi.yaml); the home page's
# terminal example connects to it.
DEMO_API_SLUG = "stock-prices"
DEMO_API_VERSION = "1.0.0"
DEMO_ADDRESS = "prices/ACME"


def _get_published_api(slug: str) -> API:
    """The published API with ``slug``, or 404 (drafts are visible only on provider pages)."""
    return get_object_or_404(API.objects.listed(), slug=slug)


def channels_of(version: APIVersion) -> list[Channel]:
    """The channels of ``version`` with their operations, in address order."""
    return list(
        version.channels.prefetch_related(
            Prefetch("operations", queryset=Operation.objects.order_by("action"))
        )
    )


def summary_repeats_description(api: API) -> bool:
    """Whether the API's description starts with its summary, so showing both says it twice.

    The importer takes the summary from the description's first sentence with its line breaks
    collapsed (``first_sentence``), and cuts long ones with "…"; compare the same way.
    """
    summary = " ".join(api.summary.rstrip("…").split())
    return bool(summary) and " ".join(api.description.split()).startswith(summary)


def home(request: HttpRequest) -> HttpResponse:
    """The landing page: what Eventgate does, the newest APIs and the path to a first event."""
    featured = API.objects.published().order_by("-created")[:3]
    context = {
        "featured": featured,
        "example_url": gateway_ws_url(api_slug=DEMO_API_SLUG, version=DEMO_API_VERSION, address=DEMO_ADDRESS),
        "demo_api": API.objects.published().filter(slug=DEMO_API_SLUG).first(),
    }
    return render(request, "portal/home.html", context)


def api_list(request: HttpRequest) -> HttpResponse:
    """The published APIs; ``?q=`` keeps those whose name, summary or a channel address of a
    published version contains the text (case-insensitive)."""
    # PostgreSQL text cannot hold NUL: a filter with "\x00" would raise DataError (a 500).
    query = request.GET.get("q", "").replace("\x00", "").strip()
    apis = API.objects.listed().prefetch_related(
        Prefetch(
            "versions",
            # The stored document and source can be megabytes: never load them for a list (and on
            # SQLite, GROUP BY would include them and take seconds).
            queryset=APIVersion.objects.filter(status=APIVersion.Status.PUBLISHED)
            .defer("document", "source")
            .annotate(channel_count=Count("channels"))
            .order_by("-created"),
            to_attr="published_versions",
        ),
        Prefetch("plans", queryset=BusinessPlan.objects.filter(is_approved=True), to_attr="approved_plans"),
    )
    if query:
        # Only published versions' channels: a draft version's channels are not public yet.
        matching_channels = Channel.objects.filter(
            api_version__status=APIVersion.Status.PUBLISHED, address__icontains=query
        )
        apis = apis.filter(
            Q(name__icontains=query)
            | Q(summary__icontains=query)
            | Q(pk__in=matching_channels.values("api_version__api"))
        )
    return render(request, "portal/api_list.html", {"apis": apis, "query": query})


def api_detail(request: HttpRequest, slug: str) -> HttpResponse:
    """An API's documentation, plans and subscribe form; POST subscribes an application."""
    api = _get_published_api(slug)
    versions = list(
        api.versions.filter(status=APIVersion.Status.PUBLISHED)
        .defer("document", "source")
        .order_by("-created")
    )
    version = versions[0]
    if requested := request.GET.get("version"):
        version = next((v for v in versions if v.version == requested), None)
        if version is None:
            raise Http404("No such published version.")

    form = None
    if request.user.is_authenticated:
        form = SubscribeForm(request.POST if request.method == "POST" else None, user=request.user, api=api)
    if request.method == "POST":
        if form is None:
            return redirect_to_login(request.get_full_path())
        if form.is_valid() and (subscription := _subscribe(form, request)) is not None:
            _announce(request, subscription)
            return redirect(subscription.application)

    context = {
        "api": api,
        "summary_repeats_description": summary_repeats_description(api),
        "version": version,
        "versions": versions,
        "channels": channels_of(version),
        "plans": api.plans.filter(is_approved=True),
        "form": form,
    }
    return render(request, "portal/api_detail.html", context)


def _announce(request: HttpRequest, subscription: Subscription) -> None:
    """Tell the consumer what happened and what to do next."""
    application, api, plan = subscription.application.name, subscription.api.name, subscription.plan.name
    if subscription.status == Subscription.Status.PENDING:
        messages.info(
            request,
            f"{application} asked to subscribe to {api} on the {plan} plan. "
            "An admin will review it; you can generate a key meanwhile.",
        )
    else:
        messages.success(request, f"{application} is subscribed to {api}. Generate an API key to connect.")


def _subscribe(form: SubscribeForm, request: HttpRequest) -> Subscription | None:
    """Create the application if asked, then the subscription; service errors land on the form."""
    try:
        with transaction.atomic():
            application = form.selected_application()
            if application is None:
                application = application_create(
                    owner=request.user, name=form.cleaned_data["new_application_name"]
                )
            return subscription_create(application=application, plan=form.cleaned_data["plan"])
    except ValidationError as error:
        name_field = (
            "new_application_name" if form.cleaned_data["application"] == NEW_APPLICATION else "application"
        )
        add_service_errors(form, error, {"name": name_field})
        return None
