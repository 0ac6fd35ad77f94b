"""REST routes of the payment method, mounted at /api/v1/billing/payment-method/ (``billing.api_payment``).

Admin approval of invoicing lives here too, as ``payment-method/accounts/<id>/invoicing/``.
"""

from __future__ import annotations

from django.urls import path

from billing import api_payment

urlpatterns = [
    path("", api_payment.PaymentMethodView.as_view(), name="billing_payment_method"),
    path(
        "accounts/<int:pk>/invoicing/",
        api_payment.AccountInvoicingView.as_view(),
        name="billing_account_invoicing",
    ),
]
