"""REST API v1, mounted at /api/v1/ (views in portal/api.py; schema at /api/schema/)."""

from __future__ import annotations

from django.urls import path

from portal import api

app_name = "api"
urlpatterns = [
    path("", api.APIRootView.as_view(), name="root"),
    path("apis/", api.APIListView.as_view(), name="api_list"),
    path("apis/import", api.APIImportView.as_view(), name="api_import"),
    path("apis/<slug:slug>/", api.APIDetailView.as_view(), name="api_detail"),
    path(
        "apis/<slug:slug>/versions/<str:version>/publish",
        api.APIVersionPublishView.as_view(),
        name="api_version_publish",
    ),
    path("applications/", api.ApplicationListView.as_view(), name="application_list"),
    path("applications/<int:pk>/", api.ApplicationDetailView.as_view(), name="application_detail"),
    path(
        "applications/<int:pk>/subscriptions/",
        api.ApplicationSubscriptionCreateView.as_view(),
        name="application_subscription_create",
    ),
    path(
        "applications/<int:pk>/keys/", api.ApplicationKeyCreateView.as_view(), name="application_key_create"
    ),
    path("subscriptions/", api.SubscriptionListView.as_view(), name="subscription_list"),
]
