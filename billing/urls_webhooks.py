"""Stripe's webhook endpoint, mounted at /billing/ (``billing.urls``)."""

from __future__ import annotations

from django.urls import path

from billing import webhooks

urlpatterns = [
    path("stripe/webhook/", webhooks.stripe_webhook, name="stripe_webhook"),
]
