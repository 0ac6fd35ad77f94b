"""URL routes (filled in by the analytics dashboards)."""

from __future__ import annotations

app_name = "analytics_urls_dashboards"
urlpatterns: list = []
