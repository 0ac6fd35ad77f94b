"""Control messages to live gateway connections, over the Channels layer (never the data path).

Each accepted connection joins the groups of its API key, its subscription, its API and its API
version. When a key stops being usable (revoked, expired by an admin), a subscription stops being
active (e.g. cancelled), an API stops being connectable (blocked, retired) or a version is
retired, ``gateway.signals`` sends a message once the change commits, and every gateway process
closes those connections: 4401 for a credential, 4403 for a subscription (suspended, cancelled),
4409 for a subscription's plan change, 4410 for an API or version (``gateway.auth.CLOSE_*``).
Saves through the ORM (services, Django admin) are covered; raw ``QuerySet.update()`` calls must
call these functions themselves.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)


def api_key_group(key_id: int) -> str:
    """The Channels group of connections opened with API key ``key_id``."""
    return f"gateway.apikey.{key_id}"


def subscription_group(subscription_id: int) -> str:
    """The Channels group of connections of subscription ``subscription_id``."""
    return f"gateway.subscription.{subscription_id}"


def api_group(api_id: int) -> str:
    """The Channels group of connections to any version of API ``api_id``."""
    return f"gateway.api.{api_id}"


def api_version_group(api_version_id: int) -> str:
    """The Channels group of connections to API version ``api_version_id``."""
    return f"gateway.apiversion.{api_version_id}"


def _group_send(group: str, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # the usual case: sync code (views, admin, Celery) with no loop here
        try:
            async_to_sync(layer.group_send)(group, message)
        except Exception:  # noqa: BLE001 - Redis down: the change is committed; the audit closes them
            log.exception(
                "Could not send %s to %s; the periodic audit will close them", message["type"], group
            )
    else:  # called from async code: async_to_sync would refuse, so send in the background
        task = loop.create_task(layer.group_send(group, message))
        _pending.add(task)
        task.add_done_callback(_pending.discard)


_pending: set[asyncio.Task[None]] = set()  # keeps background sends alive until they finish


def api_key_revoked_notify(*, key_id: int) -> None:
    """Tell every gateway process to close the live connections of key ``key_id`` (sync code)."""
    _group_send(api_key_group(key_id), {"type": "gateway.revoke"})


def subscription_ended_notify(*, subscription_id: int, status: str = "") -> None:
    """Tell every gateway process to close the live connections of a subscription that is no
    longer active (sync code); ``status`` (its new ``Subscription.Status``, e.g. ``suspended``)
    is named in the close reason."""
    _group_send(subscription_group(subscription_id), {"type": "gateway.subscription_ended", "status": status})


def api_unavailable_notify(*, api_id: int, status: str) -> None:
    """Tell every gateway process to close the live connections of API ``api_id``, which moved
    to ``status`` (an ``API.Status`` value the gateway does not serve: blocked, retired)."""
    _group_send(api_group(api_id), {"type": "gateway.api_unavailable", "status": status})


def api_version_unavailable_notify(*, api_version_id: int, status: str) -> None:
    """Tell every gateway process to close the live connections of API version
    ``api_version_id``, which moved to ``status`` (not live: retired)."""
    _group_send(
        api_version_group(api_version_id),
        {"type": "gateway.api_unavailable", "status": status, "scope": "version"},
    )


def oauth_token_group(token_id: int) -> str:
    """The Channels group of connections opened with OAuth2 access token ``token_id``."""
    return f"gateway.oauthtoken.{token_id}"


def oauth_token_revoked_notify(*, token_id: int) -> None:
    """Tell every gateway process to close the live connections of access token ``token_id``
    (revoked: deleted through DOT's revoke endpoint, the portal or the admin)."""
    _group_send(oauth_token_group(token_id), {"type": "gateway.revoke"})


def subscription_plan_changed_notify(*, subscription_id: int) -> None:
    """Tell every gateway process to close the live connections of a subscription that moved to
    another business plan (close code 4409: reconnect to continue under the new plan)."""
    _group_send(subscription_group(subscription_id), {"type": "gateway.plan_changed"})


def credential_expiry_notify(*, group: str, expires_at: float | None) -> None:
    """Tell every gateway process that the credential of ``group`` (``api_key_group`` or
    ``oauth_token_group``) now expires at ``expires_at`` (Unix seconds; None: never), e.g. at
    the end of a rotation's grace period. Message ``{"type": "gateway.credential_expiry",
    "expires_at": float | None}``: each live connection moves its expiry timer, closes with 4401
    "Credential expired." when it fires and refuses client events after it."""
    _group_send(group, {"type": "gateway.credential_expiry", "expires_at": expires_at})
