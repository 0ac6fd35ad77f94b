"""Portal HTML pages."""

from __future__ import annotations

from django.urls import path

from portal.views import applications, catalog, provider, staff

app_name = "portal"
urlpatterns = [
    path("", catalog.home, name="home"),
    path("apis/", catalog.api_list, name="api_list"),
    path("apis/<slug:slug>/", catalog.api_detail, name="api_detail"),
    path("apps/", applications.application_list, name="application_list"),
    path("apps/<int:pk>/", applications.application_detail, name="application_detail"),
    path("apps/<int:pk>/keys/", applications.key_generate, name="key_generate"),
    path("apps/<int:pk>/keys/<int:key_id>/revoke/", applications.key_revoke, name="key_revoke"),
    path("provider/apis/", provider.provider_api_list, name="provider_api_list"),
    path("provider/apis/import/", provider.provider_api_import, name="provider_api_import"),
    path("provider/apis/<slug:slug>/", provider.provider_api_detail, name="provider_api_detail"),
    path(
        "provider/apis/<slug:slug>/versions/<int:version_id>/publish/",
        provider.provider_version_publish,
        name="provider_version_publish",
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
    path("staff/plans/<int:pk>/approve/", staff.plan_approve_view, name="plan_approve"),
]
