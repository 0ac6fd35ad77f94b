"""The consumer's payment method pages, included by ``billing.urls`` (namespace ``billing``)."""

from __future__ import annotations

from django.urls import path

from billing import views_payment

urlpatterns = [
    path("payment-method/", views_payment.payment_method, name="payment_method"),
    path("payment-method/remove", views_payment.payment_method_delete, name="payment_method_remove"),
]
