"""ASGI entry point: HTTP to Django, WebSocket to the gateway (served by daphne)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from gateway.routing import websocket_urlpatterns  # noqa: E402
from gateway.security import GatewayOriginValidator  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Like AllowedHostsOriginValidator, but clients without an Origin header (CLIs) are allowed.
        "websocket": GatewayOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
