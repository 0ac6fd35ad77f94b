from __future__ import annotations

app_name = "billing"
urlpatterns: list = []
