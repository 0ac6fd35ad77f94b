"""Billing pages, mounted at /billing/."""

from __future__ import annotations

from django.urls import include, path

from billing import views

app_name = "billing"
urlpatterns = [
    path("invoices/", views.invoice_list, name="invoice_list"),
    path("invoices/<int:invoice_id>/", views.invoice_detail, name="invoice_detail"),
    # Providers: what their APIs' subscribers were invoiced.
    path("revenue/", views.revenue, name="revenue"),
    # Platform admins: every invoice, failed payments, re-running a usage window, credits.
    path("admin/", views.billing_admin, name="admin"),
    path("admin/windows/rerun/", views.admin_window_rerun, name="admin_window_rerun"),
    path("admin/credit/", views.admin_credit, name="admin_credit"),
    # The consumer's payment method (billing.views_payment).
    path("", include("billing.urls_payment")),
    # Stripe's webhook endpoint (billing.webhooks).
    path("", include("billing.urls_webhooks")),
]
