"""Billing pages, mounted at /billing/."""

from __future__ import annotations

from django.urls import include, path

from billing import views

app_name = "billing"
urlpatterns = [
    path("invoices/", views.invoice_list, name="invoice_list"),
    path("invoices/<int:invoice_id>/", views.invoice_detail, name="invoice_detail"),
    # The consumer's payment method (billing.views_payment).
    path("", include("billing.urls_payment")),
    # Stripe's webhook endpoint (billing.webhooks).
    path("", include("billing.urls_webhooks")),
]
