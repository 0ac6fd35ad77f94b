"""Public URLs of the gateway, shared by the portal's client snippets, the demo banner and the
consumer-facing AsyncAPI documents."""

from __future__ import annotations

from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from django.conf import settings


def gateway_ws_base(*, api_slug: str, version: str, base_url: str | None = None) -> tuple[str, str, str]:
    """``(scheme, host, path)`` of an API version's WebSocket root: ``("ws", "127.0.0.1:8000",
    "/ws/<api>/<version>")``; a channel's URL is the root plus ``/<address>``.

    The base is ``base_url`` or ``EVENTGATE_PUBLIC_URL`` (http → ws, https → wss, RFC 6455 §3);
    a path prefix of the base (a portal behind ``/eventgate/``) is kept.
    """
    base = urlsplit(base_url or settings.EVENTGATE_PUBLIC_URL)
    scheme = "wss" if base.scheme == "https" else "ws"
    path = f"{base.path.rstrip('/')}/ws/{quote(api_slug)}/{quote(version)}"
    return scheme, base.netloc, path


def gateway_ws_url(
    *, api_slug: str, version: str, address: str, secret: str | None = None, base_url: str | None = None
) -> str:
    """The public WebSocket URL of a channel: ``ws://<host>/ws/<api>/<version>/<address>``.

    The base is ``base_url`` or ``EVENTGATE_PUBLIC_URL`` (http → ws, https → wss); the key, if given,
    travels in the ``access_token`` query parameter because browsers cannot set handshake headers.
    """
    scheme, host, root = gateway_ws_base(api_slug=api_slug, version=version, base_url=base_url)
    # Braces stay readable: an address that still holds a {parameter} placeholder is a template
    # for the reader to fill in, not a URL to open as it is.
    address = quote(address.lstrip("/"), safe="/{}")
    query = urlencode({"access_token": secret}) if secret else ""
    return urlunsplit((scheme, host, f"{root}/{address}", query, ""))
