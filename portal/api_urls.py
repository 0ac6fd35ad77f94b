"""REST API v1 (mirrors the portal). Filled in by portal/api.py."""
from __future__ import annotations

app_name = "api"
urlpatterns: list = []
