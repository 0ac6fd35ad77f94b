"""Handshake authentication and authorization for gateway connections.

``credential_from_scope`` finds the credential in an ASGI scope; ``handshake_authorize`` (sync,
ORM) turns credential + URL into a ``Grant`` or raises ``HandshakeRefused`` with a reason that is
safe to log (it never contains the credential).
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import regex

from gateway.publishing import address_normalize, routing_key
from portal.models import API, APIKey, APIVersion, Channel, Subscription

# Seconds one handshake may spend matching its address against channel templates and parameter
# patterns, all together. Provider templates and JSON Schema patterns can backtrack
# exponentially (ReDoS, CWE-1333); a normal handshake needs well under a millisecond.
MATCH_TIME_BUDGET = 0.05


class HandshakeRefused(Exception):
    """The handshake must be refused; ``str(exc)`` is the reason, safe to log."""


class _MatchBudget:
    """The matching time left to one handshake, shared by all its template and pattern matches.

    Only time spent matching counts, not compiling: a 600-channel API compiles its templates once
    per process (``_template_regex``). ``run`` matches with the ``regex`` module's ``timeout=``
    (seconds for the whole call) and ``concurrent=True`` (the GIL is released while matching,
    so the event loop keeps serving other clients); it raises ``TimeoutError`` once the budget
    is spent.
    """

    def __init__(self, seconds: float = MATCH_TIME_BUDGET) -> None:
        self.left = seconds

    def run(
        self, pattern: regex.Pattern[str], value: str, *, search: bool = False
    ) -> regex.Match[str] | None:
        """``pattern.search(value)`` if ``search`` else ``pattern.match(value)``, within budget."""
        if self.left <= 0:
            raise TimeoutError("regex timed out")
        method = pattern.search if search else pattern.match
        started = time.monotonic()
        try:
            return method(value, timeout=self.left, concurrent=True)
        finally:
            self.left -= time.monotonic() - started


@functools.lru_cache(maxsize=4096)
def _template_regex(address: str) -> regex.Pattern[str]:
    """``Channel.address_regex()`` of the template ``address``, compiled once per process: the
    ``regex`` module's own cache holds 500 patterns, fewer than a large API's channels."""
    return Channel(address=address).address_regex()


@dataclass(frozen=True, slots=True)
class Grant:
    """What an accepted connection may do, decided once at the handshake."""

    key_id: int
    application_id: int
    subscription_id: int
    api_id: int
    api_version_id: int
    api_slug: str
    version: str
    address: str  # concrete, normalised: "prices/ACME"
    channel_template: str  # the AsyncAPI address template: "prices/{symbol}"
    routing_key: str


def credential_from_scope(scope: Mapping[str, Any]) -> str | None:
    """The credential of a WebSocket handshake, or None.

    Sources, in order: ``Authorization: Bearer <token>`` (RFC 6750 §2.1), then the
    ``access_token`` query parameter (RFC 6750 §2.3; browsers cannot set headers on a WebSocket
    handshake). Never log the result.
    """
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin1"))
    tokens = query.get("access_token")
    return tokens[0] if tokens and tokens[0] else None


def handshake_authorize(*, secret: str | None, api_slug: str, version: str, address: str) -> Grant:
    """Check a handshake for ``/ws/<api_slug>/<version>/<address>``; return its ``Grant``.

    The credential is checked first, so unauthenticated clients learn nothing about which APIs
    and channels exist. Raises ``HandshakeRefused`` when: the credential is missing, unknown,
    revoked or expired; the API is not connectable (``API.CONNECTABLE_STATUSES``: published or
    deprecated, so draft, blocked and retired APIs are refused); the application has no active subscription to
    it (pending ones included); the version is unknown or not live (``APIVersion.LIVE_STATUSES``:
    draft and retired versions are refused); the routing key of ``address`` would pass 255 bytes
    (checked right after the credential, before any matching); no channel template of
    the version matches ``address`` with valid parameters and a ``receive`` operation; matching
    takes more than ``MATCH_TIME_BUDGET`` seconds (a template or parameter pattern that
    backtracks badly on this address: refused, never accepted).
    """
    if not secret:
        raise HandshakeRefused("no credential")
    if "\x00" in secret + api_slug + version + address:
        # PostgreSQL text cannot hold NUL: refuse before any query (else a 500).
        raise HandshakeRefused("NUL character in the credential or path")
    key = APIKey.objects.for_secret(secret)
    if key is None:
        raise HandshakeRefused("unknown, revoked or expired API key")
    address = address_normalize(address)
    try:
        # Before any matching: the length cap also bounds how long a match can take. The API and
        # version are looked up by these exact strings below, so the key is the one events use.
        key_words = routing_key(api=api_slug, version=version, address=address)
    except ValueError as too_long:  # AMQP routing keys hold 255 bytes at most
        raise HandshakeRefused(f"key {key.pk}: {too_long}") from None
    api = API.objects.filter(slug=api_slug, status__in=API.CONNECTABLE_STATUSES).first()
    if api is None:
        raise HandshakeRefused(f"key {key.pk}: unknown or unpublished API {api_slug!r}")
    subscription = _active_subscription(key=key, api=api)
    api_version = api.versions.filter(version=version, status__in=APIVersion.LIVE_STATUSES).first()
    if api_version is None:
        raise HandshakeRefused(f"key {key.pk}: unknown or unpublished version {version!r} of {api_slug}")
    channels = api_version.channels.prefetch_related("operations")
    try:
        channel = channel_match(channels, address)
    except TimeoutError:
        raise HandshakeRefused(
            f"key {key.pk}: channel address took too long to match (over {MATCH_TIME_BUDGET} s) "
            f"in {api_slug} {version}"
        ) from None
    if channel is None:
        raise HandshakeRefused(f"key {key.pk}: no receivable channel {address!r} in {api_slug} {version}")
    return Grant(
        key_id=key.pk,
        application_id=key.application_id,
        subscription_id=subscription.pk,
        api_id=api.pk,
        api_version_id=api_version.pk,
        api_slug=api.slug,
        version=api_version.version,
        address=address,
        channel_template=channel.address,
        routing_key=key_words,
    )


def grant_still_allowed(grant: Grant) -> bool:
    """Whether ``grant``'s key is still usable, its subscription still active and its API and
    version still served (3 queries)."""
    return (
        APIKey.objects.usable().filter(pk=grant.key_id).exists()
        and Subscription.objects.active().filter(pk=grant.subscription_id).exists()
        and _served_versions([grant.api_version_id]) == {grant.api_version_id}
    )


@dataclass(frozen=True, slots=True)
class GrantsAllowed:
    """Of a set of grants: ids of usable keys, active subscriptions and served API versions."""

    key_ids: set[int]
    subscription_ids: set[int]
    api_version_ids: set[int]


def grants_allowed(grants: Iterable[Grant]) -> GrantsAllowed:
    """Of the keys, subscriptions and API versions of ``grants``: the ids of those still usable,
    active, and served (a live version of a connectable API).

    Three queries for any number of grants (the gateway's periodic audit of live connections).
    """
    grants = list(grants)
    keys = set(APIKey.objects.usable().filter(pk__in={g.key_id for g in grants}).values_list("pk", flat=True))
    subscriptions = set(
        Subscription.objects.active()
        .filter(pk__in={g.subscription_id for g in grants})
        .values_list("pk", flat=True)
    )
    versions = _served_versions({g.api_version_id for g in grants})
    return GrantsAllowed(key_ids=keys, subscription_ids=subscriptions, api_version_ids=versions)


def _served_versions(version_ids: Iterable[int]) -> set[int]:
    """Those of ``version_ids`` the gateway still serves: live versions of connectable APIs."""
    return set(
        APIVersion.objects.filter(
            pk__in=set(version_ids),
            status__in=APIVersion.LIVE_STATUSES,
            api__status__in=API.CONNECTABLE_STATUSES,
        ).values_list("pk", flat=True)
    )


def _active_subscription(*, key: APIKey, api: API) -> Subscription:
    subscriptions = Subscription.objects.filter(application_id=key.application_id, api=api)
    subscription = subscriptions.active().first()
    if subscription is not None:
        return subscription
    if subscriptions.pending().exists():
        raise HandshakeRefused(f"key {key.pk}: subscription to {api.slug} is pending approval")
    raise HandshakeRefused(f"key {key.pk}: application {key.application_id} is not subscribed to {api.slug}")


def channel_match(
    channels: Iterable[Channel], address: str, *, budget: _MatchBudget | None = None
) -> Channel | None:
    """The channel whose template matches the concrete ``address`` and lets consumers receive.

    A template's leading ``/`` is optional in the address (``/v1/marketdata/{symbol}`` matches
    ``v1/marketdata/btcusd``). Parameters are checked against their ``enum`` and ``pattern``
    (AsyncAPI 3.0 §Parameter Object; 2.x keeps them under ``schema``). With several matches
    the template with the fewest parameters (the most specific) wins.

    All matching shares one time budget (``MATCH_TIME_BUDGET`` seconds of matching unless
    ``budget`` is given) and runs in the ``regex`` module with the GIL released, so the event
    loop keeps serving other clients meanwhile. Raises ``TimeoutError`` when the budget runs
    out: the caller must refuse, since an unfinished match proves nothing.
    """
    budget = budget or _MatchBudget()
    candidates = []
    for channel in channels:
        values = _template_values(channel, address, budget)
        if values is None or not _parameters_valid(channel.parameters or {}, values, budget):
            continue
        if channel.can_receive:
            candidates.append((len(values), channel.pk, channel))
    return min(candidates, key=lambda item: item[:2])[2] if candidates else None


def _template_values(channel: Channel, address: str, budget: _MatchBudget) -> dict[str, str] | None:
    """Parameter name → value if ``address`` matches ``channel``'s template, else None.

    Raises ``TimeoutError`` when ``budget`` runs out."""
    names = re.findall(r"\{([^}]+)\}", channel.address)
    try:
        pattern = _template_regex(channel.address)
    except regex.error:  # e.g. two parameter names that differ only in punctuation
        return None
    match = budget.run(pattern, address)
    if match is None:
        return None
    return {name: match.group(re.sub(r"\W", "_", name)) for name in names}


def _parameters_valid(parameters: Mapping[str, Any], values: Mapping[str, str], budget: _MatchBudget) -> bool:
    for name, value in values.items():
        spec = parameters.get(name) or {}
        schema = spec.get("schema")
        schema = schema if isinstance(schema, dict) else {}
        enum = spec.get("enum") or schema.get("enum")
        if enum and value not in [str(item) for item in enum]:
            return False
        pattern = spec.get("pattern") or schema.get("pattern")
        if pattern and not _pattern_matches(pattern, value, budget):
            return False
    return True


def _pattern_matches(pattern: str, value: str, budget: _MatchBudget) -> bool:
    """Whether ``value`` matches the provider's JSON Schema ``pattern``.

    JSON Schema patterns are ECMA-262 and unanchored (JSON Schema Validation §6.3.3); the
    ``regex`` module agrees on the common subset. An unparsable pattern does not block access.
    The pattern comes from the provider and the value from the client, so ``^(a|aa)+$`` on a
    long value can backtrack exponentially: raises ``TimeoutError`` when ``budget`` runs out.
    """
    try:
        compiled = regex.compile(pattern)
    except regex.error:
        return True
    return budget.run(compiled, value, search=True) is not None
