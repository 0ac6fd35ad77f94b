"""REST API v1: everything a person can do in the portal, over HTTP.

The catalog and its documents (anyone); AsyncAPI import, publishing, lifecycle, sources and
business plans (providers, for their own APIs); the approval queue (admins); applications,
subscriptions and API keys (every signed-in user, for their own). One small view per operation
with explicit serializers (portal/serializers.py); the work is done by ``portal.services``.
Modules by audience: ``catalog`` (anyone), ``provider``, ``approvals`` (admins), ``consumer``;
``common`` holds the base view, permissions, error helpers and the access helpers.

Clients authenticate with the portal session (browser, CSRF token required for writes) or HTTP
Basic with email and password (``curl -u email:password``). Another user's application, key or
subscription, or an API you may not manage, answers 404 as if it did not exist. A service's
``ValidationError`` answers 400 with field errors, its ``PermissionDenied`` 403 with its message.
See docs/rest-api.md.
"""

from __future__ import annotations

from portal.api.approvals import (
    ApprovalListView,
    PlanApproveView,
    PlanRejectView,
    SubscriptionApproveView,
    SubscriptionRejectView,
)
from portal.api.catalog import (
    APIDetailView,
    APIListView,
    APIRootView,
    APIVersionDetailView,
    APIVersionListView,
    ConsumerDocumentView,
)
from portal.api.consumer import (
    ApplicationDetailView,
    ApplicationKeyCreateView,
    ApplicationKeyRevokeView,
    ApplicationListView,
    ApplicationSubscriptionCreateView,
    SubscriptionCancelView,
    SubscriptionDetailView,
    SubscriptionLimitsView,
    SubscriptionListView,
)
from portal.api.provider import (
    APIImportView,
    APILifecycleView,
    APIPlanListView,
    APIVersionLifecycleView,
    APIVersionPayloadValidationView,
    APIVersionPublishView,
    APIVersionSourceView,
    PlanTemplateListView,
    ProviderAPIListView,
)

__all__ = [
    "APIDetailView",
    "APIImportView",
    "APILifecycleView",
    "APIListView",
    "APIPlanListView",
    "APIRootView",
    "APIVersionDetailView",
    "APIVersionLifecycleView",
    "APIVersionPayloadValidationView",
    "APIVersionListView",
    "APIVersionPublishView",
    "APIVersionSourceView",
    "ApplicationDetailView",
    "ApplicationKeyCreateView",
    "ApplicationKeyRevokeView",
    "ApplicationListView",
    "ApplicationSubscriptionCreateView",
    "ApprovalListView",
    "ConsumerDocumentView",
    "PlanApproveView",
    "PlanRejectView",
    "PlanTemplateListView",
    "ProviderAPIListView",
    "SubscriptionApproveView",
    "SubscriptionCancelView",
    "SubscriptionDetailView",
    "SubscriptionLimitsView",
    "SubscriptionListView",
    "SubscriptionRejectView",
]
