"""The public side: home page, API catalog, API pages (with the subscribe form and the rendered
AsyncAPI documentation) and AsyncAPI document downloads."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, Prefetch
from django.db.models.functions import Length
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import content_disposition_header

from portal.consumer_document import FORMATS, consumer_document, document_dump
from portal.forms import NEW_APPLICATION, SubscribeForm, add_service_errors
from portal.links import gateway_ws_url
from portal.models import API, APIVersion, BusinessPlan, Channel, Operation, Subscription
from portal.services.catalog import api_search, catalog_facets, clean_text
from portal.services.subscriptions import application_create, subscription_create

# The demo API that `make run` loads (portal/demo/stock-prices.asyncapi.yaml); the home page's
# terminal example connects to it.
DEMO_API_SLUG = "stock-prices"
DEMO_API_VERSION = "1.0.0"
DEMO_ADDRESS = "prices/ACME"


def _get_api_for_reader(request: HttpRequest, slug: str) -> API:
    """The API ``slug`` if ``request.user`` may read its page, or 404: listed APIs for everyone,
    plus the user's own drafts and retired APIs (every API for staff), as a preview."""
    return get_object_or_404(API.objects.visible_to(request.user), slug=slug)


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


CATALOG_PAGE_SIZE = 20
# Documents larger than this (characters of the uploaded text) render only when the reader asks
# (a button in the Documentation tab): the web component takes seconds on a 600-channel, ~500 KB
# document.
DOCUMENT_RENDER_LIMIT = 200_000
CATALOG_FILTERS = ("q", "tag", "protocol", "provider", "status")


def api_list(request: HttpRequest) -> HttpResponse:
    """The catalog: listed APIs, 20 a page, searched with ``?q=`` (name, summary, description,
    tags, channel addresses of live versions) and filtered by ``tag``, ``protocol``, ``provider``
    (public name or id) and ``status`` (published, deprecated, blocked); see ``api_search``."""
    criteria = {name: clean_text(request.GET.get(name)) for name in CATALOG_FILTERS}
    apis = (
        api_search(
            text=criteria["q"],
            tag=criteria["tag"],
            protocol=criteria["protocol"],
            provider=criteria["provider"],
            status=criteria["status"],
        )
        .select_related("provider")
        .prefetch_related(
            Prefetch(
                "versions",
                # The stored document and source can be megabytes: never load them for a list (and on
                # SQLite, GROUP BY would include them and take seconds).
                queryset=APIVersion.objects.filter(status__in=APIVersion.LIVE_STATUSES)
                .defer("document", "source", "source_files")
                .annotate(channel_count=Count("channels"))
                .order_by("-created"),
                to_attr="live_versions",
            ),
            Prefetch(
                "plans", queryset=BusinessPlan.objects.filter(is_approved=True), to_attr="approved_plans"
            ),
        )
    )
    page = Paginator(apis, CATALOG_PAGE_SIZE).get_page(clean_text(request.GET.get("page"), limit=12))
    for api in page:
        api.shown_version = _default_version(api.live_versions)
        api.protocol_labels = [protocol_label(name) for name in api.protocols if isinstance(name, str)]
    facets = catalog_facets()
    # Page links keep the search and filters.
    kept = QueryDict(mutable=True)
    kept.update({name: value for name, value in criteria.items() if value})
    context = {
        "page": page,
        "apis": page.object_list,
        "query": criteria["q"],
        "criteria": criteria,
        "filtering": any(criteria.values()),
        "facets": facets,
        "protocol_choices": [(name, protocol_label(name), count) for name, count in facets.protocols],
        "page_query": kept.urlencode(),
        # None stands for an ellipsis ("1 2 … 9 10 11 … 40").
        "page_numbers": [
            number if isinstance(number, int) else None
            for number in page.paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1)
        ],
    }
    return render(request, "portal/api_list.html", context)


# Display names of AsyncAPI server protocols (AsyncAPI 3.0.0 §Server Object ``protocol``).
PROTOCOL_LABELS = {
    "ws": "WebSocket",
    "wss": "WebSocket (TLS)",
    "http": "HTTP",
    "https": "HTTPS",
    "mqtt": "MQTT",
    "secure-mqtt": "MQTT (TLS)",
    "mqtt5": "MQTT 5",
    "amqp": "AMQP",
    "amqps": "AMQPS",
    "kafka": "Kafka",
    "kafka-secure": "Kafka (TLS)",
    "stomp": "STOMP",
    "stomps": "STOMPS",
    "jms": "JMS",
    "ibmmq": "IBM MQ",
    "solace": "Solace",
    "nats": "NATS",
    "sns": "Amazon SNS",
    "sqs": "Amazon SQS",
    "googlepubsub": "Google Pub/Sub",
    "pulsar": "Pulsar",
    "redis": "Redis",
    "mercure": "Mercure",
    "anypointmq": "Anypoint MQ",
}


def protocol_label(name: str) -> str:
    """How the catalog names a server protocol: ``mqtt`` → ``MQTT``; unknown ones as written."""
    return PROTOCOL_LABELS.get(name.lower(), name)


def _default_version(versions: list[APIVersion]) -> APIVersion | None:
    """The version a page shows first: the newest published one, else the newest deprecated one
    (``versions`` newest first)."""
    published = [v for v in versions if v.status == APIVersion.Status.PUBLISHED]
    return (published or versions or [None])[0]


def api_detail(request: HttpRequest, slug: str) -> HttpResponse:
    """An API's documentation, plans and subscribe form; POST subscribes an application.

    ``?version=`` picks one of the live (published or deprecated) versions; the default is the
    newest published one. Deprecated and blocked APIs show a banner and no subscribe form
    (``subscription_create`` refuses them anyway).
    """
    api = _get_api_for_reader(request, slug)
    # The provider and staff preview drafts (a draft API, or a draft version of a listed one)
    # here before publishing; everyone else sees live versions only.
    manages = API.objects.managed_by(request.user).filter(pk=api.pk).exists()
    shown = (*APIVersion.LIVE_STATUSES, APIVersion.Status.DRAFT) if manages else APIVersion.LIVE_STATUSES
    versions = list(
        api.versions.filter(status__in=shown).defer("document", "source", "source_files").order_by("-created")
    )
    version = _default_version(versions)
    if requested := clean_text(request.GET.get("version"), limit=64):
        version = next((v for v in versions if v.version == requested), None)
    if version is None:
        raise Http404("No such published version.")

    subscribable = api.status == API.Status.PUBLISHED
    form = None
    if request.user.is_authenticated and subscribable:
        # ``?plan=<id>`` preselects a plan (the way back from adding a payment method).
        chosen = request.GET.get("plan", "")
        initial = {"plan": int(chosen)} if chosen.isdigit() and len(chosen) < 12 else {}
        form = SubscribeForm(
            request.POST if request.method == "POST" else None, user=request.user, api=api, initial=initial
        )
    if request.method == "POST":
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if form is None:
            messages.error(
                request, f"{api.name} is {api.get_status_display().lower()}: it accepts no new subscriptions."
            )
            return redirect(api)
        if form.is_valid() and (subscription := _subscribe(form, request)) is not None:
            _announce(request, subscription)
            return redirect(subscription.application)

    context = {
        "api": api,
        "summary_repeats_description": summary_repeats_description(api),
        "version": version,
        "versions": versions,
        "newest_published": _default_version(
            [v for v in versions if v.status == APIVersion.Status.PUBLISHED]
        ),
        "channels": channels_of(version),
        "plans": api.plans.filter(is_approved=True),
        "form": form,
        "subscribable": subscribable,
        "preview": manages
        and (api.status not in API.LISTED_STATUSES or version.status == APIVersion.Status.DRAFT),
        "documentation": _documentation(version),
        # Paid plan cards say up front that subscribing needs a payment method (billing's check).
        "require_payment_method": settings.BILLING_REQUIRE_PAYMENT_METHOD,
    }
    return render(request, "portal/api_detail.html", context)


def _documentation(version: APIVersion) -> dict[str, object]:
    """What the Documentation tab needs: the consumer document's download URLs, and whether the
    document is too large to render without asking (``EMBED_DOCUMENT_LIMIT``).

    The tab fetches the JSON download when it opens rather than carrying the document in the
    page, so the page's size does not grow with the document and no raw document text sits in
    the HTML. The size is that of the uploaded text, measured in the database without loading it.
    """
    size = (
        APIVersion.objects.filter(pk=version.pk)
        .annotate(size=Length("source"))
        .values_list("size", flat=True)[0]
    )
    return {
        "large": (size or 0) > DOCUMENT_RENDER_LIMIT,
        "size": size or 0,
        "json_url": reverse("portal:api_document", args=[version.api.slug, version.version, "json"]),
        "yaml_url": reverse("portal:api_document", args=[version.api.slug, version.version, "yaml"]),
    }


def _get_visible_version(request: HttpRequest, slug: str, version: str) -> APIVersion:
    """The version ``version`` of API ``slug`` if ``request.user`` may read its document, or 404.

    Anyone may read live (published or deprecated) versions of listed APIs; the API's provider
    and staff may also read drafts and retired ones, which stay invisible to everyone else.
    """
    api_version = get_object_or_404(APIVersion.objects.select_related("api"), api__slug=slug, version=version)
    api = api_version.api
    public = api.status in API.LISTED_STATUSES and api_version.status in APIVersion.LIVE_STATUSES
    user = request.user
    if public or (user.is_authenticated and (user.is_staff or api.provider_id == user.pk)):
        return api_version
    raise Http404("No such API version.")


def api_document(request: HttpRequest, slug: str, version: str, fmt: str) -> HttpResponse:
    """The consumer-facing AsyncAPI document of a version (``consumer_document``) as a YAML or
    JSON download: ``<slug>-<version>.asyncapi.<yaml|json>``."""
    if fmt not in FORMATS:
        raise Http404("Documents are offered as .yaml or .json.")
    api_version = _get_visible_version(request, slug, version)
    document = consumer_document(api_version=api_version, base_url=settings.EVENTGATE_PUBLIC_URL)
    return _attachment(
        document_dump(document, fmt=fmt), filename=f"{slug}-{api_version.version}.asyncapi.{fmt}", fmt=fmt
    )


def api_version_source(request: HttpRequest, slug: str, version: str) -> HttpResponse:
    """The provider's original upload of a version, byte-for-byte as stored (``APIVersion.source``,
    the root document of a .zip), for the API's provider and staff only; 404 for everyone else."""
    api_version = _get_visible_version(request, slug, version)
    user = request.user
    if not (user.is_authenticated and (user.is_staff or api_version.api.provider_id == user.pk)):
        raise Http404("No such API version.")
    fmt = "json" if api_version.source.lstrip().startswith("{") else "yaml"
    filename = api_version.source_filename or f"{slug}-{api_version.version}.asyncapi.{fmt}"
    return _attachment(api_version.source, filename=filename, fmt=fmt)


def _attachment(text: str, *, filename: str, fmt: str) -> HttpResponse:
    """``text`` as a UTF-8 download named ``filename`` (RFC 6266; non-ASCII names via RFC 5987)."""
    content_type = "application/json" if fmt == "json" else "application/yaml"
    response = HttpResponse(text.encode(), content_type=f"{content_type}; charset=utf-8")
    response.headers["Content-Disposition"] = content_disposition_header(
        as_attachment=True, filename=filename
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _announce(request: HttpRequest, subscription: Subscription) -> None:
    """Tell the consumer what happened and what to do next."""
    application, api, plan = subscription.application.name, subscription.api.name, subscription.plan.name
    if subscription.status == Subscription.Status.PENDING:
        messages.info(
            request,
            f"{application} asked to subscribe to {api} on the {plan} plan. "
            "An admin will review it; you can generate a key meanwhile.",
        )
    elif subscription.application.api_keys.usable().exists() or subscription.application.oauth_client_id:
        messages.success(
            request, f"{application} is subscribed to {api}. Its API keys and OAuth client work for it now."
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
