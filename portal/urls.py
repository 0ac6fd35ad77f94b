"""Top-level URLs. The public contract (README): catalog at /apis/, REST API under /api/v1/,
OpenAPI schema at /api/schema/, health at /healthz and /readyz, gateway under /ws/."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from portal import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/", include("portal.api_urls")),
    path("billing/", include("billing.urls")),
    path("usage/", include("analytics.urls")),
    path("", include("portal.urls_portal")),
]
