"""Top-level URLs. The public contract (README): catalog at /apis/, REST API under /api/v1/,
OpenAPI schema at /api/schema/, health at /healthz and /readyz, gateway under /ws/, OAuth2
token endpoints under /o/ (docs/credentials.md)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.decorators.debug import sensitive_post_parameters
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from gateway import prometheus
from portal import health
from portal.oauth import RevokeTokenView, TokenView

# OAuth2 for the client credentials grant only (RFC 6749 §4.4): the token endpoint and token
# revocation (RFC 7009). No authorization pages (no user consent in this grant) and no
# introspection: DOT's lets any client read any token's owner. Secrets in the body are masked
# in error reports.
_masked = sensitive_post_parameters("client_secret", "token")
oauth2_urlpatterns = [
    path("token/", _masked(TokenView.as_view()), name="token"),
    path("revoke_token/", _masked(RevokeTokenView.as_view()), name="revoke-token"),
]

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", prometheus.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("o/", include((oauth2_urlpatterns, "oauth2_provider"))),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/", include("portal.api_urls")),
    path("billing/", include("billing.urls")),
    path("usage/", include("analytics.urls")),
    path("analytics/", include("analytics.urls_dashboards")),
    path("", include("portal.urls_portal")),
]
