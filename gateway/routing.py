"""WebSocket routes of the gateway: ``/ws/<api slug>/<version>/<channel address>``.

The address is the concrete channel address, parameters filled in, e.g.
``/ws/stock-prices/1.0.0/prices/ACME``. Any other WebSocket path is refused with HTTP 403.
``portal/asgi.py`` wraps these routes in an origin validator.
"""

from __future__ import annotations

from django.urls import re_path

from gateway.consumers import EventStreamConsumer, NoRouteConsumer

websocket_urlpatterns = [
    re_path(r"^ws/(?P<api>[^/]+)/(?P<version>[^/]+)/(?P<address>.+)$", EventStreamConsumer.as_asgi()),
    re_path(r"", NoRouteConsumer.as_asgi()),
]
