"""The consumer's payment method page, ``/billing/payment-method/`` (``billing.payments``).

The card form is Stripe.js (``settings.STRIPE_JS_URL``): the page's script asks the REST endpoint
for a SetupIntent, confirms it with the card element, and posts the PaymentMethod id back here.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
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

# Stripe.js proper: Stripe requires loading it from this host as an ordinary script (Stripe docs:
# Stripe.js reference › Including Stripe.js). Any other ``STRIPE_JS_URL`` is a stand-in (localstripe's
# under ``make run`` and the tests), which the page's script evaluates in a function scope: its
# top-level ``class Element`` would otherwise shadow the DOM's ``Element`` for every script on the
# page (Bootstrap's collapse, hence the navbar toggler, breaks).
STRIPE_JS_HOST = "js.stripe.com"
SAVED_FOR_NEXT = "Card saved — you can subscribe now"


def next_path(request: HttpRequest) -> str:
    """The ``next`` query parameter of ``request`` when it is a path on this site (e.g.
    ``/apis/ticker/#subscribe``), else "". Other hosts, schemes and scheme-relative URLs
    (``//evil.example``) are refused by ``url_has_allowed_host_and_scheme`` with no allowed
    host but the request's own; only values starting with one "/" pass."""
    target = request.GET.get("next") or ""
    allowed = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return target if allowed and target.startswith("/") else ""


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
    invoicing, and the Stripe.js form to add or replace the card; POST saves the confirmed card.

    ``?next=<path on this site>`` (``next_path``; e.g. the subscribe form that refused a paid plan):
    after the card is saved the consumer goes back there with "Card saved — you can subscribe now
    (Visa •••• 4242)"
    instead of staying here. Other values are ignored."""
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
            if target := next_path(request):
                messages.success(request, f"{SAVED_FOR_NEXT} ({card_label(account)})")
                return redirect(target)
            messages.success(request, f"{card_label(account)} is your payment method now.")
            return redirect("billing:payment_method")
    if form.errors:
        status = 400
    context = {**_context(account, form), "next_path": next_path(request)}
    return render(request, "billing/payment_method.html", context, status=status)


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
        "stripe_js_isolated": urlsplit(settings.STRIPE_JS_URL).hostname != STRIPE_JS_HOST,
        "publishable_key": settings.STRIPE_PUBLISHABLE_KEY,
        "setup_intent_url": "/api/v1/billing/payment-method/",
        "paid_subscriptions": billed_subscriptions(account) if account.pk else [],
        "form": form,
    }
