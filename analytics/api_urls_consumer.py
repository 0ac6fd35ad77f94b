"""REST routes of the consumer's usage dashboard, mounted at /api/v1/usage/ (analytics.api_consumer):
names ``api:usage:list``, ``api:usage:subscription``, ``api:usage:subscription_connections``."""

from __future__ import annotations

from django.urls import path

from analytics import api_consumer

app_name = "usage"
urlpatterns = [
    path("", api_consumer.UsageListView.as_view(), name="list"),
    path("subscriptions/<int:pk>/", api_consumer.UsageSubscriptionView.as_view(), name="subscription"),
    path(
        "subscriptions/<int:pk>/connections/",
        api_consumer.UsageConnectionsView.as_view(),
        name="subscription_connections",
    ),
]
