"""The provider's and the platform's analytics pages, mounted at /analytics/
(``analytics.views_dashboards``)."""

from __future__ import annotations

from django.urls import path

from analytics import views_dashboards as views

app_name = "analytics_urls_dashboards"
urlpatterns = [
    path("", views.analytics_index, name="index"),
    path("apis/<slug:slug>/", views.provider_api, name="provider_api"),
    path("apis/<slug:slug>/live/", views.provider_api_live, name="provider_api_live"),
    path("platform/", views.platform, name="platform"),
    path("platform/live/", views.platform_live, name="platform_live"),
]
