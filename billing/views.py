"""Billing pages (mounted at /billing/, ``billing.urls``).

- ``/billing/invoices/``: the signed-in user's invoices with their status (payment failed and the
  dunning suspension date too) and the running estimate of this month;
- ``/billing/invoices/<id>/``: one of them: lines grouped per subscription with the ledger entries
  behind them (usage windows, adjustments with their reason), credits, subtotal, tax, total, the
  Stripe hosted invoice page; ``?format=csv`` downloads its ledger entries;
- ``/billing/revenue/``: providers: revenue of their APIs per API, business plan, period and
  currency, from the lines of issued invoices (platform admins: every API);
- ``/billing/admin/``: platform admins: every invoice (filters, pages), failed payments and their
  dunning, re-running a usage window, issuing a credit, approving paying by invoice; each form
  redirects back with a message when it succeeds (Post/Redirect/Get).

The reports (``invoice_ledger``, ``revenue_report``) are shared with the REST API
(``billing.api``). Amounts are integer minor units; times UTC.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import BooleanField, Count, ExpressionWrapper, Max, Min, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from analytics.dashboard import csv_response
from billing.forms import (
    CreditForm,
    InvoiceFilterForm,
    InvoicingForm,
    RevenueFilterForm,
    WindowRerunForm,
    minor_unit_exponent,
    period_starts_within,
    period_value,
    twelve_months_before,
)
from billing.ledger import WINDOW, window_rerun
from billing.models import BillingAccount, Credit, DunningCase, Invoice, InvoiceLine, LedgerEntry
from billing.payments import (
    PAYMENT_METHOD_PATH,
    billing_account_get,
    card_label,
    invoicing_approve,
    invoicing_revoke,
)
from billing.services import billing_period_containing, issue_credit, period_estimate
from billing.templatetags.billing_tags import STATUS_BADGES
from portal.models import API, Subscription
from portal.money import format_money
from portal.views.decorators import _role_required

KIND_ORDER = {kind: rank for rank, kind in enumerate(InvoiceLine.Kind.values)}
ADMIN_PAGE_SIZE = 25
RECENT_CREDITS = 10
# Chart.js colours of the revenue chart's APIs, as the analytics dashboards' palette.
API_COLORS = ("#5b4ddb", "#20a4a4", "#e8891a", "#dc3545", "#2fb380", "#6c757d", "#d63384", "#0d6efd")

provider_or_staff_required = _role_required(
    lambda user: user.is_provider or user.is_staff,
    "provider",
    "Revenue is for the providers of APIs: what their subscribers were invoiced.",
)
staff_only = _role_required(
    lambda user: user.is_staff,
    "admin",
    "The billing desk (every invoice, failed payments, usage windows, credits) is for platform admins.",
)


# --- access ------------------------------------------------------------------------------------


def _get_invoice_for_user(request: HttpRequest, invoice_id: int) -> Invoice:
    """The invoice ``invoice_id`` if it belongs to the logged-in user's billing account, else 404."""
    invoices = Invoice.objects.for_user(request.user).select_related("account__owner", "dunning")
    return get_object_or_404(invoices, pk=invoice_id)


# --- invoice status ----------------------------------------------------------------------------


def dunning_of(invoice: Invoice) -> DunningCase | None:
    """The invoice's dunning case (``billing.models.DunningCase``), or None."""
    try:
        return invoice.dunning
    except DunningCase.DoesNotExist:
        return None


@dataclass(frozen=True)
class InvoiceState:
    """How an invoice's status reads on the pages: Stripe's status (``status``, ``label``,
    Bootstrap ``badge`` classes), and, while a payment failed and the invoice is not paid,
    ``payment_failed`` with the dunning case's state, reminders and dates."""

    status: str
    label: str
    badge: str
    payment_failed: bool
    payment_failed_at: datetime | None
    dunning_state: str
    dunning_label: str
    reminders_sent: int
    suspend_at: datetime | None
    suspended_at: datetime | None

    @property
    def suspension_pending(self) -> bool:
        """A dunning case is reminding: the subscriptions are suspended at ``suspend_at``."""
        return self.dunning_state == DunningCase.State.OPEN


def invoice_state(invoice: Invoice) -> InvoiceState:
    """``InvoiceState`` of ``invoice`` (its ``dunning`` should be select_related)."""
    case = dunning_of(invoice)
    failed = invoice.payment_failed_at is not None and invoice.status != Invoice.Status.PAID
    live_case = case if failed and case is not None and case.state != DunningCase.State.RESOLVED else None
    return InvoiceState(
        status=invoice.status,
        label=invoice.get_status_display(),
        badge=STATUS_BADGES.get(invoice.status, "text-bg-light"),
        payment_failed=failed,
        payment_failed_at=invoice.payment_failed_at if failed else None,
        dunning_state=live_case.state if live_case else "",
        dunning_label=live_case.get_state_display() if live_case else "",
        reminders_sent=live_case.reminders_sent if live_case else 0,
        suspend_at=live_case.suspend_at if live_case else None,
        suspended_at=live_case.suspended_at if live_case else None,
    )


def hosted_url(invoice: Invoice) -> str:
    """Stripe's hosted invoice page, only if it is an http(s) URL (it comes from Stripe's
    answers and webhooks; anything else is never put in a link)."""
    url = invoice.hosted_invoice_url or ""
    return url if url.startswith(("https://", "http://")) else ""


# --- the ledger behind an invoice ---------------------------------------------------------------


@dataclass
class LedgerSummary:
    """The ledger entries (``LedgerEntry``) an invoice billed for one subscription, either in
    the invoice's period or (``late``) late usage of earlier, already invoiced periods:
    ``entries`` rows, ``usage_windows`` distinct hourly windows, the first window's start and
    the last window's end (UTC), summed ``events``/``bytes`` delivered, and the adjustment
    entries (revision ≥ 1) with their reason and author."""

    late: bool
    entries: int = 0
    usage_windows: int = 0
    first_window_start: datetime | None = None
    last_window_end: datetime | None = None
    events: int = 0
    bytes: int = 0
    adjustments: list[LedgerEntry] = field(default_factory=list)


def invoice_ledger(invoice: Invoice) -> dict[tuple[int, bool], LedgerSummary]:
    """``{(subscription id, late): LedgerSummary}`` of the entries ``invoice`` billed; ``late``
    entries (windows before the period) are what its adjustment lines bill. Two queries."""
    entries = LedgerEntry.objects.filter(invoice=invoice).annotate(
        late=ExpressionWrapper(Q(window_start__lt=invoice.period_start), output_field=BooleanField())
    )
    summaries: dict[tuple[int, bool], LedgerSummary] = {}
    for row in (
        entries.values("subscription_id", "late")
        .annotate(
            n=Count("pk"),
            windows=Count("window_start", distinct=True),
            first=Min("window_start"),
            last=Max("window_end"),
            e=Sum("events"),
            b=Sum("bytes"),
        )
        .order_by()
    ):
        key = (row["subscription_id"], bool(row["late"]))
        summaries[key] = LedgerSummary(
            late=key[1],
            entries=row["n"],
            usage_windows=row["windows"],
            first_window_start=row["first"],
            last_window_end=row["last"],
            events=row["e"] or 0,
            bytes=row["b"] or 0,
        )
    for entry in (
        entries.filter(kind=LedgerEntry.Kind.ADJUSTMENT)
        .select_related("created_by")
        .order_by("window_start", "revision", "pk")
    ):
        # Adjustments may be negative: shown as "+1,200 events" / "−372.0 KB" (human_bytes wants ≥ 0).
        entry.events_sign = "−" if entry.events < 0 else "+"  # type: ignore[attr-defined]
        entry.bytes_sign = "−" if entry.bytes < 0 else "+"  # type: ignore[attr-defined]
        entry.events_abs, entry.bytes_abs = abs(entry.events), abs(entry.bytes)  # type: ignore[attr-defined]
        summaries[(entry.subscription_id, bool(entry.late))].adjustments.append(entry)
    return summaries


@dataclass
class LineGroup:
    """One subscription's lines on an invoice, with the ledger entries behind them (``usage``:
    in the period; ``late``: earlier periods' late usage, billed by the adjustment line). A
    group without a subscription holds the credit lines."""

    subscription: Subscription | None
    lines: list[InvoiceLine]
    usage: LedgerSummary | None = None
    late: LedgerSummary | None = None


def line_groups(invoice: Invoice) -> list[LineGroup]:
    """The invoice's lines per subscription (base fee, events, bandwidth, overage, adjustment:
    ``InvoiceLine.Kind`` order), then the credit lines; each line gets ``ledger``, the
    ``LedgerSummary`` behind it (None for credits)."""
    ledger = invoice_ledger(invoice)
    lines = list(
        invoice.lines.select_related(
            "subscription__api", "subscription__plan", "subscription__application", "credit"
        )
    )
    lines.sort(
        key=lambda line: (
            line.subscription_id is None,
            line.subscription_id or 0,
            KIND_ORDER.get(line.kind, len(KIND_ORDER)),
            line.pk,
        )
    )
    groups: list[LineGroup] = []
    for line in lines:
        sid = line.subscription_id
        if not groups or (groups[-1].subscription.pk if groups[-1].subscription else None) != sid:
            groups.append(
                LineGroup(
                    subscription=line.subscription,
                    lines=[],
                    usage=ledger.get((sid, False)) if sid else None,
                    late=ledger.get((sid, True)) if sid else None,
                )
            )
        group = groups[-1]
        line.ledger = group.late if line.kind == InvoiceLine.Kind.ADJUSTMENT else group.usage  # type: ignore[attr-defined]
        group.lines.append(line)
    return groups


LEDGER_CSV_HEADER = (
    "invoice_id",
    "subscription_id",
    "api",
    "plan",
    "application",
    "window_start",
    "window_end",
    "revision",
    "kind",
    "events",
    "bytes",
    "counted_events",
    "counted_bytes",
    "reason",
    "created_by",
    "created",
)


def ledger_csv(invoice: Invoice) -> HttpResponse:
    """The ledger entries ``invoice`` billed, one row per entry and revision (``LEDGER_CSV_HEADER``),
    oldest window first; text a spreadsheet would run stays text (``analytics.dashboard.csv_response``)."""
    entries = (
        LedgerEntry.objects.filter(invoice=invoice)
        .select_related("subscription__api", "subscription__plan", "subscription__application", "created_by")
        .order_by("subscription_id", "window_start", "revision")
    )
    rows = (
        (
            invoice.pk,
            entry.subscription_id,
            entry.subscription.api.name,
            entry.subscription.plan.name,
            entry.subscription.application.name,
            entry.window_start,
            entry.window_end,
            entry.revision,
            entry.kind,
            entry.events,
            entry.bytes,
            entry.counted_events,
            entry.counted_bytes,
            entry.reason,
            entry.created_by.email if entry.created_by else "",
            entry.created,
        )
        for entry in entries.iterator()
    )
    return csv_response(f"invoice-{invoice.pk}-ledger.csv", LEDGER_CSV_HEADER, rows)


# --- consumer pages ---------------------------------------------------------------------------------


@login_required
def invoice_list(request: HttpRequest) -> HttpResponse:
    """The signed-in user's invoices, newest period first, with their status (and a failed
    payment's dunning), and the running estimate of the current period
    (``billing.services.period_estimate``)."""
    invoices = list(
        Invoice.objects.for_user(request.user).select_related("dunning").order_by("-period_start", "currency")
    )
    for invoice in invoices:
        invoice.state = invoice_state(invoice)  # type: ignore[attr-defined]
        invoice.hosted_url = hosted_url(invoice)  # type: ignore[attr-defined]
    estimate = period_estimate(user=request.user, now=timezone.now())
    return render(request, "billing/invoice_list.html", {"invoices": invoices, "estimate": estimate})


@dataclass(frozen=True)
class PaymentHint:
    """How an unpaid invoice without Stripe's hosted page gets paid, for the consumer: ``text``,
    and ``link`` (the payment method page) when they still have to add a card."""

    text: str
    link: str = ""


def payment_hint(invoice: Invoice) -> PaymentHint | None:
    """For a draft or open invoice without an http(s) hosted invoice URL: paid by invoice (Stripe
    emails it to the owner) with approved invoicing and no card (``BillingAccount.collection_method``
    ``send_invoice``), charged to the card on file, or "Add a payment method". None otherwise
    (paid, void, or Stripe's page is linked)."""
    if invoice.status not in (Invoice.Status.DRAFT, Invoice.Status.OPEN) or hosted_url(invoice):
        return None
    account = invoice.account
    if account.collection_method == "send_invoice":
        return PaymentHint(f"Paid by invoice: Stripe emails it to {account.owner.email}.")
    if account.has_payment_method:
        card = card_label(account)
        return PaymentHint(f"It will be charged to your card on file{f' ({card})' if card else ''}.")
    return PaymentHint("Add a payment method: the invoice is charged to it.", link=PAYMENT_METHOD_PATH)


@login_required
@require_GET
def invoice_detail(request: HttpRequest, invoice_id: int) -> HttpResponse:
    """One of the user's invoices: lines per subscription with the ledger entries behind them
    (overage lines: the usage of the plan's counted directions), credits, subtotal, tax and
    total, status and Stripe's hosted page. ``?format=csv``: the ledger entries as CSV."""
    invoice = _get_invoice_for_user(request, invoice_id)
    if request.GET.get("format") == "csv":
        return ledger_csv(invoice)
    groups = line_groups(invoice)
    lines = [line for group in groups for line in group.lines]
    context = {
        "invoice": invoice,
        "state": invoice_state(invoice),
        "hosted_url": hosted_url(invoice),
        "payment_hint": payment_hint(invoice),
        "groups": groups,
        "lines": lines,
        "has_overage": any(line.is_overage for line in lines),
        "has_adjustments": any((group.usage and group.usage.adjustments) or group.late for group in groups),
    }
    return render(request, "billing/invoice_detail.html", context)


# --- provider revenue ------------------------------------------------------------------------------


def period_label(start: datetime, end: datetime) -> str:
    """ "October 2026", "Year 2026", or "2026-10-01 – 2026-10-15" for a custom period (UTC)."""
    value = period_value(start, end)
    if len(value) == 4:
        return f"Year {value}"
    return Invoice(period_start=start, period_end=end).period_label


def revenue_lines(
    user: Any, *, period: tuple[datetime, datetime] | None = None, api: API | None = None, now: datetime
) -> QuerySet[InvoiceLine]:
    """Lines of issued, not void invoices billing subscriptions to the APIs ``user`` manages
    (``API.objects.managed_by``: a provider's own, every API for staff): in ``period`` when
    given (invoices whose period starts in it: ``billing.forms.period_starts_within``; a year
    holds its months), else of the periods that ended in the last 12 months (after
    ``twelve_months_before(now)``, up to ``now``); only ``api``'s when given. Credit lines bill no
    subscription, so they are never a provider's."""
    lines = InvoiceLine.objects.filter(
        subscription__api__in=API.objects.managed_by(user), invoice__issued_at__isnull=False
    ).exclude(invoice__status=Invoice.Status.VOID)
    if api is not None:
        lines = lines.filter(subscription__api=api)
    if period is not None:
        return lines.filter(period_starts_within(*period, prefix="invoice__"))
    return lines.filter(invoice__period_end__gt=twelve_months_before(now), invoice__period_end__lte=now)


def _sums(lines: QuerySet[InvoiceLine], *keys: str) -> list[dict[str, Any]]:
    """``lines`` grouped by ``keys``: ``invoiced_minor`` (sum of the lines), ``paid_minor`` (of
    paid invoices), ``outstanding_minor``, distinct ``subscribers`` (subscriptions billed) and
    ``invoices``."""
    rows = (
        lines.values(*keys)
        .annotate(
            invoiced_minor=Coalesce(Sum("amount_minor"), 0),
            paid_minor=Coalesce(Sum("amount_minor", filter=Q(invoice__status=Invoice.Status.PAID)), 0),
            subscribers=Count("subscription", distinct=True),
            invoices=Count("invoice", distinct=True),
        )
        .order_by(*keys)
    )
    return [{**row, "outstanding_minor": row["invoiced_minor"] - row["paid_minor"]} for row in rows]


def _api(row: dict[str, Any]) -> dict[str, Any]:
    return {"slug": row["subscription__api__slug"], "name": row["subscription__api__name"]}


def revenue_report(
    user: Any, *, period: tuple[datetime, datetime] | None = None, api: API | None = None, now: datetime
) -> dict[str, Any]:
    """What ``user``'s APIs earned (``revenue_lines``), in minor units of each currency:

    - ``currencies``: per currency, ``invoiced_minor``, ``paid_minor``, ``outstanding_minor``,
      ``subscribers``, ``invoices``;
    - ``apis``: the same per currency and API; ``plans``: per currency, API and business plan;
    - ``rows``: per currency, period, API and plan (the table and CSV);
    - ``range``: ``start``/``end`` of the periods read, ``period`` (``YYYY-MM``/``YYYY`` or
      ``""``) and a ``label``.

    Sums are over invoice lines, so the totals are exactly the lines' sum (never recomputed).
    """
    lines = revenue_lines(user, period=period, api=api, now=now)
    api_keys = ("subscription__api__slug", "subscription__api__name")
    plan_keys = (*api_keys, "subscription__plan_id", "subscription__plan__name")
    period_keys = ("invoice__period_start", "invoice__period_end")
    currencies = _sums(lines, "invoice__currency")
    apis = _sums(lines, "invoice__currency", *api_keys)
    plans = _sums(lines, "invoice__currency", *plan_keys)
    rows = _sums(lines, "invoice__currency", *period_keys, *plan_keys)

    def money(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "currency": row["invoice__currency"],
            "invoiced_minor": row["invoiced_minor"],
            "paid_minor": row["paid_minor"],
            "outstanding_minor": row["outstanding_minor"],
            "subscribers": row["subscribers"],
            "invoices": row["invoices"],
        }

    def by_invoiced(row: dict[str, Any]) -> tuple[str, int]:
        return (row["currency"], -row["invoiced_minor"])

    start, end = period if period else (twelve_months_before(now), now)
    return {
        "range": {
            "start": start,
            "end": end,
            "period": period_value(*period) if period else "",
            "label": period_label(*period) if period else "Periods that ended in the last 12 months",
        },
        "currencies": [money(row) for row in currencies],
        "apis": sorted(({**money(row), "api": _api(row)} for row in apis), key=by_invoiced),
        "plans": sorted(
            (
                {
                    **money(row),
                    "api": _api(row),
                    "plan": {"id": row["subscription__plan_id"], "name": row["subscription__plan__name"]},
                }
                for row in plans
            ),
            key=by_invoiced,
        ),
        "rows": [
            {
                **money(row),
                "period_start": row["invoice__period_start"],
                "period_end": row["invoice__period_end"],
                "period": period_value(row["invoice__period_start"], row["invoice__period_end"]),
                "period_label": period_label(row["invoice__period_start"], row["invoice__period_end"]),
                "api": _api(row),
                "plan": {"id": row["subscription__plan_id"], "name": row["subscription__plan__name"]},
            }
            for row in sorted(
                rows,
                key=lambda row: (row["invoice__currency"], -row["invoice__period_end"].timestamp()),
            )
        ],
    }


def revenue_periods(user: Any) -> list[tuple[str, str]]:
    """``(value, label)`` of every calendar month and year with revenue for ``user``'s APIs,
    newest first, each year before its months: the period picker's choices."""
    periods = (
        InvoiceLine.objects.filter(
            subscription__api__in=API.objects.managed_by(user), invoice__issued_at__isnull=False
        )
        .values_list("invoice__period_start", "invoice__period_end")
        .distinct()
        .order_by("-invoice__period_end", "-invoice__period_start")
    )
    choices = []
    for start, end in periods:
        # The year first (it holds its months: ``billing.forms.period_starts_within``), then the month.
        year = billing_period_containing(start, "year")
        for value, label in ((period_value(*year), period_label(*year)), (period_value(start, end), "")):
            if value and value not in (known for known, _ in choices):
                choices.append((value, label or period_label(start, end)))
    return choices


def revenue_charts(report: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    """One stacked bar chart per currency (drawn by the revenue page's script): invoiced per
    period, one dataset per API; the x axis holds the last 12 months (or the months of the period
    asked for) plus any yearly or custom period with revenue. Amounts stay minor units; ``exponent``
    says how to show them."""
    # The months of the period asked for (a year: its twelve months), else of the last 12 months.
    last = report["range"]["end"] if report["range"]["period"] else now
    periods = []
    month = report["range"]["start"]
    while True:
        _, following = billing_period_containing(month, "month")
        if following > last:
            break
        periods.append((month, following))
        month = following
    charts = []
    by_currency: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in report["rows"]:
        by_currency[row["currency"]].append(row)
    for currency, rows in sorted(by_currency.items()):
        keys = sorted(
            {*periods, *((row["period_start"], row["period_end"]) for row in rows)},
            key=lambda bounds: (bounds[1], bounds[0]),
        )
        names: dict[str, str] = {}
        amounts: dict[tuple[str, tuple[datetime, datetime]], int] = defaultdict(int)
        for row in rows:
            names[row["api"]["slug"]] = row["api"]["name"]
            amounts[(row["api"]["slug"], (row["period_start"], row["period_end"]))] += row["invoiced_minor"]
        datasets = [
            {
                "label": name,
                "data": [amounts.get((slug, key), 0) for key in keys],
                "color": API_COLORS[index % len(API_COLORS)],
            }
            for index, (slug, name) in enumerate(sorted(names.items(), key=lambda item: item[1].lower()))
        ]
        charts.append(
            {
                "id": f"chart-revenue-{currency}",
                "currency": currency,
                "exponent": minor_unit_exponent(currency),
                "labels": [_short_period(*key) for key in keys],
                "datasets": datasets,
            }
        )
    return charts


def _short_period(start: datetime, end: datetime) -> str:
    value = period_value(start, end)
    if len(value) == 7:
        return f"{start:%b %Y}"
    return period_label(start, end)


@provider_or_staff_required
@require_GET
def revenue(request: HttpRequest) -> HttpResponse:
    """Revenue of the provider's APIs (``revenue_report``) with a chart per currency; filters
    ``period`` and ``api`` (``RevenueFilterForm``; a bad one is a 400 showing the field's error);
    ``?format=csv``: the table's rows."""
    form = RevenueFilterForm(request.GET or None, user=request.user)
    valid = form.is_valid() if request.GET else True
    cleaned = form.cleaned_data if request.GET else {}
    now = timezone.now()
    report = revenue_report(
        request.user,
        period=cleaned.get("period") if valid else None,
        api=cleaned.get("api") if valid else None,
        now=now,
    )
    if valid and request.GET.get("format") == "csv":
        return _revenue_csv(report)
    query = urlencode({key: request.GET[key] for key in ("period", "api") if request.GET.get(key)})
    context = {
        "form": form,
        "report": report,
        "charts": revenue_charts(report, now),
        "periods": revenue_periods(request.user),
        "apis": form.apis,
        "query": query,
        "selected_period": request.GET.get("period", "") if valid else "",
        "selected_api": request.GET.get("api", "") if valid else "",
    }
    return render(request, "billing/revenue.html", context, status=200 if valid else 400)


REVENUE_CSV_HEADER = (
    "currency",
    "period_start",
    "period_end",
    "api",
    "plan",
    "invoiced_minor",
    "paid_minor",
    "outstanding_minor",
    "subscribers",
    "invoices",
)


def _revenue_csv(report: dict[str, Any]) -> HttpResponse:
    rows = (
        (
            row["currency"],
            row["period_start"],
            row["period_end"],
            row["api"]["slug"],
            row["plan"]["name"],
            row["invoiced_minor"],
            row["paid_minor"],
            row["outstanding_minor"],
            row["subscribers"],
            row["invoices"],
        )
        for row in report["rows"]
    )
    return csv_response("revenue.csv", REVENUE_CSV_HEADER, rows)


# --- the platform admins' billing desk ---------------------------------------------------------------


def failed_payments() -> QuerySet[Invoice]:
    """Invoices whose last payment failed and that are not paid yet, latest failure first, with
    their dunning case and owner."""
    return (
        Invoice.objects.filter(payment_failed_at__isnull=False)
        .exclude(status=Invoice.Status.PAID)
        .select_related("account__owner", "dunning")
        .order_by("-payment_failed_at", "-pk")
    )


RERUN_SESSION_KEY = "billing_rerun_result"
RECENT_INVOICING = 20


def _rerun_result(request: HttpRequest) -> dict[str, Any] | None:
    """The last re-run's result, kept in the session across its redirect (shown once)."""
    kept = request.session.pop(RERUN_SESSION_KEY, None)
    if not isinstance(kept, dict):
        return None
    try:
        start = datetime.fromisoformat(kept["start"])
        ids = [int(pk) for pk in kept["entries"]]
    except (KeyError, TypeError, ValueError):
        return None
    written = (
        LedgerEntry.objects.filter(pk__in=ids)
        .select_related("subscription__api", "subscription__application__owner", "created_by")
        .order_by("subscription_id", "revision")
    )
    return {"start": start, "end": start + WINDOW, "entries": list(written)}


def _admin_page(
    request: HttpRequest,
    *,
    rerun_form: WindowRerunForm | None = None,
    credit_form: CreditForm | None = None,
    invoicing_form: InvoicingForm | None = None,
    status: int = 200,
) -> HttpResponse:
    filters = InvoiceFilterForm(request.GET or None)
    filters_valid = filters.is_valid() if request.GET else True
    invoices = Invoice.objects.select_related("account__owner", "dunning").order_by("-period_start", "-pk")
    if request.GET:
        invoices = filters.filter(invoices)  # the valid filters only; the others show their error
    page = Paginator(invoices, ADMIN_PAGE_SIZE).get_page(request.GET.get("page"))
    for invoice in page.object_list:
        invoice.state = invoice_state(invoice)  # type: ignore[attr-defined]
    failed = list(failed_payments())
    for invoice in failed:
        invoice.state = invoice_state(invoice)  # type: ignore[attr-defined]
    query = urlencode(
        {key: request.GET[key] for key in ("status", "period", "email") if request.GET.get(key)}
    )
    context = {
        "filters": filters,
        "page": page,
        "query": query,
        "failed": failed,
        "rerun_form": rerun_form or WindowRerunForm(),
        "rerun_result": _rerun_result(request) if request.method == "GET" else None,
        "credit_form": credit_form or CreditForm(initial={"currency": "usd"}),
        "credits": Credit.objects.select_related("account__owner", "created_by", "invoice").order_by(
            "-created", "-pk"
        )[:RECENT_CREDITS],
        "invoicing_form": invoicing_form or InvoicingForm(),
        "invoicing_accounts": BillingAccount.objects.filter(invoicing_approved_at__isnull=False)
        .select_related("owner", "invoicing_approved_by")
        .order_by("-invoicing_approved_at", "-pk")[:RECENT_INVOICING],
    }
    if not filters_valid and status == 200:
        status = 400
    return render(request, "billing/admin.html", context, status=status)


@staff_only
@require_http_methods(["GET", "HEAD", "POST"])
def billing_admin(request: HttpRequest) -> HttpResponse:
    """Every invoice (filters ``status``, ``period``, ``email``; pages of 25), failed payments
    with their dunning case, and the forms to re-run a usage window, to issue a credit and to
    approve paying by invoice. A POST here is the invoicing form (``admin_invoicing``)."""
    if request.method == "POST":
        return admin_invoicing(request)
    return _admin_page(request)


def admin_invoicing(request: HttpRequest) -> HttpResponse:
    """Approve or withdraw paying by invoice for the consumer with the posted email
    (``InvoicingForm``; ``billing.payments.invoicing_approve`` / ``invoicing_revoke``, recording
    the signed-in admin), creating their billing account if they have none
    (``billing.payments.billing_account_get``); then back to the desk with a message. An unknown
    email, or withdrawing an approval that does not exist: 400 with the error under the field."""
    form = InvoicingForm(request.POST)
    if not form.is_valid():
        return _admin_page(request, invoicing_form=form, status=400)
    user = form.cleaned_data["user"]
    try:
        if form.cleaned_data["action"] == InvoicingForm.APPROVE:
            account = invoicing_approve(account=billing_account_get(user=user), by=request.user)
            text = (
                f"{user.email} may pay by invoice (approved by {request.user.email} on "
                f"{account.invoicing_approved_at:%Y-%m-%d %H:%M} UTC): Stripe emails their invoices."
            )
        else:
            account = BillingAccount.objects.filter(owner=user).first()
            if account is None or not account.invoicing_approved:
                form.add_error("email", f"{user.email} is not approved to pay by invoice.")
                return _admin_page(request, invoicing_form=form, status=400)
            invoicing_revoke(account=account, by=request.user)
            text = (
                f"Paying by invoice withdrawn for {user.email}: "
                "their next invoices are charged to their card."
            )
    except PermissionDenied as error:
        form.add_error(None, str(error))
        return _admin_page(request, invoicing_form=form, status=403)
    messages.success(request, text)
    return redirect(reverse("billing:admin") + "#invoicing")


@staff_only
@require_POST
def admin_window_rerun(request: HttpRequest) -> HttpResponse:
    """Re-run one usage window (``billing.ledger.window_rerun``), then back to the desk, which
    shows the adjustment entries it wrote, or that analytics and the ledger agree (kept in the
    session for that one page). A bad day or hour, a window not over or still in its grace
    period, or older than the ledger: 400 with the error under the field."""
    form = WindowRerunForm(request.POST)
    if not form.is_valid():
        return _admin_page(request, rerun_form=form, status=400)
    start = form.cleaned_data["start"]
    try:
        entries = window_rerun(start=start, by=request.user, reason=form.cleaned_data["reason"])
    except ValueError as error:
        form.add_error("date", str(error))
        return _admin_page(request, rerun_form=form, status=400)
    written = [entry.pk for entry in entries if entry.pk]
    request.session[RERUN_SESSION_KEY] = {"start": start.isoformat(), "entries": written}
    window = f"{start:%Y-%m-%d %H:%M}–{start + WINDOW:%H:%M} UTC"
    if written:
        messages.success(
            request,
            f"The window {window} was re-run: {len(written)} adjustment "
            f"entr{'y' if len(written) == 1 else 'ies'} written.",
        )
    else:
        messages.success(request, f"The window {window} was re-run: no difference.")
    return redirect(reverse("billing:admin") + "#rerun")


@staff_only
@require_POST
def admin_credit(request: HttpRequest) -> HttpResponse:
    """Issue a credit (``billing.services.issue_credit``) to the billing account of the consumer
    with the given email (created if they have none yet: ``billing.payments.billing_account_get``);
    it becomes a negative line on their next invoice in that currency. Errors: 400 with the error
    under the field."""
    form = CreditForm(request.POST)
    if not form.is_valid():
        return _admin_page(request, credit_form=form, status=400)
    data = form.cleaned_data
    try:
        with transaction.atomic():
            account = billing_account_get(user=data["user"])
            credit = issue_credit(
                account=account,
                amount_minor=data["amount_minor"],
                currency=data["currency"],
                reason=data["reason"],
                by=request.user,
            )
    except ValidationError as error:
        # issue_credit names its fields as the service does; the form shows them under its own.
        fields = {"amount_minor": "amount", "currency": "currency", "reason": "reason"}
        named = error.message_dict if hasattr(error, "error_dict") else {None: error.messages}
        for name, errors in named.items():
            for message in errors:
                form.add_error(fields.get(name or ""), message)
        return _admin_page(request, credit_form=form, status=400)
    except PermissionDenied as error:
        form.add_error(None, str(error))
        return _admin_page(request, credit_form=form, status=403)
    messages.success(
        request,
        f"Credit #{credit.pk} of {format_money(credit.amount_minor, credit.currency)} issued to "
        f"{data['user'].email}: it comes off their next {credit.currency.upper()} invoice.",
    )
    return redirect(reverse("billing:admin") + "#credits")
