"""OAuth2 scopes of Eventgate's client credentials (django-oauth-toolkit), see docs/credentials.md.

Scope grammar (one scope-token of RFC 6749 §3.3 each, space-separated in requests):

- ``<api-slug>:<receive|send>``: every channel of the API in that direction;
- ``<api-slug>:<receive|send>:<channel address template>``: one channel, its AsyncAPI address
  template without leading or trailing ``/`` (``stock-prices:receive:prices/{symbol}``).

What a client may ask for (``SubscriptionScopes.get_available_scopes``) comes from its
application's active subscriptions and the channels and operations of the live versions of
those APIs. Asking for anything else answers ``invalid_scope`` (RFC 6749 §5.2); asking for
nothing grants everything available (§3.3 lets the server apply a default).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from oauth2_provider.oauth2_validators import OAuth2Validator
from oauth2_provider.scopes import BaseScopes
from oauth2_provider.views import RevokeTokenView as DOTRevokeTokenView
from oauth2_provider.views import TokenView as DOTTokenView
from oauthlib.oauth2.rfc6749.errors import InvalidScopeError

DIRECTIONS = ("receive", "send")
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), i.e. visible ASCII except " and \.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# The start of a scope in Eventgate's grammar: an API slug (Django SlugField) and a direction.
_SCOPE_FORM = re.compile(r"[-a-zA-Z0-9_]+:(receive|send)(:|$)")


def scope_name(*, api_slug: str, direction: str, channel: str | None = None) -> str:
    """The scope that allows ``direction`` on ``channel`` (a template, any ``/`` at either end is
    dropped) of API ``api_slug``, or on all its channels when ``channel`` is None.

    ``scope_name(api_slug="stock-prices", direction="receive", channel="/prices/{symbol}")`` →
    ``"stock-prices:receive:prices/{symbol}"``. Raises ``ValueError`` for a direction other than
    receive/send.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    if channel is None:
        return f"{api_slug}:{direction}"
    return f"{api_slug}:{direction}:{channel.strip('/')}"


def scope_is_token(scope: str) -> bool:
    """Whether ``scope`` can travel as one RFC 6749 §3.3 scope-token (no spaces, quotes or
    backslashes): channel templates that cannot are reachable only through the API-wide scope."""
    return bool(_SCOPE_TOKEN.fullmatch(scope))


def application_scopes(application_id: int) -> dict[str, str]:
    """Scope → description of everything application ``application_id`` may be granted now: for
    each active subscription, the API-wide scope of each direction some channel offers, and the
    scope of each channel and direction, over the live versions of the API (2 queries).

    Directions are the consumer's (``Operation.Action``): ``receive`` events from the gateway,
    ``send`` events to it.
    """
    from portal.models import API, APIVersion, Operation, Subscription

    api_ids = list(
        Subscription.objects.active()
        .filter(application_id=application_id, api__status__in=API.CONNECTABLE_STATUSES)
        .values_list("api_id", flat=True)
    )
    if not api_ids:
        return {}
    rows = (
        Operation.objects.filter(
            channel__api_version__api_id__in=api_ids,
            channel__api_version__status__in=APIVersion.LIVE_STATUSES,
        )
        .values_list("channel__api_version__api__slug", "channel__address", "action")
        .distinct()
        .order_by("channel__api_version__api__slug", "channel__address", "action")
    )
    scopes: dict[str, str] = {}
    for slug, address, action in rows:
        if action not in DIRECTIONS:
            continue
        verb = "Receive events from" if action == "receive" else "Send events to"
        scopes.setdefault(scope_name(api_slug=slug, direction=action), f"{verb} every channel of {slug}")
        channel_scope = scope_name(api_slug=slug, direction=action, channel=address)
        if scope_is_token(channel_scope):
            scopes.setdefault(channel_scope, f"{verb} {address.strip('/')} of {slug}")
    return dict(sorted(scopes.items()))


class SubscriptionScopes(BaseScopes):
    """django-oauth-toolkit scopes backend (``OAUTH2_PROVIDER["SCOPES_BACKEND_CLASS"]``).

    ``application`` is an ``oauth2_provider`` Application (the consumer key); the scopes come
    from the Eventgate application that owns it (``Application.oauth_client``). DOT's validator
    refuses a request whose scopes are not all available with ``invalid_scope`` (RFC 6749 §5.2)
    and gives a request without ``scope`` the default scopes, which here are all available ones.
    """

    def get_all_scopes(self) -> dict[str, str]:
        # DOT uses this only to describe a token's scopes (AccessToken.scopes) and on consent
        # pages, which client credentials do not have; enumerating every API's scopes is
        # neither needed nor cheap.
        return {}

    def get_available_scopes(
        self, application: Any = None, request: Any = None, *args: Any, **kwargs: Any
    ) -> list[str]:
        application_id = _eventgate_application_id(application)
        return list(application_scopes(application_id)) if application_id is not None else []

    def get_default_scopes(
        self, application: Any = None, request: Any = None, *args: Any, **kwargs: Any
    ) -> list[str]:
        # Everything available, said briefly: the API-wide scopes cover every channel scope.
        return [scope for scope in self.get_available_scopes(application, request) if scope.count(":") == 1]


def _eventgate_application_id(oauth_client: Any) -> int | None:
    """The id of the Eventgate application whose consumer key is ``oauth_client``, or None."""
    if oauth_client is None or getattr(oauth_client, "pk", None) is None:
        return None
    from portal.models import Application

    return Application.objects.filter(oauth_client_id=oauth_client.pk).values_list("pk", flat=True).first()


class ScopeExplainingValidator(OAuth2Validator):
    """DOT's validator, whose ``invalid_scope`` error (RFC 6749 §5.2) names the requested scopes
    the client may not have, so a consumer can tell a typo from a missing subscription."""

    def validate_scopes(
        self, client_id: str, scopes: list[str], client: Any, request: Any, *args: Any, **kwargs: Any
    ) -> bool:
        available = set(SubscriptionScopes().get_available_scopes(application=client, request=request))
        missing = [scope for scope in scopes if scope not in available]
        if not missing:
            return True
        # Only values in the scope grammar are named: anything else may be a secret pasted into
        # the wrong field, and error responses never carry credentials.
        named = [scope for scope in missing if _SCOPE_FORM.match(scope)]
        shown = ", ".join(_description_safe(scope) for scope in named[:3])
        others = len(missing) - min(len(named), 3)
        if not shown:
            plural = "s" if others != 1 else ""
            shown = f"{others} value{plural} not of the form <api>:<receive|send>[:<channel>]"
        elif others:
            shown += f" and {others} more"
        hint = (
            "scopes come from the application's active subscriptions"
            if available
            else "the application has no active subscription"
        )
        raise InvalidScopeError(description=f"Not available to this client: {shown} ({hint}).")


def _description_safe(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, with characters that ``error_description`` may not
    hold (RFC 6749 §5.2: %x20-21 / %x23-5B / %x5D-7E) replaced by ``?``."""
    cut = text[:limit] + ("..." if len(text) > limit else "")
    return "".join(ch if ch == " " or _SCOPE_TOKEN.fullmatch(ch) else "?" for ch in cut)


GRANT_TYPES = ("client_credentials",)
# Characters of a token request's scope parameter at most: an application with many subscribed
# channels stays far below; a longer value would be stored on the token and echoed back.
MAX_SCOPE_CHARS = 10_000


def _token_error(error: str, description: str) -> JsonResponse:
    """An RFC 6749 §5.2 error response: 400, JSON ``{"error", "error_description"}``, not cached."""
    response = JsonResponse({"error": error, "error_description": description}, status=400)
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"
    return response


def _request_problem(request: HttpRequest) -> str | None:
    """Why the form parameters or Basic credentials of an OAuth request cannot be processed, or
    None: a parameter given more than once (RFC 6749 §3.1, §3.2: "MUST NOT be included more than
    once"), or a NUL character (PostgreSQL text cannot hold one; DOT would answer a 500)."""
    for name, values in request.POST.lists():
        if len(values) > 1:
            return f"Duplicate {_description_safe(name, 40)} parameter."
        if "\x00" in name or "\x00" in values[0]:
            return f"The {_description_safe(name, 40)} parameter contains a NUL character."
    authorization = request.headers.get("Authorization", "")
    if authorization[:6].lower() == "basic ":
        try:
            credentials = base64.b64decode(authorization[6:].strip(), validate=True)
        except (ValueError, binascii.Error):
            return None  # DOT answers invalid_client
        if b"\x00" in credentials or b"%00" in credentials:
            return "The client credentials contain a NUL character."
    return None


class TokenView(DOTTokenView):
    """``/o/token/``: DOT's token endpoint (RFC 6749 §3.2) with ``ScopeExplainingValidator``,
    for the client credentials grant only (§4.4).

    Checked before DOT sees the request (DOT dispatches the device code grant on its own and
    answered a 500 when ``device_code`` was missing): ``grant_type`` missing or empty, a
    parameter given twice or holding a NUL character answer ``invalid_request``; a grant type
    other than ``client_credentials`` ``unsupported_grant_type``; a scope over
    ``MAX_SCOPE_CHARS`` characters ``invalid_scope`` (all 400, RFC 6749 §5.2).
    """

    validator_class = ScopeExplainingValidator

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if problem := _request_problem(request):
            return _token_error("invalid_request", problem)
        grant_type = request.POST.get("grant_type", "")
        if not grant_type:
            return _token_error("invalid_request", "Missing grant_type parameter (use client_credentials).")
        if grant_type not in GRANT_TYPES:
            return _token_error(
                "unsupported_grant_type",
                f"Grant type {_description_safe(grant_type)} is not supported; "
                "this server issues tokens for the client_credentials grant only.",
            )
        if len(request.POST.get("scope", "")) > MAX_SCOPE_CHARS:
            return _token_error("invalid_scope", f"The scope is longer than {MAX_SCOPE_CHARS:,} characters.")
        return super().post(request, *args, **kwargs)


class RevokeTokenView(DOTRevokeTokenView):
    """``/o/revoke_token/``: DOT's revocation endpoint (RFC 7009); a client revokes only its own
    tokens. The deletion closes the token's live connections (``gateway.signals``). Parameters
    given twice or holding a NUL character answer ``invalid_request`` (400, RFC 7009 §2.2.1)."""

    validator_class = ScopeExplainingValidator

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if problem := _request_problem(request):
            return _token_error("invalid_request", problem)
        return super().post(request, *args, **kwargs)
