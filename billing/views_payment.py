"""The consumer's payment method page, ``/billing/payment-method/`` (``billing.payments``).

The card form is Stripe.js (``settings.STRIPE_JS_URL``): the page's script asks the REST endpoint
for a SetupIntent, confirms it with the card element, and posts the PaymentMethod id back here.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from billing.models import BillingAccount
from billing.payments import (
    PaymentsUnavailable,
    billed_subscriptions,
    card_expiry,
    card_label,
    payment_method_attach,
    payment_method_remove,
)
from billing.stripe_sync import stripe_enabled
from portal.forms import add_service_errors


class PaymentMethodForm(forms.Form):
    """What the page's script posts once Stripe.js confirmed the card: its PaymentMethod id."""

    payment_method = forms.CharField(max_length=255, widget=forms.HiddenInput)


def _account_for(request: HttpRequest) -> BillingAccount:
    """The signed-in user's billing account; an unsaved one when it does not exist yet (a GET
    creates nothing)."""
    return BillingAccount.objects.filter(owner=request.user).first() or BillingAccount(owner=request.user)


@login_required
def payment_method(request: HttpRequest) -> HttpResponse:
    """Show the card on file (brand, last four digits, expiry) or "No payment method", approved
    invoicing, and the Stripe.js form to add or replace the card; POST saves the confirmed card."""
    account = _account_for(request)
    form = PaymentMethodForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST" and form.is_valid():
        if not account.pk:
            account.save()
        try:
            account = payment_method_attach(
                account=account, payment_method_id=form.cleaned_data["payment_method"]
            )
        except ValidationError as error:
            add_service_errors(form, error)
        except PaymentsUnavailable as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"{card_label(account)} is your payment method now.")
            return redirect("billing:payment_method")
    if form.errors:
        status = 400
    return render(request, "billing/payment_method.html", _context(account, form), status=status)


@login_required
@require_POST
def payment_method_delete(request: HttpRequest) -> HttpResponse:
    """Remove the card on file; refused while paid subscriptions rely on it (the reason shows)."""
    account = _account_for(request)
    if not account.pk:
        messages.info(request, "No payment method is on file.")
        return redirect("billing:payment_method")
    label = card_label(account)
    try:
        payment_method_remove(account=account)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    except PaymentsUnavailable as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{label} was removed.")
    return redirect("billing:payment_method")


def _context(account: BillingAccount, form: PaymentMethodForm) -> dict[str, object]:
    return {
        "account": account,
        "card_label": card_label(account),
        "card_expiry": card_expiry(account),
        "configured": stripe_enabled(),
        "stripe_js_url": settings.STRIPE_JS_URL,
        "publishable_key": settings.STRIPE_PUBLISHABLE_KEY,
        "setup_intent_url": "/api/v1/billing/payment-method/",
        "paid_subscriptions": billed_subscriptions(account) if account.pk else [],
        "form": form,
    }
