"""Public URLs of the gateway, shared by the portal's client snippets and the demo banner."""

from __future__ import annotations

from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from django.conf import settings


def gateway_ws_url(
    *, api_slug: str, version: str, address: str, secret: str | None = None, base_url: str | None = None
) -> str:
    """The public WebSocket URL of a channel: ``ws://<host>/ws/<api>/<version>/<address>``.

    The base is ``base_url`` or ``EVENTGATE_PUBLIC_URL`` (http → ws, https → wss); the key, if given,
    travels in the ``access_token`` query parameter because browsers cannot set handshake headers.
    """
    base = urlsplit(base_url or settings.EVENTGATE_PUBLIC_URL)
    scheme = "wss" if base.scheme == "https" else "ws"
    address = quote(address.lstrip("/"), safe="/")
    path = f"{base.path.rstrip('/')}/ws/{quote(api_slug)}/{quote(version)}/{address}"
    query = urlencode({"access_token": secret}) if secret else ""
    return urlunsplit((scheme, base.netloc, path, query, ""))
