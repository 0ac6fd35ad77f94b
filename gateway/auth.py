"""Handshake authentication and authorization for gateway connections.

``handshake_authorize`` (sync, ORM) turns a credential and a gateway URL into a ``Grant``, or
raises ``HandshakeRefused(code, reason)`` with the close code of the refusal contract
(docs/gateway.md, "Refusals and close codes") and a reason that is safe to show and to log (it
never contains the credential). ``channel_authorize`` does the per-channel part (address,
parameters, operations, scope) for the handshake of ``/ws/<api>/<version>/<address>`` and for
each ``subscribe`` and ``publish`` frame of the multiplexed mode. ``grants_refusals`` re-checks
live connections (the periodic audit).

Provider-written templates, parameter ``pattern``s and payload schemas are matched against
client-written text, so every regular expression runs in the ``regex`` module under a time
budget (``MATCH_TIME_BUDGET``), never in the stdlib ``re`` (ReDoS, CWE-1333).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import regex
from django.db.models import Q
from django.utils import timezone

from analytics.queries import usage_grouped
from gateway.credentials import Credential, credential_resolve, credentials_usable
from gateway.publishing import address_normalize, routing_key
from gateway.schemas import MATCH_TIME_BUDGET, MatchBudget, parameters_error
from gateway.throttling import Policy
from portal.models import API, APIVersion, BusinessPlan, Channel, Subscription

log = logging.getLogger(__name__)

# Close codes of refused handshakes and of live connections (RFC 6455 §7.4.2: 4000-4999 are the
# application's). Each mirrors the HTTP status of the same meaning (RFC 9110 §15.5), so the SSE
# endpoint answers the same cases with 4xx - 4000.
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_NOT_ALLOWED = 4405
CLOSE_PLAN_CHANGED = 4409
CLOSE_GONE = 4410
CLOSE_QUOTA_EXHAUSTED = 4429

# RFC 6455 §5.5: a control frame's payload is at most 125 bytes, 2 of them the close code.
MAX_CLOSE_REASON_BYTES = 123

DIRECTIONS = ("receive", "send")


def close_reason(text: str) -> str:
    """``text`` cut to at most 123 UTF-8 bytes (RFC 6455 §5.5.1), ending in "…" when cut."""
    data = text.encode()
    if len(data) <= MAX_CLOSE_REASON_BYTES:
        return text
    return data[: MAX_CLOSE_REASON_BYTES - 3].decode(errors="ignore") + "…"


class HandshakeRefused(Exception):
    """A refused handshake (or a rejected frame): ``code`` is the WebSocket close code of the
    refusal contract (4400-4429), ``reason`` says which case, in at most 123 UTF-8 bytes.

    The reason goes to the client and to the log: it names the API, version, channel or
    parameter at fault, never the credential. ``credential`` is the resolved credential, when
    the refusal came after it was resolved (for the log line: kind and database id only).
    ``error`` names the case for SSE's JSON body when the code's usual name does not fit (a
    4429 for a connection limit is ``"connection_limit"``, not ``"quota_exhausted"``), and
    ``retry_after`` (seconds) goes to SSE's ``Retry-After`` header.
    """

    def __init__(
        self,
        code: int,
        reason: str,
        *,
        credential: Credential | None = None,
        error: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        self.code = code
        self.reason = close_reason(reason)
        self.credential = credential
        self.error = error
        self.retry_after = retry_after
        super().__init__(self.reason)


@functools.lru_cache(maxsize=4096)
def _template_regex(address: str) -> regex.Pattern[str]:
    """``Channel.address_regex()`` of the template ``address``, compiled once per process: the
    ``regex`` module's own cache holds 500 patterns, fewer than a large API's channels."""
    return Channel(address=address).address_regex()


# --- Grants -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelGrant:
    """One concrete channel of a connection, resolved once (handshake, or the first subscribe or
    publish frame naming it): its address, template, routing key, which operations it offers
    clients, and the JSON texts of its send operation's message payload schemas (JSON Schema;
    an AsyncAPI 3.0 §Multi Format Schema Object unwrapped; others skipped). Whether the
    connection may use a direction now is ``Grant.refusal``.
    """

    address: str  # concrete, normalised: "prices/ACME"
    channel_template: str  # the AsyncAPI address template: "prices/{symbol}"
    routing_key: str
    receive_operation: bool
    send_operation: bool
    payload_schemas: tuple[str, ...] = ()
    # Whether checking a payload against ``payload_schemas`` may take long enough to matter on
    # an event loop: a schema with ``pattern``/``patternProperties`` (provider patterns, up to
    # the time budget per event) or ``uniqueItems`` (quadratic in the array's length).
    payload_check_slow: bool = False


@dataclass(frozen=True, slots=True)
class Grant:
    """What an accepted connection may do, decided once at the handshake: its credential (kind,
    id, scopes), subscription, business plan, API and version; ``channel`` for a single-channel
    connection (None in multiplexed mode)."""

    credential: Credential
    application_id: int
    subscription_id: int
    plan_id: int
    api_id: int
    api_version_id: int
    api_slug: str
    version: str
    validate_payloads: bool
    channel: ChannelGrant | None = field(default=None, compare=False)
    # The business plan's throttling policy (gateway.throttling) and the quota usage analytics
    # held at the handshake: (events, bytes) of the counted directions this billing period.
    policy: Policy | None = field(default=None, compare=False)
    quota_used: tuple[int, int] = field(default=(0, 0), compare=False)

    # The single channel's fields, for consumers of one channel (SSE, single-channel WebSocket).
    @property
    def address(self) -> str:
        assert self.channel is not None, "a multiplexed grant has no single channel"
        return self.channel.address

    @property
    def channel_template(self) -> str:
        assert self.channel is not None, "a multiplexed grant has no single channel"
        return self.channel.channel_template

    @property
    def routing_key(self) -> str:
        assert self.channel is not None, "a multiplexed grant has no single channel"
        return self.channel.routing_key

    def refusal(self, channel: ChannelGrant, direction: str) -> HandshakeRefused | None:
        """Why this connection may not ``direction`` ("receive" | "send") on ``channel`` now, or
        None. Checked for each client event: the credential must not have expired (4401), the
        channel must have the operation and the credential's scope must allow it (4405)."""
        if self.credential.is_expired:
            return HandshakeRefused(CLOSE_UNAUTHORIZED, "Credential expired.")
        template = channel.channel_template
        offered = channel.send_operation if direction == "send" else channel.receive_operation
        if not offered:
            return HandshakeRefused(CLOSE_NOT_ALLOWED, _no_operation(template, (direction,)))
        if not self.credential.allows(api_slug=self.api_slug, channel=template, direction=direction):
            return HandshakeRefused(CLOSE_NOT_ALLOWED, _scope_lacks(template, (direction,)))
        return None


def _no_operation(template: str, directions: Sequence[str]) -> str:
    if tuple(directions) == ("send",):
        return f"channel {template!r} has no send operation: clients cannot send to it"
    if tuple(directions) == ("receive",):
        return f"channel {template!r} has no receive operation: clients cannot receive from it"
    return f"channel {template!r} has no operation for clients"


def _scope_lacks(template: str, directions: Sequence[str]) -> str:
    return f"the credential's scope does not allow {' or '.join(directions)} on {template!r}"


def handshake_authorize(
    *,
    secret: str | None,
    api_slug: str,
    version: str,
    address: str | None = None,
    quota: bool = True,
) -> Grant:
    """Check a handshake for ``/ws/<api_slug>/<version>[/<address>]``; return its ``Grant``.

    Checks, in order, each failure a ``HandshakeRefused`` with the code in brackets: a
    credential is present and resolves (``gateway.credentials.credential_resolve``: unknown,
    revoked or expired ones do not) [4401]; no NUL in the path [4400]; the API exists and is not
    a draft [4404], nor blocked or retired [4410]; the credential's application has an
    **active** subscription to it (pending, suspended, cancelled, rejected or none) [4403]; the
    version exists and is not a draft [4404], nor retired [4410]; with ``address``, the
    channel (``channel_authorize``: address length [4400], template [4404], parameters [4400],
    operations and scope [4405]); with ``quota``, the plan's events and bytes quotas for this
    billing period (the plan's ``billing_period``: calendar month or year, UTC) are not used up
    [4429].

    The credential comes first, so unauthenticated clients learn nothing about which APIs
    and channels exist. Sync: resolving the credential is usually a cache hit; then 2 queries
    (+2 for a channel when its version's channels are not cached, +1 for a quota).
    """
    if not secret:
        raise HandshakeRefused(
            CLOSE_UNAUTHORIZED,
            "no credential: send Authorization: Bearer, an eventgate.bearer.<token> subprotocol "
            "or access_token",
        )
    credential = credential_resolve(secret)
    if credential is None:
        raise HandshakeRefused(CLOSE_UNAUTHORIZED, "unknown, invalid, revoked or expired credential")
    try:
        return _authorize(
            credential=credential, api_slug=api_slug, version=version, address=address, quota=quota
        )
    except HandshakeRefused as refusal:
        refusal.credential = credential
        raise


def _authorize(
    *, credential: Credential, api_slug: str, version: str, address: str | None, quota: bool
) -> Grant:
    if "\x00" in api_slug + version + (address or ""):
        # PostgreSQL text cannot hold NUL: refuse before any query (else a 500).
        raise HandshakeRefused(CLOSE_BAD_REQUEST, "NUL character in the path")
    # The version with its API in one query (the API alone when the version does not exist),
    # as plain values: a version's AsyncAPI document can be large and is not needed here.
    row = (
        APIVersion.objects.filter(api__slug=api_slug, version=version)
        .values_list("api_id", "api__slug", "api__status", "pk", "version", "status", "validate_payloads")
        .first()
    )
    if row is None:
        api_row = API.objects.filter(slug=api_slug).values_list("pk", "slug", "status").first()
    else:
        api_row = row[:3]
    if api_row is None or api_row[2] == API.Status.DRAFT:
        raise HandshakeRefused(CLOSE_NOT_FOUND, f"unknown API {api_slug!r}")
    api_id, slug, api_status = api_row
    if api_status not in API.CONNECTABLE_STATUSES:
        raise HandshakeRefused(CLOSE_GONE, f"API {slug} is {api_status}")
    subscription_id, plan = _active_subscription(credential=credential, api_id=api_id, api_slug=slug)
    if row is None or row[5] == APIVersion.Status.DRAFT:
        raise HandshakeRefused(CLOSE_NOT_FOUND, f"unknown or unpublished version {version!r} of {slug}")
    _, _, _, api_version_id, version_name, version_status, validate_payloads = row
    if version_status not in APIVersion.LIVE_STATUSES:
        raise HandshakeRefused(CLOSE_GONE, f"unpublished version {version!r} of {slug}: it is retired")
    grant = Grant(
        credential=credential,
        application_id=credential.application_id,
        subscription_id=subscription_id,
        plan_id=plan.pk,
        api_id=api_id,
        api_version_id=api_version_id,
        api_slug=slug,
        version=version_name,
        validate_payloads=validate_payloads,
    )
    if address is not None:
        channels = version_channels(api_version_id)
        channel = channel_authorize(grant=grant, channels=channels, address=address, directions=DIRECTIONS)
        grant = dataclasses.replace(grant, channel=channel)
    grant = dataclasses.replace(grant, policy=Policy.from_plan(plan))
    if quota:
        used = quota_usage({subscription_id: plan}).get(subscription_id, (0, 0))
        refusal = quota_refusals({subscription_id: plan}, used={subscription_id: used}).get(subscription_id)
        if refusal is not None:
            raise refusal
        grant = dataclasses.replace(grant, quota_used=used)
    return grant


# Seconds a version's channels stay in process memory. Channels are fixed when a version is
# imported; an admin's edit of one (Django admin) reaches handshakes within this time.
CHANNELS_CACHE_SECONDS = 60.0
_channels_cache: dict[int, tuple[float, tuple[Channel, ...]]] = {}
_channels_lock = threading.Lock()


def version_channels(api_version_id: int) -> tuple[Channel, ...]:
    """The channels of API version ``api_version_id`` with their operations prefetched (2
    queries), cached per process for ``CHANNELS_CACHE_SECONDS``: handshakes and multiplexed
    frames match against them without a query, and connections share one copy."""
    now = time.monotonic()
    with _channels_lock:
        cached = _channels_cache.get(api_version_id)
    if cached is not None and now - cached[0] < CHANNELS_CACHE_SECONDS:
        return cached[1]
    channels = tuple(Channel.objects.filter(api_version_id=api_version_id).prefetch_related("operations"))
    with _channels_lock:
        if len(_channels_cache) >= 256:
            _channels_cache.clear()
        _channels_cache[api_version_id] = (now, channels)
    return channels


def _active_subscription(*, credential: Credential, api_id: int, api_slug: str) -> tuple[int, BusinessPlan]:
    """The id of the application's active subscription to the API and its business plan (only
    the fields of its throttling policy, ``Policy.PLAN_FIELDS``); else ``HandshakeRefused``
    (4403) naming the state of its most recent subscription. One query."""
    plan_fields = [f"plan__{name}" for name in Policy.PLAN_FIELDS]
    subscriptions = list(
        Subscription.objects.filter(application_id=credential.application_id, api_id=api_id)
        .order_by("-created", "-pk")
        .values_list("pk", "status", *plan_fields)
    )
    for pk, status, *values in subscriptions:
        if status == Subscription.Status.ACTIVE:
            return pk, BusinessPlan(**dict(zip(Policy.PLAN_FIELDS, values, strict=True)))
    if not subscriptions:
        raise HandshakeRefused(
            CLOSE_FORBIDDEN, f"application {credential.application_id} is not subscribed to {api_slug}"
        )
    latest = subscriptions[0][1]
    states = {
        Subscription.Status.PENDING: "is pending approval",
        Subscription.Status.SUSPENDED: "is suspended",
        Subscription.Status.CANCELLED: "was cancelled",
        Subscription.Status.REJECTED: "was rejected",
    }
    raise HandshakeRefused(
        CLOSE_FORBIDDEN, f"subscription to {api_slug} {states.get(latest, 'is not active')}"
    )


def channel_authorize(
    *, grant: Grant, channels: Iterable[Channel], address: str, directions: Sequence[str]
) -> ChannelGrant:
    """The ``ChannelGrant`` for the concrete ``address`` among ``channels`` (of the grant's API
    version, with their operations prefetched), for at least one of ``directions``.

    Raises ``HandshakeRefused``: 4400 for an empty address, a NUL, an address whose routing key
    would pass 255 bytes (checked before any matching: the cap also bounds matching time), a
    parameter value that fails its schema (``parameter_error``), or matching over
    ``MATCH_TIME_BUDGET`` seconds (never accepted: an unfinished match proves nothing); 4404
    when no template matches; 4405 when the channel has no operation for any of ``directions``
    or the credential's scope allows none of them. Among templates that match with valid
    parameters, one with an operation in ``directions`` wins, then the one with the fewest
    parameters (the most specific).

    All but the scope (the credential's part) is kept per process for the version's channels
    as ``version_channels`` returned them (``channel_held``): the same address in the same
    version is matched once.
    """
    channel = channel_resolve(
        api_slug=grant.api_slug,
        version=grant.version,
        api_version_id=grant.api_version_id,
        channels=channels,
        address=address,
        directions=directions,
    )
    refusal = channel_scope_refusal(grant, channel, directions)
    if refusal is not None:
        raise refusal
    return channel


def channel_scope_refusal(
    grant: Grant, channel: ChannelGrant, directions: Sequence[str]
) -> HandshakeRefused | None:
    """4405 when ``grant``'s credential may use none of ``directions`` the channel offers
    (``channel_resolve`` refused those with no operation), else None."""
    offered = [
        d for d in directions if (channel.send_operation if d == "send" else channel.receive_operation)
    ]
    credential = grant.credential
    if any(
        credential.allows(api_slug=grant.api_slug, channel=channel.channel_template, direction=d)
        for d in offered
    ):
        return None
    return HandshakeRefused(CLOSE_NOT_ALLOWED, _scope_lacks(channel.channel_template, offered))


# Channel resolutions (ChannelGrant or a refusal's (code, reason)) per API version, valid while
# ``version_channels`` returns the same tuple: version id → (that tuple, {(address, directions): result}).
_channel_grants: dict[int, tuple[tuple[Channel, ...], dict[tuple[str, tuple[str, ...]], Any]]] = {}
CHANNEL_GRANTS_PER_VERSION = 10_000


def channel_resolve(
    *,
    api_slug: str,
    version: str,
    api_version_id: int,
    channels: Iterable[Channel],
    address: str,
    directions: Sequence[str],
) -> ChannelGrant:
    """``channel_authorize`` without the credential's scope: the same refusals but for 4405
    "scope lacks". Kept per process when ``channels`` is what ``version_channels`` returns."""
    key = (address, tuple(directions))
    with _channels_lock:
        held = _channel_grants.get(api_version_id)
        result = held[1].get(key) if held is not None and held[0] is channels else None
    if result is None:
        try:
            result = _channel_grant(api_slug, version, list(channels), address, directions)
        except HandshakeRefused as refusal:
            result = (refusal.code, refusal.reason)
        if isinstance(channels, tuple):
            with _channels_lock:
                held = _channel_grants.get(api_version_id)
                if held is None or held[0] is not channels:
                    if len(_channel_grants) >= 256:
                        _channel_grants.clear()
                    held = _channel_grants[api_version_id] = (channels, {})
                if len(held[1]) >= CHANNEL_GRANTS_PER_VERSION:
                    held[1].clear()
                held[1][key] = result
    if isinstance(result, tuple):
        raise HandshakeRefused(*result)
    return result


def channel_held(
    api_version_id: int, address: str, directions: Sequence[str]
) -> ChannelGrant | HandshakeRefused | None:
    """What ``channel_resolve`` would give for ``address`` (a ``ChannelGrant`` or the refusal,
    not raised) if this process holds it for the version's current channels, else None. No
    query and no matching: safe on the event loop."""
    now = time.monotonic()
    with _channels_lock:
        cached = _channels_cache.get(api_version_id)
        held = _channel_grants.get(api_version_id)
        if (
            cached is None
            or held is None
            or held[0] is not cached[1]
            or now - cached[0] >= CHANNELS_CACHE_SECONDS
        ):
            return None
        result = held[1].get((address, tuple(directions)))
    if isinstance(result, tuple):
        return HandshakeRefused(*result)
    return result


def _channel_grant(
    api_slug: str, version: str, channels: list[Channel], address: str, directions: Sequence[str]
) -> ChannelGrant:
    address = address_normalize(address)
    if not address:
        raise HandshakeRefused(CLOSE_BAD_REQUEST, "empty channel address")
    if "\x00" in address:
        raise HandshakeRefused(CLOSE_BAD_REQUEST, "NUL character in the channel address")
    try:
        key = routing_key(api=api_slug, version=version, address=address)
    except UnicodeError:  # a lone surrogate: not encodable as UTF-8 (a ValueError too, so first)
        raise HandshakeRefused(
            CLOSE_BAD_REQUEST, "channel address is not valid Unicode (a lone UTF-16 surrogate)"
        ) from None
    except ValueError:  # AMQP routing keys hold 255 bytes at most
        raise HandshakeRefused(
            CLOSE_BAD_REQUEST, "channel address too long: its routing key exceeds 255 bytes"
        ) from None
    channel = _channel_resolve(channels, address, directions, where=f"{api_slug} {version}")
    offered = [d for d in directions if any(op.action == d for op in channel.operations.all())]
    if not offered:
        raise HandshakeRefused(CLOSE_NOT_ALLOWED, _no_operation(channel.address, directions))
    schemas = _payload_schemas(channel)
    return ChannelGrant(
        address=address,
        channel_template=channel.address,
        routing_key=key,
        receive_operation=channel.can_receive,
        send_operation=channel.can_send,
        payload_schemas=schemas,
        payload_check_slow=any(_SLOW_KEYWORDS.search(schema) for schema in schemas),
    )


def _channel_resolve(
    channels: list[Channel], address: str, directions: Sequence[str], *, where: str
) -> Channel:
    budget = MatchBudget()
    matched: list[tuple[bool, int, int, Channel, str | None]] = []
    try:
        for channel in channels:
            values = _template_values(channel, address, budget)
            if values is None:
                continue
            error = parameters_error(channel.parameters or {}, values, budget=budget)
            usable = any(op.action in directions for op in channel.operations.all())
            matched.append((not usable, len(values), channel.pk, channel, error))
    except TimeoutError:
        raise HandshakeRefused(
            CLOSE_BAD_REQUEST,
            f"channel address took too long to match (over {MATCH_TIME_BUDGET} s) in {where}",
        ) from None
    if not matched:
        raise HandshakeRefused(CLOSE_NOT_FOUND, f"no channel {address!r} in {where}")
    valid = [item for item in matched if item[4] is None]
    if not valid:
        raise HandshakeRefused(CLOSE_BAD_REQUEST, min(matched, key=lambda item: item[1:3])[4] or "")
    return min(valid, key=lambda item: item[:3])[3]


def _payload_schemas(channel: Channel) -> tuple[str, ...]:
    """JSON texts of the JSON Schema payloads of ``channel``'s send operations' messages."""
    schemas = []
    for operation in channel.operations.all():
        if operation.action != "send":
            continue
        for message in operation.messages or ():
            payload = message.get("payload") if isinstance(message, dict) else None
            if isinstance(payload, dict) and "schemaFormat" in payload and "schema" in payload:
                # AsyncAPI 3.0 §Multi Format Schema Object: only JSON Schema formats are checked.
                if not str(payload["schemaFormat"]).startswith(_JSON_SCHEMA_FORMATS):
                    continue
                payload = payload["schema"]
            if isinstance(payload, dict | bool):
                schemas.append(json.dumps(payload, sort_keys=True))
    return tuple(schemas)


# Keywords whose check can hold a thread for long (in a schema's JSON text; a property that
# happens to be named so only sends its checks to a thread, which is harmless).
_SLOW_KEYWORDS = re.compile(r'"(?:pattern|patternProperties|uniqueItems)":')
_JSON_SCHEMA_FORMATS = ("application/vnd.aai.asyncapi", "application/schema+json", "application/schema+yaml")


def channel_match(
    channels: Iterable[Channel], address: str, *, budget: MatchBudget | None = None
) -> Channel | None:
    """The channel whose template matches the concrete ``address`` with valid parameter values
    (``parameter_error``) and lets consumers receive, or None.

    A template's leading ``/`` is optional in the address (``/v1/marketdata/{symbol}`` matches
    ``v1/marketdata/btcusd``). With several matches the template with the fewest parameters
    (the most specific) wins. All matching shares one time budget (``MATCH_TIME_BUDGET``
    seconds unless ``budget`` is given); raises ``TimeoutError`` when it runs out: the caller
    must refuse, since an unfinished match proves nothing. (Webhook registration uses this;
    handshakes use ``channel_authorize``, which says why nothing matched.)
    """
    budget = budget or MatchBudget()
    candidates = []
    for channel in channels:
        values = _template_values(channel, address, budget)
        if values is None or parameters_error(channel.parameters or {}, values, budget=budget) is not None:
            continue
        if channel.can_receive:
            candidates.append((len(values), channel.pk, channel))
    return min(candidates, key=lambda item: item[:2])[2] if candidates else None


def _template_values(channel: Channel, address: str, budget: MatchBudget) -> dict[str, str] | None:
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


# --- Live connections: re-checks and quotas ---------------------------------------------------


# What ``grants_refusals`` can check, by the control group that announces its changes
# (``gateway.connections.LiveConnection._groups``): the credential, the subscription (status and
# plan), the API version (its status and its API's).
GRANT_CHECKS = frozenset({"credential", "subscription", "version"})


def grants_refusals(
    grants: Sequence[Grant], *, quota: bool = True, checks: frozenset[str] = GRANT_CHECKS
) -> list[HandshakeRefused | None]:
    """For each of ``grants`` (in order): the refusal that would close its connection now, or None.

    Checked (those of ``checks``, default all): the credential is still usable
    (``credentials_usable``) [4401]; the subscription is still active [4403, the reason names
    suspended/cancelled] and on the same business plan [4409]; the API and version are still
    served [4410]; with ``quota``, the plan's quotas for this billing period are not used up
    [4429] (plans whose ``limit_notice`` is "close" only: under "notify" a stopped connection
    stays open and is told, ``gateway.throttling``). At most 6 queries for any number of
    grants, one per check (the gateway's periodic audit; the handshake's second look runs it
    for one grant and the checks it needs).
    """
    if not grants:
        return []
    usable = (
        credentials_usable(grant.credential for grant in grants)
        if "credential" in checks
        else {(g.credential.kind, g.credential.id) for g in grants}
    )
    subscriptions = (
        {
            row[0]: row
            for row in Subscription.objects.filter(pk__in={g.subscription_id for g in grants}).values_list(
                "pk", "status", "plan_id"
            )
        }
        if "subscription" in checks
        else {g.subscription_id: (g.subscription_id, Subscription.Status.ACTIVE, g.plan_id) for g in grants}
    )
    versions = (
        {
            row[0]: row
            for row in APIVersion.objects.filter(pk__in={g.api_version_id for g in grants}).values_list(
                "pk", "status", "api__status", "api__slug", "version"
            )
        }
        if "version" in checks
        else {
            g.api_version_id: (g.api_version_id, APIVersion.Status.PUBLISHED, API.Status.PUBLISHED, "", "")
            for g in grants
        }
    )
    quotas: dict[int, HandshakeRefused] = {}
    if quota:
        # A plan whose stopped clients are only notified keeps them open (gateway.throttling).
        plans = BusinessPlan.objects.filter(
            pk__in={g.plan_id for g in grants}, limit_notice=BusinessPlan.LimitNotice.CLOSE
        ).filter(Q(quota_events__isnull=False) | Q(quota_bytes__isnull=False))
        by_id = {plan.pk: plan for plan in plans}
        quotas = quota_refusals({g.subscription_id: by_id[g.plan_id] for g in grants if g.plan_id in by_id})
    return [_grant_refusal(g, usable, subscriptions, versions, quotas) for g in grants]


def grant_still_allowed(grant: Grant) -> bool:
    """Whether ``grant``'s connection may stay open (``grants_refusals`` without the quota)."""
    return grants_refusals([grant], quota=False)[0] is None


def _grant_refusal(
    grant: Grant,
    usable: set[tuple[str, int]],
    subscriptions: dict[int, tuple[int, str, int]],
    versions: dict[int, tuple[int, str, str, str, str]],
    quotas: dict[int, HandshakeRefused],
) -> HandshakeRefused | None:
    if (grant.credential.kind, grant.credential.id) not in usable:
        return HandshakeRefused(CLOSE_UNAUTHORIZED, "credential revoked or expired")
    subscription = subscriptions.get(grant.subscription_id)
    if subscription is None or subscription[1] != Subscription.Status.ACTIVE:
        return HandshakeRefused(CLOSE_FORBIDDEN, subscription_ended_reason(subscription and subscription[1]))
    if subscription[2] != grant.plan_id:
        return HandshakeRefused(CLOSE_PLAN_CHANGED, REASON_PLAN_CHANGED)
    version = versions.get(grant.api_version_id)
    if version is None or version[2] not in API.CONNECTABLE_STATUSES:
        return HandshakeRefused(CLOSE_GONE, api_unavailable_reason("api", version[2] if version else ""))
    if version[1] not in APIVersion.LIVE_STATUSES:
        return HandshakeRefused(CLOSE_GONE, api_unavailable_reason("version", version[1]))
    return quotas.get(grant.subscription_id)


REASON_PLAN_CHANGED = "Business plan changed; reconnect to continue under the new plan."
# Close reasons by the state the API or version moved to.
_REASONS_API_UNAVAILABLE = {
    ("api", "blocked"): "API blocked by its provider or an admin.",
    ("api", "retired"): "API retired.",
    ("version", "retired"): "API version retired; connect to a newer version.",
}
_REASONS_SUBSCRIPTION_ENDED = {
    "suspended": "Subscription suspended.",
    "cancelled": "Subscription cancelled.",
    "rejected": "Subscription rejected.",
    "pending": "Subscription pending approval.",
}


def api_unavailable_reason(scope: str, status: str) -> str:
    """The close reason (4410) for an API (``scope`` "api") or version ("version") that moved to
    ``status``."""
    return _REASONS_API_UNAVAILABLE.get((scope, status), "API or API version no longer available.")


def subscription_ended_reason(status: str | None) -> str:
    """The close reason (4403) for a subscription that moved to ``status`` (None: deleted)."""
    return _REASONS_SUBSCRIPTION_ENDED.get(status or "", "Subscription no longer active.")


def month_start(now: datetime | None = None) -> datetime:
    """Start (UTC) of the calendar month of ``now``: the billing period of monthly plans' quotas."""
    now = (now or timezone.now()).astimezone(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def period_start(kind: str, now: datetime | None = None) -> datetime:
    """Start (UTC) of the billing period of ``kind`` (``BusinessPlan.billing_period``: "month"
    or "year", calendar) holding ``now`` (default: now): where a plan's quotas start counting."""
    if kind == BusinessPlan.BillingPeriod.YEAR:
        return month_start(now).replace(month=1)
    return month_start(now)


def _quota_limited(plans: Mapping[int, BusinessPlan]) -> dict[int, BusinessPlan]:
    return {
        sub: plan
        for sub, plan in plans.items()
        if (plan.quota_events is not None or plan.quota_bytes is not None)
        and plan.quota_action == BusinessPlan.QuotaAction.STOP
    }


def quota_usage(
    plans: Mapping[int, BusinessPlan], *, now: datetime | None = None
) -> dict[int, tuple[int, int]]:
    """Subscription id → (events, bytes) in the billing period holding ``now`` (default: now) of
    the directions its plan's policy counts (``counted_directions``), for those of ``plans``
    (subscription id → plan) whose quotas stop events. The period is the plan's
    ``billing_period``: the calendar month, or the calendar year (UTC), so a yearly plan's
    usage of earlier months counts. From ``analytics.queries.usage_grouped`` (the numbers
    billing and the dashboards read, from minute, hour and day rows alike): what the gateway
    counted and flushed, at most ``GATEWAY_FLUSH_INTERVAL`` seconds behind. Up to four queries
    per kind of period among the plans (roll-up marks, then day, hour and minute rows), none
    if no plan has a quota that stops."""
    limited = _quota_limited(plans)
    by_kind: dict[str, list[int]] = {}
    for subscription_id, plan in limited.items():
        kind = plan.billing_period if plan.billing_period == BusinessPlan.BillingPeriod.YEAR else "month"
        by_kind.setdefault(kind, []).append(subscription_id)
    used: dict[int, tuple[int, int]] = {}
    for kind, subscription_ids in by_kind.items():
        start = period_start(kind, now)
        end = None if now is None else _period_after(kind, start)
        grouped = usage_grouped(
            subscriptions=subscription_ids, start=start, end=end, by=("subscription_id", "direction")
        )
        for (subscription_id, direction), counts in grouped.items():
            if direction not in limited[subscription_id].directions_counted:
                continue
            events, size = used.get(subscription_id, (0, 0))
            used[subscription_id] = (events + counts.events, size + counts.bytes)
    return used


def _period_after(kind: str, start: datetime) -> datetime:
    """The start of the billing period of ``kind`` after the one starting at ``start``."""
    if kind == BusinessPlan.BillingPeriod.YEAR:
        return start.replace(year=start.year + 1)
    return (start + timedelta(days=32)).replace(day=1)


def quota_refusals(
    plans: Mapping[int, BusinessPlan], *, used: Mapping[int, tuple[int, int]] | None = None
) -> dict[int, HandshakeRefused]:
    """Subscription id → 4429 refusal, for those of ``plans`` (subscription id → its plan) whose
    ``quota_events`` or ``quota_bytes`` this billing period (the plan's ``billing_period``:
    calendar month or year, UTC; the reason says "this month" or "this year") is used up,
    counting the directions of the plan's ``counted_directions`` (``quota_usage``, or ``used``
    when the caller has it). Plans whose ``quota_action`` is "overage" are never refused. Up to four
    queries (``analytics.queries``: the roll-up marks, then day, hour and minute rows), none if
    no plan has a quota that stops.
    """
    limited = _quota_limited(plans)
    if not limited:
        return {}
    if used is None:
        used = quota_usage(limited)
    refusals = {}
    for sub, plan in limited.items():
        events, size = used.get(sub, (0, 0))
        row = {"events": events, "bytes": size}
        this = "this year" if plan.billing_period == BusinessPlan.BillingPeriod.YEAR else "this month"
        if plan.quota_events is not None and row["events"] >= plan.quota_events:
            refusals[sub] = HandshakeRefused(
                CLOSE_QUOTA_EXHAUSTED,
                f"events quota of plan {plan.name!r} used up {this} ({plan.quota_events:,} events)",
            )
        elif plan.quota_bytes is not None and row["bytes"] >= plan.quota_bytes:
            refusals[sub] = HandshakeRefused(
                CLOSE_QUOTA_EXHAUSTED,
                f"bytes quota of plan {plan.name!r} used up {this} ({plan.quota_bytes:,} bytes)",
            )
    return refusals
