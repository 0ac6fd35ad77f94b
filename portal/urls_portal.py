"""Portal HTML pages."""

from __future__ import annotations

from django.urls import path

from portal.views import applications, catalog, provider, staff, try_it, webhooks

app_name = "portal"
urlpatterns = [
    path("", catalog.home, name="home"),
    path("apis/", catalog.api_list, name="api_list"),
    path("apis/<slug:slug>/", catalog.api_detail, name="api_detail"),
    path(
        "apis/<slug:slug>/versions/<str:version>/asyncapi.<str:fmt>",
        catalog.api_document,
        name="api_document",
    ),
    path(
        "apis/<slug:slug>/versions/<str:version>/source",
        catalog.api_version_source,
        name="api_version_source",
    ),
    path("apps/", applications.application_list, name="application_list"),
    path("apps/<int:pk>/", applications.application_detail, name="application_detail"),
    path("apps/<int:pk>/keys/", applications.key_generate, name="key_generate"),
    path("apps/<int:pk>/keys/<int:key_id>/revoke/", applications.key_revoke, name="key_revoke"),
    path("apps/<int:pk>/keys/<int:key_id>/rotate/", applications.key_rotate, name="key_rotate"),
    path("apps/<int:pk>/oauth/", applications.oauth_client_create_view, name="oauth_client_create"),
    path(
        "apps/<int:pk>/oauth/secret/",
        applications.oauth_client_secret_regenerate_view,
        name="oauth_client_secret_regenerate",
    ),
    path(
        "apps/<int:pk>/oauth/tokens/<int:token_id>/revoke/",
        applications.oauth_token_revoke_view,
        name="oauth_token_revoke",
    ),
    path(
        "apps/<int:pk>/oauth/tokens/revoke/",
        applications.oauth_tokens_revoke_all_view,
        name="oauth_tokens_revoke",
    ),
    path("apps/<int:pk>/edit/", applications.application_edit, name="application_edit"),
    path("apps/<int:pk>/delete/", applications.application_delete_view, name="application_delete"),
    path(
        "apps/<int:pk>/subscriptions/<int:subscription_id>/cancel/",
        applications.subscription_cancel_view,
        name="subscription_cancel",
    ),
    path("apps/<int:pk>/webhooks/", webhooks.webhook_list, name="webhook_list"),
    path("apps/<int:pk>/webhooks/<int:webhook_id>/", webhooks.webhook_detail, name="webhook_detail"),
    path("apps/<int:pk>/webhooks/<int:webhook_id>/verify/", webhooks.webhook_verify, name="webhook_verify"),
    path(
        "apps/<int:pk>/webhooks/<int:webhook_id>/delete/", webhooks.webhook_delete_view, name="webhook_delete"
    ),
    path(
        "apps/<int:pk>/webhooks/<int:webhook_id>/deliveries/<uuid:delivery_id>/redeliver/",
        webhooks.webhook_redeliver,
        name="webhook_redeliver",
    ),
    path("provider/apis/", provider.provider_api_list, name="provider_api_list"),
    path("provider/apis/import/", provider.provider_api_import, name="provider_api_import"),
    path("provider/apis/<slug:slug>/", provider.provider_api_detail, name="provider_api_detail"),
    path(
        "provider/apis/<slug:slug>/versions/<int:version_id>/publish/",
        provider.provider_version_publish,
        name="provider_version_publish",
    ),
    path(
        "provider/apis/<slug:slug>/lifecycle/", provider.provider_api_lifecycle, name="provider_api_lifecycle"
    ),
    path(
        "provider/apis/<slug:slug>/versions/<int:version_id>/lifecycle/",
        provider.provider_version_lifecycle,
        name="provider_version_lifecycle",
    ),
    path(
        "provider/apis/<slug:slug>/versions/<int:version_id>/validation/",
        provider.provider_version_validation,
        name="provider_version_validation",
    ),
    path("staff/approvals/", staff.approvals, name="approvals"),
    path(
        "staff/subscriptions/<int:pk>/approve/",
        staff.subscription_decide,
        {"decision": "approve"},
        name="subscription_approve",
    ),
    path(
        "staff/subscriptions/<int:pk>/reject/",
        staff.subscription_decide,
        {"decision": "reject"},
        name="subscription_reject",
    ),
    path("staff/plans/<int:pk>/approve/", staff.plan_decide, {"decision": "approve"}, name="plan_approve"),
    path("staff/plans/<int:pk>/reject/", staff.plan_decide, {"decision": "reject"}, name="plan_reject"),
    path("staff/apis/", staff.staff_api_list, name="staff_api_list"),
    path("staff/apis/<slug:slug>/lifecycle/", staff.staff_api_lifecycle, name="staff_api_lifecycle"),
    path("try/", try_it.try_it, name="try_it"),
    path("try/<int:pk>/keys/", try_it.test_key_issue, name="try_it_key"),
]
