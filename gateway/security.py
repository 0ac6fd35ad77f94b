"""Origin checking for gateway WebSocket handshakes.

Browsers always send ``Origin`` on a WebSocket handshake (RFC 6455 §4.1 item 8, §10.2), and the
check exists to stop other sites' pages from using a visitor's ambient credentials. Non-browser
clients (``python -m websockets``, provider SDKs, curl) send no ``Origin`` and could forge one
anyway; the gateway authenticates them by their credential, so a missing ``Origin`` is allowed.
A present ``Origin`` must match ``ALLOWED_HOSTS``, as with Channels' ``AllowedHostsOriginValidator``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import ParseResult

from channels.security.websocket import AllowedHostsOriginValidator, OriginValidator


class MissingOriginAllowedValidator(OriginValidator):
    """``OriginValidator`` that lets handshakes without an ``Origin`` header through."""

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        if parsed_origin is None:
            return True
        return bool(self.validate_origin(parsed_origin))


def GatewayOriginValidator(application: Any) -> MissingOriginAllowedValidator:  # noqa: N802 - mirrors Channels
    """Wrap ``application`` like ``AllowedHostsOriginValidator``, allowing a missing ``Origin``."""
    allowed = AllowedHostsOriginValidator(application).allowed_origins
    return MissingOriginAllowedValidator(application, allowed)
