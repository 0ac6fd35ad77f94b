"""WebSocket routes of the gateway: /ws/<api>/<version>/<channel address>."""
from __future__ import annotations

websocket_urlpatterns: list = []
