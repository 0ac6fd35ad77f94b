"""REST API for billing, mounted at /api/v1/billing/ (docs/rest-api.md › Billing; views in
``billing.api``)."""

from __future__ import annotations

from django.urls import include, path

from billing import api

urlpatterns = [
    path("invoices/", api.InvoiceListView.as_view(), name="billing_invoices"),
    path("invoices/<int:pk>/", api.InvoiceDetailView.as_view(), name="billing_invoice"),
    path("estimate/", api.EstimateView.as_view(), name="billing_estimate"),
    path("revenue/", api.RevenueView.as_view(), name="billing_revenue"),
    path("admin/invoices/", api.AdminInvoiceListView.as_view(), name="billing_admin_invoices"),
    path(
        "admin/failed-payments/", api.AdminFailedPaymentsView.as_view(), name="billing_admin_failed_payments"
    ),
    path("admin/windows/rerun/", api.AdminWindowRerunView.as_view(), name="billing_admin_window_rerun"),
    path("admin/credits/", api.AdminCreditListView.as_view(), name="billing_admin_credits"),
    # The consumer's payment method (billing.api_payment).
    path("payment-method/", include("billing.api_urls_payment")),
]
