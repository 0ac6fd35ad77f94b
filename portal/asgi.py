"""ASGI entry point: HTTP to Django, ``/sse/...`` to the gateway's Server-Sent Events, WebSocket
to the gateway (served by ``manage.py serve``: uvicorn).

Also counts the open gateway connections of this process (WebSocket connections and SSE
streams, from the first ASGI message until the application returns, so a connection counts
until its clean-up has run) and answers ``GET /gateway/status`` with them (``gateway_status``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import time
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from gateway.auth import CLOSE_NOT_FOUND  # noqa: E402
from gateway.bridge import _bridges  # noqa: E402
from gateway.connections import handshake_status  # noqa: E402
from gateway.control import _hubs  # noqa: E402
from gateway.credentials import credential_cache_reads  # noqa: E402
from gateway.metering import get_meter  # noqa: E402
from gateway.routing import websocket_urlpatterns  # noqa: E402
from gateway.security import GatewayOriginValidator  # noqa: E402
from gateway.sse import EventSourceConsumer, refusal_response  # noqa: E402
from gateway.throttling import throttle_status  # noqa: E402

ASGIApp = Any

# Open gateway connections of this process: {"websocket": n, "sse": n}.
connections: dict[str, int] = {"websocket": 0, "sse": 0}


def connections_counted(kind: str, app: ASGIApp) -> ASGIApp:
    """Wrap ``app`` so ``connections[kind]`` counts its calls in progress."""

    async def counted(scope: dict[str, Any], receive: Any, send: Any) -> None:
        connections[kind] += 1
        try:
            await app(scope, receive, send)
        finally:
            connections[kind] -= 1

    return counted


def _local_unproxied(scope: dict[str, Any]) -> bool:
    """Whether the request comes straight from this machine: a loopback peer and no proxy
    header (a reverse proxy on the same host would otherwise make every request look local)."""
    client = scope.get("client")
    try:
        loopback = bool(client) and ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False
    proxied = any(name in (b"x-forwarded-for", b"forwarded", b"x-real-ip") for name, _ in scope["headers"])
    return loopback and not proxied


def gateway_status_document() -> dict[str, Any]:
    """This process's gateway state: open connections, the bridge (connection, bindings,
    routes, events dropped before fan-out by reason), slow-consumer drops per subscription,
    handshakes (``cached``: a grant reused with no query and no Redis command; ``checked``;
    ``refused``; ``database_queries`` of the gateway's worker threads; ``credential_cache_reads``
    of the shared Redis cache), the control hub (groups held, messages, layer commands) and
    throttling (subscriptions with a throttle here, how many are stopped now, events throttled
    since the process started)."""
    bridge = hub = None
    try:
        loop = asyncio.get_running_loop()
        bridge, hub = _bridges.get(loop), _hubs.get(loop)
    except RuntimeError:
        pass
    dropped = get_meter().dropped
    return {
        "pid": os.getpid(),
        "connections": {**connections, "total": sum(connections.values())},
        "handshakes": {**handshake_status(), "credential_cache_reads": credential_cache_reads()},
        "control": hub.status() if hub is not None else None,
        "bridge": bridge.status() if bridge is not None else None,
        "throttling": {**throttle_status(), "throttled_events": get_meter().throttled_total},
        "analytics": _analytics_status(),
        "slow_consumer_dropped": {
            "total": sum(dropped.values()),
            "by_subscription": [
                {"subscription": subscription_id, "channel": template, "events": events}
                for (subscription_id, template), events in sorted(dropped.items())
            ],
        },
    }


def _analytics_status() -> dict[str, Any]:
    """The meter's flushes (``gateway.metering``): successful and failed ones, seconds since the
    last success (None before the first), rows waiting and log rows lost to a long outage."""
    meter = get_meter()
    last = meter.last_flush_ok_at
    return {
        "flushes_ok": meter.flushes_ok,
        "flushes_failed": meter.flushes_failed,
        "flush_lag_seconds": None if last is None else round(time.time() - last, 3),
        "pending_rows": meter.pending_rows(),
        "records_lost": meter.records_lost,
    }


async def gateway_status(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``GET /gateway/status``: ``gateway_status_document()`` as JSON, for operators and tests.
    Only from this machine without a proxy in between (``_local_unproxied``): 404 otherwise."""
    if _local_unproxied(scope) and scope["method"] in ("GET", "HEAD"):
        status, body = 200, json.dumps(gateway_status_document()).encode()
    else:
        status, body = 404, b'{"error": "not_found"}'
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


SSE_ROUTE = r"^sse/(?P<api>[^/]+)/(?P<version>[^/]+)/(?P<address>.+)$"
_sse_route = re.compile(SSE_ROUTE)
sse_app = connections_counted("sse", URLRouter([re_path(SSE_ROUTE, EventSourceConsumer.as_asgi())]))
REASON_SSE_NO_ROUTE = "Not a gateway route: use /sse/<api>/<version>/<channel address>."


async def sse_no_route(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Any other ``/sse/`` path (no address, an empty API or version): 404 with the refusal
    contract's JSON body (``gateway.sse.refusal_response``, close code 4404)."""
    status, headers, body = refusal_response(CLOSE_NOT_FOUND, REASON_SSE_NO_ROUTE)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def http_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Routes ``/sse/<api>/<version>/<address>`` to the SSE consumer (other ``/sse/`` paths to
    ``sse_no_route``), ``/gateway/status`` to ``gateway_status``, everything else to Django."""
    path = scope["path"]
    if path.startswith("/sse/"):
        if _sse_route.match(path[1:]):
            await sse_app(scope, receive, send)
        else:
            await sse_no_route(scope, receive, send)
    elif path == "/gateway/status":
        await gateway_status(scope, receive, send)
    else:
        await django_asgi_app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_app,
        # Like AllowedHostsOriginValidator, but clients without an Origin header (CLIs) are allowed.
        "websocket": connections_counted(
            "websocket", GatewayOriginValidator(URLRouter(websocket_urlpatterns))
        ),
    }
)
