"""Credentials of an application (docs/credentials.md): API keys with expiry and rotation, and
the OAuth2 client (consumer key and secret) behind client-credentials access tokens.

Secrets are returned once by the function that makes them and never stored: API keys as
SHA-256 (``APIKey.key_hash``), client secrets with Django's password hasher (django-oauth-toolkit's
``hash_client_secret``), access tokens by DOT. Revoking, rotating or deleting any of them reaches
the gateway's credential cache and live connections through ``gateway.signals`` once the change
commits.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from oauth2_provider.generators import generate_client_secret
from oauth2_provider.models import (
    AccessToken,
    get_access_token_model,
    get_application_model,
    revoke_access_token,
)

from portal.models import APIKey, Application

# Lifetimes a consumer picks for a new API key, in days (None: never expires).
KEY_LIFETIME_DAYS = (30, 90, 365)
# The furthest expiry a key may have: beyond it a date is a typo, not a plan.
KEY_MAX_LIFETIME = timedelta(days=5 * 365)
# Grace periods offered when rotating a key, in seconds: both keys work during the grace.
ROTATION_GRACE_SECONDS = (0, 3600, 86400, 7 * 86400)
ROTATION_DEFAULT_GRACE_SECONDS = 86400
ROTATION_MAX_GRACE_SECONDS = 30 * 86400

OAuthClient = get_application_model()


def api_key_expiry(*, days: int | None = None, on: date | None = None) -> datetime | None:
    """The ``expires_at`` of a key that lives ``days`` days from now, or is valid through the
    day ``on`` (it expires at the following midnight, in ``TIME_ZONE``); None when neither is
    given (never expires). Raises ``ValidationError`` (field ``expires_at``) for a lifetime that
    is not positive, a date in the past or today's date's end already passed, or beyond 5 years.
    """
    now = timezone.now()
    if days is not None and on is not None:
        raise ValidationError({"expires_at": "Give a number of days or a date, not both."})
    if days is not None:
        if days < 1:
            raise ValidationError({"expires_at": "A key must live at least 1 day."})
        expires_at = now + timedelta(days=min(days, KEY_MAX_LIFETIME.days + 1))
    elif on is not None:
        if on > (now + KEY_MAX_LIFETIME).date():
            raise ValidationError({"expires_at": "Pick a date within the next 5 years."})
        expires_at = timezone.make_aware(datetime.combine(on + timedelta(days=1), time.min))
    else:
        return None
    api_key_expiry_check(expires_at, now=now)
    return expires_at


def api_key_expiry_check(expires_at: datetime, *, now: datetime | None = None) -> None:
    """Raise ``ValidationError`` (field ``expires_at``) unless ``expires_at`` is in the future
    and at most 5 years away."""
    now = now or timezone.now()
    if expires_at <= now:
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    if expires_at > now + KEY_MAX_LIFETIME:
        raise ValidationError({"expires_at": "Pick an expiry within the next 5 years."})


def api_key_create(
    *, application: Application, name: str = "default", expires_at: datetime | None = None
) -> tuple[APIKey, str]:
    """Generate an API key for ``application`` that expires at ``expires_at`` (None: never);
    returns ``(key, secret)``. The secret (``eg_`` + 40 characters) is shown once, never stored.

    Raises ``ValidationError`` (field ``expires_at``) for an expiry in the past or more than
    5 years away.
    """
    if expires_at is not None:
        api_key_expiry_check(expires_at)
    with transaction.atomic():
        key, secret = APIKey.generate(application=application, name=(name or "default").strip() or "default")
        if expires_at is not None:
            key.expires_at = expires_at
            key.save(update_fields=["expires_at"])
    return key, secret


def api_key_revoke(*, key: APIKey) -> APIKey:
    """Revoke ``key``: handshakes with it are refused from now on, and once the revocation
    commits, every gateway process closes the key's open connections (close code 4401, through
    ``gateway.signals`` on save). Revoking twice keeps the first time."""
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


def api_key_rotate(*, key: APIKey, grace_seconds: int = ROTATION_DEFAULT_GRACE_SECONDS) -> tuple[APIKey, str]:
    """Replace ``key`` with a new key of the same application and name; returns
    ``(new key, secret)``, the secret shown once.

    The old key keeps working for ``grace_seconds`` (0 to 30 days; 0 ends it now), then the
    gateway refuses it (4401) and its audit closes its live connections; ``key.replaced_by`` is
    the new key. The new key gets the old one's lifetime afresh (a 90-day key → 90 days from
    now), or none. Raises ``ValidationError`` when the key is revoked, expired or already
    rotated (rotate its replacement instead), or the grace is out of range.
    """
    if not 0 <= grace_seconds <= ROTATION_MAX_GRACE_SECONDS:
        raise ValidationError({"grace_seconds": "The grace period must be between 0 seconds and 30 days."})
    with transaction.atomic():
        # Locked: two rotations at once must not both replace the key.
        key = APIKey.objects.select_for_update().get(pk=key.pk)
        if key.replaced_by_id is not None:
            raise ValidationError(f"Key {key.prefix}… was already rotated: rotate its replacement instead.")
        if not key.is_usable:
            raise ValidationError(f"Key {key.prefix}… is revoked or expired: generate a new key instead.")
        now = timezone.now()
        lifetime = key.expires_at - key.created if key.expires_at else None
        new_key, secret = APIKey.generate(application=key.application, name=key.name)
        if lifetime is not None:
            new_key.expires_at = now + max(lifetime, timedelta(days=1))
            new_key.save(update_fields=["expires_at"])
        grace_end = now + timedelta(seconds=grace_seconds)
        key.replaced_by = new_key
        key.expires_at = min(key.expires_at, grace_end) if key.expires_at else grace_end
        key.save(update_fields=["replaced_by", "expires_at"])
    return new_key, secret


# --- OAuth2 client credentials -------------------------------------------------------------------


def oauth_client_create(*, application: Application) -> tuple[OAuthClient, str]:
    """Give ``application`` its OAuth2 client: a consumer key (``client_id``) and secret for the
    client credentials grant (RFC 6749 §4.4; a confidential client). Returns ``(client,
    secret)``; the secret is stored hashed and shown once.

    Raises ``ValidationError`` when the application already has one (regenerate its secret).
    """
    with transaction.atomic():
        # Locked: two requests at once must not both create a client.
        locked = Application.objects.select_for_update().get(pk=application.pk)
        if locked.oauth_client_id is not None:
            raise ValidationError(
                f"{application.name} already has a consumer key: regenerate its secret instead."
            )
        secret = generate_client_secret()
        client = OAuthClient.objects.create(
            name=application.name[:255],
            user=application.owner,
            client_type=OAuthClient.CLIENT_CONFIDENTIAL,
            authorization_grant_type=OAuthClient.GRANT_CLIENT_CREDENTIALS,
            client_secret=secret,
            hash_client_secret=True,
            redirect_uris="",
        )
        locked.oauth_client = client
        locked.save(update_fields=["oauth_client"])
    application.oauth_client = client
    return client, secret


def oauth_client_secret_regenerate(*, application: Application) -> tuple[OAuthClient, str]:
    """Replace the client secret of ``application``'s OAuth2 client; returns ``(client, secret)``,
    the secret shown once. The old secret stops working at once; access tokens already issued
    stay valid until they expire or are revoked (``oauth_tokens_revoke``).

    Raises ``ValidationError`` when the application has no OAuth2 client yet.
    """
    client = application.oauth_client
    if client is None:
        raise ValidationError(f"{application.name} has no consumer key yet: create one first.")
    secret = generate_client_secret()
    client.client_secret = secret  # hashed on save (ClientSecretField, hash_client_secret=True)
    client.save(update_fields=["client_secret", "updated"])
    return client, secret


def oauth_tokens_active(application: Application) -> QuerySet[AccessToken]:
    """Unexpired access tokens issued to ``application``'s OAuth2 client, newest first."""
    tokens = get_access_token_model().objects.filter(expires__gt=timezone.now())
    if application.oauth_client_id is None:
        return tokens.none()
    return tokens.filter(application_id=application.oauth_client_id).order_by("-created", "-pk")


def oauth_tokens_revoke(*, application: Application, token_ids: list[int] | None = None) -> int:
    """Revoke (delete, as DOT does) the access tokens ``token_ids`` of ``application``'s client,
    or all of them; returns how many. Their live connections close with 4401 once this commits
    (``gateway.signals``). Ids of other applications' tokens are ignored."""
    if application.oauth_client_id is None:
        return 0
    tokens = get_access_token_model().objects.filter(application_id=application.oauth_client_id)
    if token_ids is not None:
        tokens = tokens.filter(pk__in=token_ids)
    count = 0
    with transaction.atomic():
        for token in tokens:  # one by one: each delete sends post_delete (cache and live close)
            revoke_access_token(token)  # DOT's shared revoke path (endpoint, admin action)
            count += 1
    return count
