"""Credentials of gateway connections: API keys (``eg_…``) and OAuth2 access tokens.

``credential_from_scope`` finds the secret in an ASGI scope (WebSocket or SSE);
``credential_resolve`` turns it into a ``Credential`` (or None), through Django's cache so that
handshakes under load do not query the database; ``credentials_usable`` re-checks live
connections' credentials for the gateway's periodic audit; ``credential_group`` names the
Channels group that closes a credential's live connections when it is revoked.

Cache (docs/credentials.md): one entry per secret under ``sha256(secret)`` (the same digest the
database stores: ``APIKey.key_hash``, ``AccessToken.token_checksum``), so the cache never holds
a secret. The cache is Redis, shared by every gateway process. Entries live at most
``GATEWAY_CREDENTIAL_CACHE_SECONDS`` (default 300) and never past the credential's expiry.
Every change of a credential (save or delete of a key or token, an owner deactivated) rewrites
its entry from the committed database row (``credential_cache_refresh``), so revocation takes
effect in every process at once. Entries are filled with ``cache.add`` (only if absent), so a
handshake that read the row just before a revocation committed cannot put it back.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from gateway.control import api_key_group, oauth_token_group

if TYPE_CHECKING:
    from portal.models import APIKey

# This module imports no models at import time, so that LOGGING can name CredentialRedactor
# (logging is configured before the app registry is ready); models are imported where used.

log = logging.getLogger(__name__)

API_KEY = "api_key"
OAUTH_TOKEN = "oauth_token"
API_KEY_PREFIX = "eg_"  # portal.models.APIKey.PREFIX
# The WebSocket subprotocol the gateway speaks, echoed when offered (RFC 6455 §4.2.2, §11.3.4).
SUBPROTOCOL = "eventgate.v1"
# Browsers cannot set headers on a WebSocket handshake; they offer the token as a subprotocol.
BEARER_SUBPROTOCOL_PREFIX = "eventgate.bearer."
# Longer secrets are not ours (keys are 43 characters, DOT tokens 30): refused without a lookup.
MAX_SECRET_CHARS = 512
CACHE_PREFIX = "eventgate:credential:"
# Seconds a secret that resolves to nothing stays cached: short, since no revocation message
# clears it when, say, an admin reactivates an owner; long enough to spare the database a flood.
MISS_CACHE_SECONDS = 10
_MISS = "-"


def _cache_seconds() -> int:
    """Seconds a resolved credential stays cached at most (``GATEWAY_CREDENTIAL_CACHE_SECONDS``)."""
    return int(settings.GATEWAY_CREDENTIAL_CACHE_SECONDS)


@dataclass(frozen=True, slots=True)
class Credential:
    """What a secret stands for: an API key or an OAuth2 access token of one application.

    ``id``: ``APIKey.pk`` or ``oauth2_provider.AccessToken.pk``; ``scopes``: the token's scopes
    (``portal.oauth`` grammar) or None for an API key, which allows whatever its application's
    subscriptions allow; ``expires_at``: Unix seconds, None for a key that never expires.
    """

    kind: str
    id: int
    application_id: int
    scopes: frozenset[str] | None
    expires_at: float | None

    def allows(self, *, api_slug: str, channel: str, direction: str) -> bool:
        """Whether this credential's scope allows ``direction`` ("receive" | "send") on the
        channel whose address *template* is ``channel`` ("prices/{symbol}") of API ``api_slug``.

        Only the scope: the subscription and the channel's operations are checked elsewhere.
        """
        if self.scopes is None:
            return True
        channel = channel.strip("/")
        return f"{api_slug}:{direction}" in self.scopes or f"{api_slug}:{direction}:{channel}" in self.scopes

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= time.time()


def credential_from_scope(scope: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(secret, subprotocol to echo)`` of a WebSocket handshake or SSE request scope.

    Sources, first match wins: ``Authorization: Bearer <secret>`` (RFC 6750 §2.1); a
    ``Sec-WebSocket-Protocol`` entry ``eventgate.bearer.<secret>`` (browsers cannot set headers
    on a WebSocket handshake); the ``access_token`` query parameter (RFC 6750 §2.3). The
    subprotocol to echo is ``eventgate.v1`` when the client offered it, else None: never the
    bearer entry, which would send the secret back in a response header. Never log the secret.
    """
    offered = [str(p) for p in scope.get("subprotocols") or ()]
    echo = SUBPROTOCOL if SUBPROTOCOL in offered else None
    secret = _bearer_header(scope.get("headers") or ())
    if secret is None:
        secret = next(
            (p[len(BEARER_SUBPROTOCOL_PREFIX) :] for p in offered if p.startswith(BEARER_SUBPROTOCOL_PREFIX)),
            None,
        )
    if not secret:
        query = parse_qs((scope.get("query_string") or b"").decode("latin1"))
        tokens = query.get("access_token")
        secret = tokens[0] if tokens else None
    return (secret or None), echo


def _bearer_header(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def secret_digest(secret: str) -> str:
    """SHA-256 of ``secret`` as 64 hex digits: the cache key's suffix and the database lookup."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def credential_resolve(secret: str | None) -> Credential | None:
    """The usable credential ``secret`` stands for, or None (unknown, revoked, expired, its
    owner deactivated, or an OAuth token whose client belongs to no application).

    Sync: on a cache miss it queries the database (one query). Secrets starting with ``eg_``
    are API keys, anything else an OAuth2 access token. A cached credential past its
    ``expires_at`` is never returned. If the cache is unreachable, it reads the database.
    """
    if not secret or len(secret) > MAX_SECRET_CHARS or "\x00" in secret:
        return None  # PostgreSQL text cannot hold NUL; an oversize value is no secret of ours
    digest = secret_digest(secret)
    kind = API_KEY if secret.startswith(API_KEY_PREFIX) else OAUTH_TOKEN
    cached = _cache_get(digest)
    if cached is None:
        credential = _credential_lookup(kind=kind, digest=digest)
        _cache_put(digest, credential, only_if_absent=True)
    elif cached == _MISS:
        return None
    else:
        credential = Credential(*cached)
    return None if credential is None or credential.is_expired else credential


def credential_cache_refresh(*, kind: str, digest: str) -> None:
    """Rewrite the cache entry of the credential whose secret hashes to ``digest`` from the
    database as it is now: its new state if usable, "nothing" (for the full cache lifetime)
    if revoked, deleted or expired. Call after the change commits (``gateway.signals`` does).
    """
    _cache_put(digest, _credential_lookup(kind=kind, digest=digest), only_if_absent=False)


def credentials_usable(credentials: Iterable[Credential]) -> set[tuple[str, int]]:
    """``(kind, id)`` of those of ``credentials`` still usable (not revoked, deleted or
    expired; owner active): at most 2 queries, one per kind, for any number (the periodic audit)."""
    from portal.models import APIKey

    key_ids: set[int] = set()
    token_ids: set[int] = set()
    for credential in credentials:
        (key_ids if credential.kind == API_KEY else token_ids).add(credential.id)
    usable: set[tuple[str, int]] = set()
    if key_ids:
        ids = APIKey.objects.usable().filter(pk__in=key_ids).values_list("pk", flat=True)
        usable.update((API_KEY, pk) for pk in ids)
    if token_ids:
        ids = _usable_tokens().filter(pk__in=token_ids).values_list("pk", flat=True)
        usable.update((OAUTH_TOKEN, pk) for pk in ids)
    return usable


def credential_group(credential: Credential) -> str:
    """The Channels group of ``credential``'s live connections (``gateway.control``); a
    ``{"type": "gateway.revoke"}`` message to it closes them with 4401."""
    if credential.kind == API_KEY:
        return api_key_group(credential.id)
    return oauth_token_group(credential.id)


def _usable_tokens() -> Any:
    from oauth2_provider.models import get_access_token_model

    return get_access_token_model().objects.filter(
        expires__gt=timezone.now(),
        application__eventgate_application__isnull=False,
        application__eventgate_application__owner__is_active=True,
    )


def _credential_lookup(*, kind: str, digest: str) -> Credential | None:
    """The usable credential whose secret hashes to ``digest`` (one query), or None."""
    from portal.models import APIKey

    if kind == API_KEY:
        row = (
            APIKey.objects.usable()
            .filter(key_hash=digest)
            .values_list("pk", "application_id", "expires_at")
            .first()
        )
        if row is None:
            return None
        pk, application_id, expires = row
        return Credential(API_KEY, pk, application_id, None, _timestamp(expires))
    row = (
        _usable_tokens()
        .filter(token_checksum=digest)
        .values_list("pk", "application__eventgate_application__id", "scope", "expires")
        .first()
    )
    if row is None:
        return None
    pk, application_id, scope, expires = row
    return Credential(OAUTH_TOKEN, pk, application_id, frozenset(scope.split()), _timestamp(expires))


def _timestamp(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


# Reads of the shared credential cache by this process, for /gateway/status (from any thread).
_cache_reads = 0
_cache_reads_lock = threading.Lock()


def credential_cache_reads() -> int:
    """How many times this process read the shared credential cache (``credential_resolve``)."""
    return _cache_reads


def _cache_get(digest: str) -> Any:
    """The cached tuple of ``Credential`` fields, ``_MISS``, or None (not cached, or the cache
    is unreachable)."""
    global _cache_reads
    with _cache_reads_lock:
        _cache_reads += 1
    try:
        return cache.get(CACHE_PREFIX + digest)
    except Exception as exc:  # noqa: BLE001 - Redis down: read the database instead
        log.warning("Credential cache unreachable (%r); reading the database", exc)
        return None


def _cache_put(digest: str, credential: Credential | None, *, only_if_absent: bool) -> None:
    if credential is None:
        value: Any = _MISS
        # A refresh records a revocation for the full lifetime, so that no stale fill survives.
        seconds = MISS_CACHE_SECONDS if only_if_absent else _cache_seconds()
    else:
        value = (
            credential.kind,
            credential.id,
            credential.application_id,
            credential.scopes,
            credential.expires_at,
        )
        seconds = _cache_seconds()
        if credential.expires_at is not None:
            # Django's Redis backend truncates to whole seconds: the entry goes before the credential.
            seconds = min(seconds, int(credential.expires_at - time.time()))
            if seconds <= 0:
                value, seconds = _MISS, MISS_CACHE_SECONDS
    try:
        if only_if_absent:
            cache.add(CACHE_PREFIX + digest, value, seconds)
        else:
            cache.set(CACHE_PREFIX + digest, value, seconds)
    except Exception as exc:  # noqa: BLE001 - Redis down: entries expire by themselves
        log.warning("Credential cache unreachable (%r); entry not written", exc)


def credential_cache_refresh_api_key(key: APIKey) -> None:
    """``credential_cache_refresh`` for ``key`` (after its save or delete commits)."""
    credential_cache_refresh(kind=API_KEY, digest=key.key_hash)


def credentials_cache_refresh_owner(*, user_id: int) -> None:
    """Refresh the cache entries of every API key and access token of ``user_id``'s
    applications (after the user was deactivated or reactivated): 2 queries plus one per entry."""
    from oauth2_provider.models import get_access_token_model

    from portal.models import APIKey

    keys = APIKey.objects.filter(application__owner_id=user_id)
    digests = [(API_KEY, digest) for digest in keys.values_list("key_hash", flat=True)]
    tokens = get_access_token_model().objects.filter(
        application__eventgate_application__owner_id=user_id, expires__gt=timezone.now()
    )
    digests += [(OAUTH_TOKEN, c) for c in tokens.values_list("token_checksum", flat=True)]
    for kind, digest in digests:
        credential_cache_refresh(kind=kind, digest=digest)


def owner_credentials_revoked_notify(*, user_id: int) -> None:
    """Close the live connections of every API key and access token of ``user_id``'s
    applications (the owner was deactivated): 2 queries, one control message per credential."""
    from oauth2_provider.models import get_access_token_model

    from gateway.control import api_key_revoked_notify, oauth_token_revoked_notify
    from portal.models import APIKey

    for key_id in APIKey.objects.filter(application__owner_id=user_id).values_list("pk", flat=True):
        api_key_revoked_notify(key_id=key_id)
    tokens = get_access_token_model().objects.filter(application__eventgate_application__owner_id=user_id)
    for token_id in tokens.values_list("pk", flat=True):
        oauth_token_revoked_notify(token_id=token_id)


# Where a credential can show up in a log line: request headers (uvicorn and websockets log them
# at DEBUG), query strings, form bodies, JSON token responses, Python reprs of dicts and keyword
# arguments (oauthlib logs "Issuing token to client id ... {'access_token': '...', ...}" at
# DEBUG), and API keys anywhere.
_SECRET_NAMES = r"(?:access_token|refresh_token|id_token|client_secret|token|secret|password)"
_REDACTIONS = (
    # Authorization: Bearer x / 'HTTP_AUTHORIZATION': 'Basic x' / ("authorization", "Bearer x")
    (
        re.compile(r"(?i)(authorization['\"]?[\s:=,]*+b?['\"]?\s*+(?:bearer|basic)\s++)[^\s'\",)]+"),
        r"\1[redacted]",
    ),
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{16,}"), r"\1[redacted]"),
    (re.compile(r"(eventgate\.bearer\.)[^\s'\",]+"), r"\1[redacted]"),
    # access_token=x (query, form) and access_token='x' (a keyword argument's repr)
    (re.compile(rf"(?i)\b({_SECRET_NAMES}=['\"]?)[^&\s'\"]+"), r"\1[redacted]"),
    # "access_token": "x" (JSON) and 'access_token': 'x' or b'x' (a Python dict's repr)
    (re.compile(rf"(?i)(['\"]{_SECRET_NAMES}['\"]\s*:\s*b?['\"])[^'\"]+"), r"\1[redacted]"),
    (re.compile(r"\beg_[A-Za-z0-9_-]{16,}"), "eg_[redacted]"),
)


class CredentialRedactor(logging.Filter):
    """A logging filter that replaces credentials in a record's message with ``[redacted]``:
    bearer and basic ``Authorization`` values (also as a header dict's repr), ``Bearer <token>``
    anywhere, ``eventgate.bearer.<token>`` subprotocols, ``access_token`` / ``refresh_token`` /
    ``id_token`` / ``client_secret`` / ``token`` / ``secret`` / ``password`` as query or form
    parameters, keyword arguments, JSON fields and Python dict reprs (single quotes), and ``eg_``
    API keys anywhere. Put it on the handlers in ``LOGGING`` so every logger's records pass it (at
    DEBUG, uvicorn's WebSocket protocol logs request headers, ``Authorization`` included).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the handler's to report
            return True
        redacted = message
        for pattern, replacement in _REDACTIONS:
            redacted = pattern.sub(replacement, redacted)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
