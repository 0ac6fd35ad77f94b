"""REST API for billing, mounted at /api/v1/billing/ (docs/rest-api.md › Billing)."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [
    # The consumer's payment method (billing.api_payment).
    path("payment-method/", include("billing.api_urls_payment")),
]
