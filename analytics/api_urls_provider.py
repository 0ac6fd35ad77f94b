"""REST endpoints of the provider's and the platform's analytics, mounted at /api/v1/analytics/
(``analytics.api_dashboards``)."""

from __future__ import annotations

from django.urls import path

from analytics import api_dashboards as views

app_name = "analytics_api_urls_provider"
urlpatterns = [
    path("apis/<slug:slug>/", views.ProviderAPIAnalyticsView.as_view(), name="provider_api"),
    path(
        "apis/<slug:slug>/connections/",
        views.ProviderAPIConnectionsView.as_view(),
        name="provider_api_connections",
    ),
    path("platform/", views.PlatformAnalyticsView.as_view(), name="platform"),
]
