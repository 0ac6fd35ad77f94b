"""REST API v1, mounted at /api/v1/ (views in portal/api/; schema at /api/schema/; docs/rest-api.md)."""

from __future__ import annotations

from django.urls import include, path, re_path

from portal import api
from portal.api import webhooks
from portal.api.common import endpoint_not_found

app_name = "api"
urlpatterns = [
    path("", api.APIRootView.as_view(), name="root"),
    # Analytics (docs/analytics.md): the consumer's usage, the provider's and the platform's dashboards.
    path("usage/", include("analytics.api_urls_consumer")),
    path("analytics/", include("analytics.api_urls_provider")),
    # Billing (docs/billing.md): invoices, estimate, payment method, revenue, admin.
    path("billing/", include("billing.api_urls")),
    # Catalog (anyone) and the provider's own APIs.
    path("apis/", api.APIListView.as_view(), name="api_list"),
    path("apis/import", api.APIImportView.as_view(), name="api_import"),
    path("apis/<slug:slug>/", api.APIDetailView.as_view(), name="api_detail"),
    path("apis/<slug:slug>/lifecycle", api.APILifecycleView.as_view(), name="api_lifecycle"),
    path("apis/<slug:slug>/plans/", api.APIPlanListView.as_view(), name="api_plan_list"),
    path("apis/<slug:slug>/versions/", api.APIVersionListView.as_view(), name="api_version_list"),
    path(
        "apis/<slug:slug>/versions/<str:version>/",
        api.APIVersionDetailView.as_view(),
        name="api_version_detail",
    ),
    path(
        "apis/<slug:slug>/versions/<str:version>/asyncapi",
        api.ConsumerDocumentView.as_view(),
        name="api_version_asyncapi",
    ),
    path(
        "apis/<slug:slug>/versions/<str:version>/source",
        api.APIVersionSourceView.as_view(),
        name="api_version_source",
    ),
    path(
        "apis/<slug:slug>/versions/<str:version>/publish",
        api.APIVersionPublishView.as_view(),
        name="api_version_publish",
    ),
    path(
        "apis/<slug:slug>/versions/<str:version>/lifecycle",
        api.APIVersionLifecycleView.as_view(),
        name="api_version_lifecycle",
    ),
    path(
        "apis/<slug:slug>/versions/<str:version>/payload-validation",
        api.APIVersionPayloadValidationView.as_view(),
        name="api_version_payload_validation",
    ),
    path("provider/apis/", api.ProviderAPIListView.as_view(), name="provider_api_list"),
    path("plan-templates/", api.PlanTemplateListView.as_view(), name="plan_template_list"),
    # Approvals (admins).
    path("approvals/", api.ApprovalListView.as_view(), name="approval_list"),
    path("plans/<int:pk>/approve", api.PlanApproveView.as_view(), name="plan_approve"),
    path("plans/<int:pk>/reject", api.PlanRejectView.as_view(), name="plan_reject"),
    path(
        "subscriptions/<int:pk>/approve", api.SubscriptionApproveView.as_view(), name="subscription_approve"
    ),
    path("subscriptions/<int:pk>/reject", api.SubscriptionRejectView.as_view(), name="subscription_reject"),
    # Consumers: their applications, subscriptions and API keys.
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
    path(
        "applications/<int:pk>/keys/<int:key_id>/revoke",
        api.ApplicationKeyRevokeView.as_view(),
        name="application_key_revoke",
    ),
    path(
        "applications/<int:pk>/keys/<int:key_id>/rotate",
        api.consumer.ApplicationKeyRotateView.as_view(),
        name="application_key_rotate",
    ),
    path(
        "applications/<int:pk>/oauth-client",
        api.consumer.ApplicationOAuthClientView.as_view(),
        name="application_oauth_client",
    ),
    path(
        "applications/<int:pk>/oauth-client/secret",
        api.consumer.ApplicationOAuthClientSecretView.as_view(),
        name="application_oauth_client_secret",
    ),
    path(
        "applications/<int:pk>/oauth-tokens/",
        api.consumer.ApplicationOAuthTokenListView.as_view(),
        name="application_oauth_token_list",
    ),
    path(
        "applications/<int:pk>/oauth-tokens/<int:token_id>/revoke",
        api.consumer.ApplicationOAuthTokenRevokeView.as_view(),
        name="application_oauth_token_revoke",
    ),
    path("subscriptions/", api.SubscriptionListView.as_view(), name="subscription_list"),
    path("subscriptions/<int:pk>/", api.SubscriptionDetailView.as_view(), name="subscription_detail"),
    path("subscriptions/<int:pk>/cancel", api.SubscriptionCancelView.as_view(), name="subscription_cancel"),
    path("subscriptions/<int:pk>/limits/", api.SubscriptionLimitsView.as_view(), name="subscription_limits"),
    # Webhooks (consumers): WebSub-style callbacks for channels, their delivery log (portal/api/webhooks.py).
    path("webhooks/", webhooks.WebhookListView.as_view(), name="webhook_list"),
    path("webhooks/<int:pk>/", webhooks.WebhookDetailView.as_view(), name="webhook_detail"),
    path("webhooks/<int:pk>/verify", webhooks.WebhookVerifyView.as_view(), name="webhook_verify"),
    path(
        "webhooks/<int:pk>/deliveries/",
        webhooks.WebhookDeliveryListView.as_view(),
        name="webhook_delivery_list",
    ),
    path(
        "webhooks/<int:pk>/deliveries/<uuid:delivery_id>/",
        webhooks.WebhookDeliveryDetailView.as_view(),
        name="webhook_delivery_detail",
    ),
    path(
        "webhooks/<int:pk>/deliveries/<uuid:delivery_id>/redeliver",
        webhooks.WebhookRedeliverView.as_view(),
        name="webhook_redeliver",
    ),
    # Last: anything else under /api/v1/ is a JSON 404, not the portal's HTML page.
    re_path(r"^(?P<path>.*)$", endpoint_not_found, name="not_found"),
]
