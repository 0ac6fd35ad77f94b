"""Billing pages for consumers: their invoices and each invoice's lines with the usage behind them."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone

from billing.models import Invoice, InvoiceLine
from billing.services import period_estimate

KIND_ORDER = {kind: rank for rank, kind in enumerate(InvoiceLine.Kind.values)}


def _get_invoice_for_user(request: HttpRequest, invoice_id: int) -> Invoice:
    """The invoice ``invoice_id`` if it belongs to the logged-in user's billing account, else 404."""
    invoices = Invoice.objects.for_user(request.user).select_related("account__owner")
    return get_object_or_404(invoices, pk=invoice_id)


@login_required
def invoice_list(request: HttpRequest) -> HttpResponse:
    """The signed-in user's invoices, newest period first, and the running estimate of the
    current period (``billing.services.period_estimate``)."""
    invoices = Invoice.objects.for_user(request.user).order_by("-period_start", "currency")
    estimate = period_estimate(user=request.user, now=timezone.now())
    return render(request, "billing/invoice_list.html", {"invoices": invoices, "estimate": estimate})


@login_required
def invoice_detail(request: HttpRequest, invoice_id: int) -> HttpResponse:
    """One of the user's invoices: lines with the usage behind them (overage lines: the usage of
    the plan's counted directions), totals, Stripe status."""
    invoice = _get_invoice_for_user(request, invoice_id)
    lines = sorted(
        invoice.lines.select_related("subscription__api", "subscription__plan", "subscription__application"),
        # Per subscription: base fee, events, events overage, bytes overage (InvoiceLine.Kind order).
        key=lambda line: (line.subscription_id, KIND_ORDER.get(line.kind, len(KIND_ORDER))),
    )
    has_overage = any(line.is_overage for line in lines)
    return render(
        request,
        "billing/invoice_detail.html",
        {"invoice": invoice, "lines": lines, "has_overage": has_overage},
    )
