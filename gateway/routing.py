"""WebSocket routes of the gateway (docs/gateway.md, "Connecting a client").

- ``/ws/<api slug>/<version>/<channel address>``: one channel, the address with its parameters
  filled in, e.g. ``/ws/stock-prices/1.0.0/prices/ACME`` (``EventStreamConsumer``);
- ``/ws/<api slug>/<version>`` (a trailing ``/`` is allowed): multiplexed mode, channels
  subscribed with frames (``MultiplexConsumer``);
- any other path: accepted and closed with 4404 (``NoRouteConsumer``).

``portal/asgi.py`` wraps these routes in an origin validator.
"""

from __future__ import annotations

from django.urls import re_path

from gateway.consumers import EventStreamConsumer, MultiplexConsumer, NoRouteConsumer

websocket_urlpatterns = [
    re_path(r"^ws/(?P<api>[^/]+)/(?P<version>[^/]+)/?$", MultiplexConsumer.as_asgi()),
    re_path(r"^ws/(?P<api>[^/]+)/(?P<version>[^/]+)/(?P<address>.+)$", EventStreamConsumer.as_asgi()),
    re_path(r"", NoRouteConsumer.as_asgi()),
]
