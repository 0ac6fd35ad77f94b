"""Control messages to live gateway connections, over the Channels layer (never the data path).

Each accepted connection joins the group of the API key it authenticated with; services call
``api_key_revoked_notify`` after a revocation commits, and every gateway process closes that
key's connections with close code 4401 (``gateway.consumers.CLOSE_REVOKED``).
"""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer


def api_key_group(key_id: int) -> str:
    """The Channels group of connections opened with API key ``key_id``."""
    return f"gateway.apikey.{key_id}"


def api_key_revoked_notify(*, key_id: int) -> None:
    """Tell every gateway process to close the live connections of key ``key_id`` (sync code)."""
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(api_key_group(key_id), {"type": "gateway.revoke"})
