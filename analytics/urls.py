"""Usage pages, mounted at /usage/."""

from __future__ import annotations

from django.urls import path

from analytics import views

app_name = "analytics"
urlpatterns = [
    path("", views.usage, name="usage"),
]
