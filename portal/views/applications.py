"""A consumer's applications: edit and delete them, their subscriptions (cancel; admins' reasons
shown), credentials (API keys with expiry and rotation, the OAuth2 consumer key and secret and
its access tokens; secrets shown once) and the live-events console."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from portal.forms import APIKeyForm, APIKeyRotateForm, ApplicationForm, add_service_errors, service_error_text
from portal.links import gateway_ws_url
from portal.models import APIKey, Application, Channel, Subscription
from portal.oauth import application_scopes, scope_name
from portal.services.credentials import (
    api_key_create,
    api_key_expiry,
    api_key_revoke,
    api_key_rotate,
    oauth_client_create,
    oauth_client_secret_regenerate,
    oauth_tokens_active,
    oauth_tokens_revoke,
)
from portal.services.limits import subscription_limits
from portal.services.subscriptions import (
    application_create,
    application_delete,
    application_update,
    subscription_cancel,
)
from portal.templatetags.eventgate import parameter_enum

# The secret of a just-generated key waits here for exactly one page view, then is deleted.
NEW_KEY_SESSION_KEY = "eventgate:new-api-key:{application_id}"
# The same for a just-made OAuth2 client secret.
NEW_CLIENT_SECRET_SESSION_KEY = "eventgate:new-client-secret:{application_id}"
# Access tokens listed on the application page (the newest; REST lists them all).
MAX_LISTED_TOKENS = 50
# APIs can have hundreds of channels; the live-events picker offers the first ones.
MAX_LIVE_TARGETS = 50
# Parameters can have hundreds of allowed values; the address field suggests the first ones.
MAX_HINTS_PER_PARAMETER = 12


def _get_application_for_user(request: HttpRequest, pk: int) -> Application:
    """The user's own application ``pk``, or 404 (never another user's)."""
    return get_object_or_404(Application, pk=pk, owner=request.user)


def _get_api_key_for_user(request: HttpRequest, application: Application, key_id: int) -> APIKey:
    """Key ``key_id`` of the user's ``application``, or 404."""
    return get_object_or_404(APIKey, pk=key_id, application=application, application__owner=request.user)


def _get_subscription_for_user(
    request: HttpRequest, application: Application, subscription_id: int
) -> Subscription:
    """Subscription ``subscription_id`` of the user's ``application``, or 404."""
    return get_object_or_404(
        Subscription.objects.select_related("api", "application"),
        pk=subscription_id,
        application=application,
        application__owner=request.user,
    )


@dataclass(frozen=True)
class AddressHint:
    """One allowed value of a channel parameter and the concrete address that uses it."""

    parameter: str
    value: str
    address: str


@dataclass(frozen=True)
class LiveTarget:
    """A receivable channel of one of the application's subscriptions, ready to connect to.

    ``base_url`` is the gateway URL up to the channel address (``ws://…/ws/<api>/<version>/``);
    the page appends an address and the key the user enters, so no key is ever needed here.
    """

    subscription: Subscription
    version: str
    channel: Channel
    address: str
    hints: list[AddressHint]

    @property
    def base_url(self) -> str:
        return gateway_ws_url(api_slug=self.subscription.api.slug, version=self.version, address="")

    def url(self, secret: str) -> str:
        """The full WebSocket URL of the example address, carrying ``secret``."""
        return gateway_ws_url(
            api_slug=self.subscription.api.slug, version=self.version, address=self.address, secret=secret
        )


def _address_hints(channel: Channel) -> list[AddressHint]:
    """Concrete addresses for the first enum values of each parameter (the others at their example)."""
    hints = []
    for name, spec in channel.parameters.items():
        for value in parameter_enum(spec)[:MAX_HINTS_PER_PARAMETER]:
            # Fill this parameter; the model fills the others as it does for the example address.
            partial = Channel(
                address=channel.address.replace(f"{{{name}}}", str(value)), parameters=channel.parameters
            )
            hints.append(AddressHint(parameter=name, value=str(value), address=partial.example_address()))
    return hints


def _live_targets(application: Application) -> list[LiveTarget]:
    """Receivable channels of the application's active and pending subscriptions, active first."""
    targets = []
    subscriptions = application.subscriptions.filter(
        status__in=[Subscription.Status.ACTIVE, Subscription.Status.PENDING]
    ).select_related("api", "plan")
    for subscription in sorted(subscriptions, key=lambda s: s.status != Subscription.Status.ACTIVE):
        version = subscription.api.latest_version()
        if version is None:
            continue
        for channel in version.channels.prefetch_related("operations"):
            if not channel.can_receive:
                continue
            targets.append(
                LiveTarget(
                    subscription=subscription,
                    version=version.version,
                    channel=channel,
                    address=channel.example_address(),
                    hints=_address_hints(channel),
                )
            )
    return targets[:MAX_LIVE_TARGETS]


@login_required
def application_list(request: HttpRequest) -> HttpResponse:
    """The user's applications; POST creates one and opens it."""
    form = ApplicationForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            application = application_create(owner=request.user, **form.cleaned_data)
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, f"Created {application.name}. Subscribe it to an API from the catalog.")
            return redirect(application)
    applications = Application.objects.filter(owner=request.user).annotate(
        live_subscriptions=Count(
            "subscriptions", filter=Q(subscriptions__status=Subscription.Status.ACTIVE), distinct=True
        ),
        pending_subscriptions=Count(
            "subscriptions", filter=Q(subscriptions__status=Subscription.Status.PENDING), distinct=True
        ),
        usable_keys=Count(
            "api_keys",
            filter=Q(api_keys__in=APIKey.objects.usable()),
            distinct=True,
        ),
    )
    return render(request, "portal/application_list.html", {"applications": applications, "form": form})


@dataclass(frozen=True)
class KeyRow:
    """An API key as the application page lists it: a status word, its badge colour, and a
    line saying until when it works and what replaced it."""

    key: APIKey
    status: str
    color: str
    detail: str

    @property
    def can_rotate(self) -> bool:
        return self.status == "active"

    @property
    def can_revoke(self) -> bool:
        return self.status in ("active", "ending")


def _key_row(key: APIKey, now: datetime, prefixes: dict[int, str]) -> KeyRow:
    created = f"created {key.created:%d %b %Y, %H:%M}"
    replaced = (
        f" · replaced by {prefixes.get(key.replaced_by_id, 'a newer key')}…" if key.replaced_by_id else ""
    )
    if key.revoked_at is not None:
        return KeyRow(key, "revoked", "secondary", f"{created} · revoked {key.revoked_at:%d %b %Y, %H:%M}")
    if key.expires_at is not None and key.expires_at <= now:
        word = "rotated" if key.replaced_by_id else "expired"
        return KeyRow(key, word, "secondary", f"{created} · ended {key.expires_at:%d %b %Y, %H:%M}{replaced}")
    if key.replaced_by_id is not None:
        return KeyRow(key, "ending", "warning", f"works until {key.expires_at:%d %b %Y, %H:%M} UTC{replaced}")
    if key.expires_at is not None:
        return KeyRow(key, "active", "success", f"{created} · expires {key.expires_at:%d %b %Y}")
    return KeyRow(key, "active", "success", f"{created} · never expires")


def _example_scope(target: LiveTarget | None, scopes: dict[str, str]) -> str:
    """The scope the OAuth snippet asks for: receiving ``target``'s channel (the one the connect
    snippet next to it opens), or its whole API if that channel's template cannot travel as a
    scope-token; "" (ask for no scope, which grants everything available) if neither is
    available, so the two snippets never disagree."""
    if target is None:
        return ""
    api_slug = target.subscription.api.slug
    for scope in (
        scope_name(api_slug=api_slug, direction="receive", channel=target.channel.address),
        scope_name(api_slug=api_slug, direction="receive"),
    ):
        if scope in scopes:
            return scope
    return ""


def _credentials_context(
    request: HttpRequest, application: Application, oauth_target: LiveTarget | None
) -> dict[str, object]:
    """The application page's credentials: key rows, the OAuth2 client, its tokens and scopes,
    and any secret made by the previous request (popped: shown once). ``oauth_target`` is the
    channel the OAuth snippets use: the token snippet asks for a scope that allows it."""
    now = timezone.now()
    keys = list(application.api_keys.all())
    prefixes = {key.pk: key.prefix for key in keys}
    tokens = oauth_tokens_active(application)
    scopes = application_scopes(application.pk)
    client_secret = request.session.pop(
        NEW_CLIENT_SECRET_SESSION_KEY.format(application_id=application.pk), None
    )
    return {
        "keys": keys,
        "key_rows": [_key_row(key, now, prefixes) for key in keys],
        "key_form": APIKeyForm(),
        "grace_choices": APIKeyRotateForm.GRACE_CHOICES,
        "oauth_client": application.oauth_client,
        "client_secret": client_secret,
        "tokens": list(tokens[:MAX_LISTED_TOKENS]),
        "token_count": tokens.count(),
        "scopes": scopes,
        # A narrow one for the snippet, as least privilege suggests: the connect snippet's channel.
        "example_scope": _example_scope(oauth_target, scopes),
        "oauth_ws_url": oauth_target.url("") if oauth_target else "",
        "token_url": f"{settings.EVENTGATE_PUBLIC_URL.rstrip('/')}/o/token/",
    }


@login_required
def application_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """Subscriptions and credentials of one application, the limits of its active and suspended
    subscriptions (``portal.services.limits``: live windows and this month's quotas), and the
    live-events console; shows a new key's or client secret's secret once (the console takes it
    from the page, never from the server)."""
    application = _get_application_for_user(request, pk)
    secret = request.session.pop(NEW_KEY_SESSION_KEY.format(application_id=application.pk), None)
    subscriptions = application.subscriptions.select_related("api", "plan")
    targets = _live_targets(application)
    first_target = targets[0] if targets else None
    # The console only offers what the gateway would accept: active subscriptions.
    live_targets = [t for t in targets if t.subscription.status == Subscription.Status.ACTIVE]
    context = {
        "application": application,
        "subscriptions": subscriptions,
        "has_live_subscription": any(s.status in ("active", "pending") for s in subscriptions),
        "secret": secret,
        # The CLI cannot set headers: its URL carries the key; the JavaScript snippet offers it as
        # a subprotocol instead (docs/credentials.md), so its URL has none.
        "snippet_url": first_target.url(secret) if first_target and secret else "",
        "snippet_ws_url": first_target.url("") if first_target else "",
        "first_target": first_target,
        "live_targets": live_targets,
        # (subscription, its limits) of the subscriptions that can carry events.
        "subscription_limits": [
            (subscription, subscription_limits(subscription))
            for subscription in subscriptions
            if subscription.status in (Subscription.Status.ACTIVE, Subscription.Status.SUSPENDED)
        ],
        # Tokens are scoped from active subscriptions only: the OAuth snippets use the first of those.
        **_credentials_context(request, application, live_targets[0] if live_targets else None),
    }
    return render(request, "portal/application_detail.html", context)


@login_required
@require_POST
def key_generate(request: HttpRequest, pk: int) -> HttpResponse:
    """Create a key (name and expiry from ``APIKeyForm``; none given: "default", never expires)
    and redirect to the application page, which shows its secret once."""
    application = _get_application_for_user(request, pk)
    form = APIKeyForm(request.POST or {"expires": "never"})
    if not form.is_valid():
        messages.error(request, _form_error_text(form))
        return redirect(application)
    data = form.cleaned_data
    try:
        if data["expires"] == "date":
            expires_at = api_key_expiry(on=data["expires_on"])
        else:
            expires_at = api_key_expiry(days=None if data["expires"] == "never" else int(data["expires"]))
        key, secret = api_key_create(application=application, name=data["name"], expires_at=expires_at)
    except ValidationError as error:
        messages.error(request, service_error_text(error))
        return redirect(application)
    request.session[NEW_KEY_SESSION_KEY.format(application_id=application.pk)] = secret
    messages.success(request, f"Generated key {key.prefix}… — copy it now: it will not be shown again.")
    return redirect(application)


def _form_error_text(form: APIKeyForm | APIKeyRotateForm) -> str:
    """A form's errors as one line for a flash message, each after its field's label."""
    parts = []
    for name, errors in form.errors.items():
        label = form.fields[name].label if name in form.fields else ""
        parts.append(f"{label}: {' '.join(errors)}" if label else " ".join(errors))
    return " ".join(parts)


@login_required
@require_POST
def key_revoke(request: HttpRequest, pk: int, key_id: int) -> HttpResponse:
    """POST: revoke one of the user's keys; its live connections close with 4401."""
    application = _get_application_for_user(request, pk)
    key = _get_api_key_for_user(request, application, key_id)
    api_key_revoke(key=key)
    messages.success(request, f"Revoked key {key.prefix}… — connections using it are refused from now on.")
    return redirect(application)


@login_required
@require_POST
def key_rotate(request: HttpRequest, pk: int, key_id: int) -> HttpResponse:
    """POST ``grace_seconds``: replace one of the user's keys; the page shows the new secret once,
    and the old key works until the grace period ends."""
    application = _get_application_for_user(request, pk)
    key = _get_api_key_for_user(request, application, key_id)
    form = APIKeyRotateForm(request.POST)
    if not form.is_valid():
        messages.error(request, _form_error_text(form))
        return redirect(application)
    try:
        new_key, secret = api_key_rotate(key=key, grace_seconds=form.cleaned_data["grace_seconds"])
    except ValidationError as error:
        messages.error(request, service_error_text(error))
        return redirect(application)
    key.refresh_from_db()
    request.session[NEW_KEY_SESSION_KEY.format(application_id=application.pk)] = secret
    if key.is_usable:
        until = f"keeps working until {key.expires_at:%d %b %Y, %H:%M} UTC"
    else:
        until = "is refused from now on"
    messages.success(
        request, f"Rotated {key.prefix}… to {new_key.prefix}… — copy the new key now. The old key {until}."
    )
    return redirect(application)


@login_required
@require_POST
def oauth_client_create_view(request: HttpRequest, pk: int) -> HttpResponse:
    """POST: give the application a consumer key and secret; the page shows the secret once."""
    application = _get_application_for_user(request, pk)
    try:
        client, secret = oauth_client_create(application=application)
    except ValidationError as error:
        messages.error(request, service_error_text(error))
    else:
        request.session[NEW_CLIENT_SECRET_SESSION_KEY.format(application_id=application.pk)] = secret
        messages.success(request, "Created the consumer key and secret — copy the secret now.")
    return redirect(f"{application.get_absolute_url()}#oauth")


@login_required
@require_POST
def oauth_client_secret_regenerate_view(request: HttpRequest, pk: int) -> HttpResponse:
    """POST: replace the client secret; the page shows the new one once."""
    application = _get_application_for_user(request, pk)
    try:
        client, secret = oauth_client_secret_regenerate(application=application)
    except ValidationError as error:
        messages.error(request, service_error_text(error))
    else:
        request.session[NEW_CLIENT_SECRET_SESSION_KEY.format(application_id=application.pk)] = secret
        messages.success(
            request, "Regenerated the client secret — the old one no longer works. Copy the new one now."
        )
    return redirect(f"{application.get_absolute_url()}#oauth")


@login_required
@require_POST
def oauth_token_revoke_view(request: HttpRequest, pk: int, token_id: int) -> HttpResponse:
    """POST: revoke one access token of the application's client; its connections close (4401)."""
    application = _get_application_for_user(request, pk)
    if not oauth_tokens_revoke(application=application, token_ids=[token_id]):
        raise Http404("No such access token.")
    messages.success(request, f"Revoked access token #{token_id} — connections using it are closed.")
    return redirect(f"{application.get_absolute_url()}#oauth")


@login_required
@require_POST
def oauth_tokens_revoke_all_view(request: HttpRequest, pk: int) -> HttpResponse:
    """POST: revoke every access token of the application's client."""
    application = _get_application_for_user(request, pk)
    count = oauth_tokens_revoke(application=application)
    messages.success(request, f"Revoked {count} access token{'s' if count != 1 else ''}.")
    return redirect(f"{application.get_absolute_url()}#oauth")


@login_required
def application_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """Rename one of the user's applications or change its description."""
    application = _get_application_for_user(request, pk)
    initial = {"name": application.name, "description": application.description}
    form = ApplicationForm(request.POST if request.method == "POST" else None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            application_update(application=application, **form.cleaned_data)
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, f"Saved {application.name}.")
            return redirect(application)
    return render(request, "portal/application_edit.html", {"application": application, "form": form})


@login_required
def application_delete_view(request: HttpRequest, pk: int) -> HttpResponse:
    """GET: confirm; POST: delete one of the user's applications (refused while it has live
    subscriptions or invoiced usage, with the reason)."""
    application = _get_application_for_user(request, pk)
    if request.method == "POST":
        name = application.name
        try:
            application_delete(application=application)
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
            return redirect(application)
        messages.success(request, f"Deleted {name} and its API keys.")
        return redirect("portal:application_list")
    return render(request, "portal/application_delete.html", {"application": application})


@login_required
@require_POST
def subscription_cancel_view(request: HttpRequest, pk: int, subscription_id: int) -> HttpResponse:
    """POST: cancel a subscription of the user's application; its live connections close (4403)."""
    application = _get_application_for_user(request, pk)
    subscription = _get_subscription_for_user(request, application, subscription_id)
    try:
        subscription_cancel(subscription=subscription, actor=request.user)
    except (ValidationError, PermissionDenied) as error:
        messages.error(request, service_error_text(error))
    else:
        messages.success(
            request,
            f"Cancelled the subscription to {subscription.api.name}; connections using it are closed.",
        )
    return redirect(application)
