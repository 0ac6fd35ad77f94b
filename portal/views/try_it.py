"""The "Try it" page: a consumer picks one of their applications, a credential and a channel of an
API the application is subscribed to, connects from the browser, watches live events arrive and
sends one where the channel allows it (static/js/try-it.js does the connecting).

Deep links: ``/try/?application=<id>&api=<slug>&version=<version>&channel=<channel>``, every
parameter optional. ``channel`` is a channel's key, its address template (``prices/{symbol}``)
or a concrete address (``prices/ACME``, which also fills the parameter values).

Credentials: API keys are stored hashed, so the page cannot reuse an existing key; it issues a
temporary test key (``test_key_issue``: one hour) whose secret goes only into the page's script
memory, or takes a key or token the user pastes. Either travels to the gateway only in the
``Sec-WebSocket-Protocol`` entry ``eventgate.bearer.<token>`` (never in a URL).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import regex
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import Prefetch, Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from portal.links import gateway_ws_url
from portal.models import API, APIKey, APIVersion, Application, Channel, Operation, Subscription
from portal.templatetags.eventgate import parameter_description, parameter_enum

# How long a test key issued by the page stays valid.
TEST_KEY_LIFETIME = timedelta(hours=1)
# Test keys one application may be issued per TEST_KEY_LIFETIME: the page keeps its key for the
# whole visit, so more than this means a script is minting keys.
TEST_KEYS_PER_HOUR = 20
TEST_KEY_NAME_PREFIX = "try-it"
# Channels offered per API version; documents with hundreds of channels exist (600 in the shared
# examples), and the picker stays usable with all of them, but the page must stay small.
MAX_CHANNELS_PER_VERSION = 1000
# Seconds a deep link's concrete address may spend matching channel templates (provider-written
# patterns; the gateway applies the same kind of budget).
ADDRESS_MATCH_BUDGET = 0.05
# Longest query parameter value considered; longer ones are refused with a message.
MAX_PARAM_LENGTH = 1000


def _get_application_for_user(request: HttpRequest, pk: int) -> Application:
    """The user's own application ``pk``, or 404 (never another user's)."""
    return get_object_or_404(Application, pk=pk, owner=request.user)


@dataclass
class Selection:
    """What a deep link asked for, resolved against the application's subscriptions.

    ``problems`` are sentences for the user about query parameters that did not resolve; the
    page shows them and falls back to the first channel it can offer.
    """

    api: str = ""
    version: str = ""
    channel: str = ""
    values: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@login_required
@require_GET
def try_it(request: HttpRequest) -> HttpResponse:
    """The Try it page for one of the user's applications (``?application=``, default: the first
    one subscribed to ``?api=``, else the first with an active subscription, else the first).

    Another user's application id is a 404; malformed or unknown ``application``, ``api``,
    ``version`` or ``channel`` values are explained on the page (never a 500).
    """
    applications = list(Application.objects.filter(owner=request.user).order_by("name", "pk"))
    problems: list[str] = []
    raw_application = _param(request, "application", problems)
    raw_api = _param(request, "api", problems)
    application = None
    if raw_application:
        if raw_application.isascii() and raw_application.isdigit() and len(raw_application) < 19:
            application = _get_application_for_user(request, int(raw_application))
        else:
            problems.append(
                f"“application” must be the number of one of your applications, not “{raw_application[:60]}”."
            )
    if application is None:
        application = _default_application(applications, api_slug=raw_api)

    context: dict[str, Any] = {"applications": applications, "application": application}
    if application is not None:
        subscriptions = _subscriptions(application)
        offered = [_api_target(s) for s in subscriptions if _offered(s)]
        targets = [target for target in offered if target["versions"]]
        unavailable = [s for s in subscriptions if not _offered(s)]
        selection = _select(
            offered,
            unavailable={s.api.slug: s.api.name for s in unavailable},
            api=raw_api,
            version=_param(request, "version", problems),
            channel=_param(request, "channel", problems),
        )
        problems.extend(selection.problems)
        context["targets"] = targets
        context["unavailable"] = unavailable
        context["page_data"] = _page_data(application, targets, selection)
    context["problems"] = problems
    return render(request, "portal/try_it.html", context)


def _page_data(
    application: Application, targets: list[dict[str, Any]], selection: Selection
) -> dict[str, Any]:
    """What the page's script reads (``json_script`` ``try-it-data``): the application, where to
    ask for a test key, the frame size limit (bytes), the APIs (``_api_target``) and the
    deep link's selection. No credential is ever part of it."""
    return {
        "application": {"id": application.pk, "name": application.name},
        "key_url": reverse("portal:try_it_key", args=[application.pk]),
        "max_message_bytes": settings.GATEWAY_MAX_MESSAGE_BYTES,
        "apis": targets,
        "selected": {
            "api": selection.api,
            "version": selection.version,
            "channel": selection.channel,
            "values": selection.values,
        },
    }


def _param(request: HttpRequest, name: str, problems: list[str]) -> str:
    """Query parameter ``name``, stripped; "" (with a problem noted) when it is too long."""
    value = request.GET.get(name, "").strip().replace("\x00", "")
    if len(value) > MAX_PARAM_LENGTH:
        problems.append(f"“{name}” is longer than {MAX_PARAM_LENGTH} characters; it was ignored.")
        return ""
    return value


def _default_application(applications: list[Application], *, api_slug: str) -> Application | None:
    """The application a page without ``?application=`` shows: the first of ``applications``
    with an active subscription to ``api_slug``, else with any active subscription, else the first."""
    if not applications:
        return None
    active = Subscription.objects.active().filter(application__in=applications)
    if api_slug:
        subscribed = set(active.filter(api__slug=api_slug).values_list("application_id", flat=True))
        if subscribed:
            return next(a for a in applications if a.pk in subscribed)
    with_active = set(active.values_list("application_id", flat=True))
    return next((a for a in applications if a.pk in with_active), applications[0])


def _subscriptions(application: Application) -> list[Subscription]:
    """The application's subscriptions that are (or may become) live, with the live versions,
    channels and operations of their APIs, in API name order."""
    channels = Channel.objects.prefetch_related(
        Prefetch("operations", queryset=Operation.objects.order_by("action"))
    ).order_by("address", "pk")
    versions = (
        APIVersion.objects.filter(status__in=APIVersion.LIVE_STATUSES)
        .defer("document", "source", "source_files")
        .prefetch_related(Prefetch("channels", queryset=channels))
        .order_by("-created", "-pk")
    )
    return list(
        application.subscriptions.filter(
            status__in=[
                Subscription.Status.ACTIVE,
                Subscription.Status.PENDING,
                Subscription.Status.SUSPENDED,
            ]
        )
        .select_related("api", "plan")
        .prefetch_related(Prefetch("api__versions", queryset=versions))
        .order_by("api__name", "pk")
    )


def _offered(subscription: Subscription) -> bool:
    """Whether the gateway would accept connections under ``subscription`` (active, API
    published or deprecated); the others are listed with the reason instead."""
    return (
        subscription.status == Subscription.Status.ACTIVE
        and subscription.api.status in API.CONNECTABLE_STATUSES
    )


def _api_target(subscription: Subscription) -> dict[str, Any]:
    """One subscribed API as the page's script sees it::

    {"slug", "name", "status", "plan", "versions": [{"version", "status", "base_url",
     "channels": [channel_data(...)], "truncated"}]}
    """
    api = subscription.api
    versions = []
    for version in api.versions.all():
        channels = list(version.channels.all())
        versions.append(
            {
                "version": version.version,
                "status": version.status,
                "base_url": gateway_ws_url(api_slug=api.slug, version=version.version, address=""),
                "channels": [channel_data(channel) for channel in channels[:MAX_CHANNELS_PER_VERSION]],
                "truncated": max(0, len(channels) - MAX_CHANNELS_PER_VERSION),
            }
        )
    return {
        "slug": api.slug,
        "name": api.name,
        "status": api.status,
        "plan": subscription.plan.name,
        "versions": versions,
    }


def channel_data(channel: Channel) -> dict[str, Any]:
    """A channel as the page's script needs it::

        {"key", "address" (template), "title", "receive", "send" (bools: Operation.action),
         "parameters": [{"name", "enum", "default", "pattern", "description"}],
         "example": JSON text of an example payload for sending ("" when it cannot send)}

    Parameters follow AsyncAPI 3.0 §Parameter Object (``enum``, ``default``; 2.x keeps them in
    ``schema``, and 2.x ``schema.pattern`` is kept too).
    """
    actions = {operation.action for operation in channel.operations.all()}
    parameters = []
    for name in _parameter_names(channel.address):
        spec = channel.parameters.get(name) if isinstance(channel.parameters, dict) else None
        spec = spec if isinstance(spec, dict) else {}
        schema = spec.get("schema") if isinstance(spec.get("schema"), dict) else {}
        default = spec.get("default", schema.get("default"))
        examples = spec.get("examples") or schema.get("examples")
        if default is None and isinstance(examples, list) and examples:
            default = examples[0]
        pattern = spec.get("pattern") or schema.get("pattern")
        parameters.append(
            {
                "name": name,
                "enum": [str(value) for value in parameter_enum(spec)],
                "default": "" if default is None else str(default),
                "pattern": pattern if isinstance(pattern, str) else "",
                "description": parameter_description(spec),
            }
        )
    send = Operation.Action.SEND in actions
    return {
        "key": channel.key,
        "address": channel.address,
        "title": channel.title,
        "receive": Operation.Action.RECEIVE in actions,
        "send": send,
        "parameters": parameters,
        "example": _send_example(channel) if send else "",
    }


def _parameter_names(address: str) -> list[str]:
    """Parameter names of an address template, in order, each once (``a/{x}/{y}`` → x, y)."""
    names: list[str] = []
    for name in regex.findall(r"\{([^{}]+)\}", address):
        if name not in names:
            names.append(name)
    return names


def _send_example(channel: Channel) -> str:
    """Indented JSON of an example payload for the channel's first ``send`` message."""
    for operation in channel.operations.all():
        if operation.action != Operation.Action.SEND:
            continue
        for message in operation.messages or []:
            if isinstance(message, dict) and isinstance(message.get("payload"), dict):
                return json.dumps(payload_example(message["payload"]), indent=2, ensure_ascii=False)
    return "{}"


def payload_example(schema: Any, *, depth: int = 0) -> Any:
    """An example value that fits the JSON Schema ``schema``, to start a send box with.

    The schema's own ``examples[0]``, ``example``, ``const``, ``default`` or first ``enum`` value
    wins (JSON Schema Validation 2020-12 §6.1.2, §6.1.3, §9.2-9.5); otherwise one is built from
    ``type``: an object gets its ``properties`` (required ones first), an array one item,
    ``oneOf``/``anyOf`` take the first choice and ``allOf`` merges objects. Unresolved ``$ref``s
    and anything nested deeper than 6 levels become ``None``.
    """
    if not isinstance(schema, dict) or depth > 6:
        return None
    for keyword in ("examples", "enum"):
        values = schema.get(keyword)
        if isinstance(values, list) and values:
            return values[0]
    for keyword in ("example", "const", "default"):
        if keyword in schema:
            return schema[keyword]
    for keyword in ("oneOf", "anyOf"):
        choices = schema.get(keyword)
        if isinstance(choices, list) and choices:
            return payload_example(choices[0], depth=depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            value = payload_example(part, depth=depth + 1)
            if isinstance(value, dict):
                merged.update(value)
        return merged
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and isinstance(schema.get("properties"), dict)):
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        # Required fields first (JSON columns may have reordered the properties).
        required = schema.get("required") if isinstance(schema.get("required"), list) else []
        names = sorted(properties, key=lambda name: name not in required)[:50]
        return {name: payload_example(properties[name], depth=depth + 1) for name in names}
    if kind == "array":
        return [payload_example(schema.get("items"), depth=depth + 1)] if schema.get("items") else []
    return _scalar_example(kind, schema.get("format"))


def _scalar_example(kind: Any, fmt: Any) -> Any:
    """An example of a JSON Schema scalar ``type`` with its ``format`` (Validation §7.3)."""
    if kind == "string":
        return {
            "date-time": timezone.now().replace(microsecond=0).isoformat().replace("+00:00", "Z"),
            "date": timezone.now().date().isoformat(),
            "uuid": str(uuid.uuid4()),
            "email": "someone@example.com",
            "uri": "https://example.com/",
        }.get(fmt, "")
    if kind in ("number", "integer"):
        return 0
    if kind == "boolean":
        return False
    return None


def _select(
    targets: list[dict[str, Any]], *, unavailable: dict[str, str], api: str, version: str, channel: str
) -> Selection:
    """Resolve a deep link's ``api``, ``version`` and ``channel`` against ``targets``
    (``_api_target`` dicts); unknown values become ``problems`` and fall back to defaults.
    ``unavailable``: slug → name of APIs the application has a subscription to that the page
    does not offer (listed on the page with the reason)."""
    selection = Selection()
    usable = [target for target in targets if target["versions"]]
    if api in unavailable:
        selection.problems.append(
            f"{unavailable[api]} cannot be tried with this application now: see “Not offered here” below."
        )
    elif api and not usable:
        selection.problems.append(f"This application has no active subscription to “{api[:100]}”.")
    if not usable:
        return selection
    target = usable[0]
    if api and api not in unavailable:
        found = next((t for t in targets if t["slug"] == api), None)
        if found is None:
            selection.problems.append(
                f"This application has no active subscription to “{api[:100]}”: subscribe it from the "
                "API's page in the catalog, or pick one of its APIs below."
            )
        elif not found["versions"]:
            selection.problems.append(f"{found['name']} has no published version to connect to.")
        else:
            target = found
    selection.api = target["slug"]
    versions = target["versions"]
    chosen = versions[0]
    if version:
        chosen = next((v for v in versions if v["version"] == version), None) or chosen
        if chosen["version"] != version:
            selection.problems.append(
                f"{target['name']} has no published version “{version[:64]}”; showing {chosen['version']}."
            )
    selection.version = chosen["version"]
    if channel:
        found_channel, values = _channel_for(chosen["channels"], channel)
        if found_channel is None:
            selection.problems.append(
                f"{target['name']} {chosen['version']} has no channel “{channel[:200]}”; pick one below."
            )
        else:
            selection.channel = found_channel["key"]
            selection.values = _allowed_values(found_channel, values, selection.problems)
    return selection


def _allowed_values(channel: dict[str, Any], values: dict[str, str], problems: list[str]) -> dict[str, str]:
    """Those of a deep link's parameter ``values`` that their ``enum`` allows; a problem is noted
    for each other one (patterns are checked by the page's script as the user types)."""
    allowed = {}
    for parameter in channel["parameters"]:
        value = values.get(parameter["name"])
        if value is None:
            continue
        if parameter["enum"] and value not in parameter["enum"]:
            choices = ", ".join(parameter["enum"][:12]) + (" …" if len(parameter["enum"]) > 12 else "")
            problems.append(
                f"“{value[:100]}” is not an allowed value of {{{parameter['name']}}}: one of {choices}."
            )
            continue
        allowed[parameter["name"]] = value
    return allowed


def _channel_for(channels: list[dict[str, Any]], wanted: str) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The channel ``wanted`` names, by key, address template or concrete address (whose
    parameter values are returned too, if they match the template); ``(None, {})`` if none."""
    for channel in channels:
        if wanted == channel["key"]:
            return channel, {}
    for channel in channels:
        if wanted.strip("/") == channel["address"].strip("/"):
            return channel, {}
    deadline = time.monotonic() + ADDRESS_MATCH_BUDGET
    for channel in channels:
        if not channel["parameters"]:
            continue
        left = deadline - time.monotonic()
        try:
            pattern = Channel(address=channel["address"]).address_regex()
            match = pattern.match(wanted, timeout=left, concurrent=True) if left > 0 else None
        except regex.error:
            continue
        except TimeoutError:
            return None, {}
        if left <= 0:
            return None, {}
        if match is not None:
            values = {
                name: match.group(regex.sub(r"\W", "_", name))
                for name in (p["name"] for p in channel["parameters"])
            }
            return channel, values
    return None, {}


@login_required
@require_POST
@never_cache
def test_key_issue(request: HttpRequest, pk: int) -> HttpResponse:
    """POST (CSRF-protected): issue a test API key for the user's application ``pk``, valid for
    ``TEST_KEY_LIFETIME``; answer JSON ``{"secret", "prefix", "name", "expires_at"}`` (ISO 8601).

    The secret is in this response body only: not in a URL, a redirect, the session or a log.
    Another user's application is a 404; more than ``TEST_KEYS_PER_HOUR`` test keys for one
    application within the lifetime is a 429 with ``{"error"}``.
    """
    application = _get_application_for_user(request, pk)
    now = timezone.now()
    with transaction.atomic():
        # Lock the application row so two requests cannot both pass the count.
        Application.objects.select_for_update().filter(pk=application.pk).first()
        recent = APIKey.objects.filter(
            Q(name__startswith=f"{TEST_KEY_NAME_PREFIX} "),
            application=application,
            created__gt=now - TEST_KEY_LIFETIME,
        ).count()
        if recent >= TEST_KEYS_PER_HOUR:
            return JsonResponse(
                {
                    "error": f"{application.name} was issued {recent} test keys in the last hour, the most "
                    "allowed. Paste one of its keys instead, or try again later."
                },
                status=429,
            )
        key, secret = APIKey.generate(
            application=application, name=f"{TEST_KEY_NAME_PREFIX} {now:%Y-%m-%d %H:%M} UTC"
        )
        key.expires_at = now + TEST_KEY_LIFETIME
        key.save(update_fields=["expires_at"])
    return JsonResponse(
        {"secret": secret, "prefix": key.prefix, "name": key.name, "expires_at": key.expires_at.isoformat()}
    )
