"""REST endpoints of billing, under ``/api/v1/billing/`` (docs/rest-api.md › Billing): the same
data as the pages (``billing.views``).

- ``invoices/``, ``invoices/<id>/``: the signed-in user's own invoices (platform admins' too: their
  own), lines with the ledger entries behind each; another user's invoice is a 404;
- ``estimate/``: the running estimate of this month (``billing.services.period_estimate``);
- ``revenue/``: providers (admins: every API): revenue per API, plan, period, currency; 403 for
  others;
- ``admin/invoices/``, ``admin/failed-payments/``, ``admin/windows/rerun/``, ``admin/credits/``:
  platform admins; 403 for others.

Amounts are integer minor units of ``currency``; times ISO 8601 UTC. Bad input is a 400 naming
the field (``{"start": ["..."]}``), never a 500.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import permissions, serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.forms import (
    MAX_CREDIT_MINOR,
    InvoiceFilterForm,
    RevenueFilterForm,
    check_window_start,
    clean_currency,
    user_for_account,
)
from billing.ledger import WINDOW, window_rerun
from billing.models import BillingAccount, Credit, Invoice, InvoiceLine, LedgerEntry
from billing.services import issue_credit, period_estimate
from billing.views import (
    dunning_of,
    failed_payments,
    hosted_url,
    invoice_state,
    line_groups,
    revenue_report,
)
from portal.api.common import PAGINATION_PARAMETERS, LinkHeaderPagination, V1View, service_errors

LINE_KINDS = "One of " + ", ".join(f"`{kind}`" for kind in InvoiceLine.Kind.values) + "."

# --- output serializers ---------------------------------------------------------------------------


class AccountSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField(help_text="The billing account's id.")
    email = serializers.EmailField(source="owner.email", help_text="The consumer who owns it.")


class DunningSerializer(serializers.Serializer[Any]):
    """A failed payment being chased (``billing.models.DunningCase``)."""

    state = serializers.CharField(help_text="`open` (reminding), `suspended` or `resolved`.")
    failures = serializers.IntegerField(help_text="Failed payment attempts.")
    last_failure_message = serializers.CharField()
    reminders_sent = serializers.IntegerField()
    next_reminder_at = serializers.DateTimeField(allow_null=True)
    suspend_at = serializers.DateTimeField(
        help_text="When the account's subscriptions are suspended unless paid."
    )
    suspended_at = serializers.DateTimeField(allow_null=True)
    resolved_at = serializers.DateTimeField(allow_null=True)


class InvoiceSerializer(serializers.Serializer[Any]):
    """An invoice for one billing period and currency (immutable once issued)."""

    id = serializers.IntegerField()
    account = AccountSerializer()
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField(help_text="Exclusive.")
    period_label = serializers.CharField(help_text="e.g. `October 2026` (UTC).")
    currency = serializers.CharField(help_text="ISO 4217, lower case.")
    subtotal_minor = serializers.IntegerField(help_text="Sum of the lines (credits are negative lines).")
    tax_minor = serializers.IntegerField(help_text="Always 0: prices are tax-free.")
    total_minor = serializers.IntegerField()
    status = serializers.CharField(
        help_text="Stripe's invoice status: `draft`, `open`, `paid`, `void` or `uncollectible`."
    )
    payment_failed = serializers.BooleanField(
        help_text="The last payment failed and the invoice is not paid."
    )
    payment_failed_at = serializers.DateTimeField(allow_null=True)
    paid_at = serializers.DateTimeField(allow_null=True)
    issued_at = serializers.DateTimeField(allow_null=True)
    hosted_invoice_url = serializers.CharField(help_text="Stripe's page to view and pay it; empty if none.")
    stripe_invoice_id = serializers.CharField()
    stripe_synced_at = serializers.DateTimeField(allow_null=True)
    dunning = DunningSerializer(allow_null=True, help_text="The dunning case of a failed payment, or null.")


class SubscriptionRefSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    api = serializers.CharField(source="api.slug", help_text="The API's slug.")
    api_name = serializers.CharField(source="api.name")
    plan = serializers.CharField(source="plan.name", help_text="The business plan's name.")
    application = serializers.CharField(source="application.name")


class AdjustmentSerializer(serializers.Serializer[Any]):
    """An adjustment ledger entry (revision ≥ 1): usage that reached analytics after its usage
    window closed, or found by an admin's re-run, with why and by whom."""

    id = serializers.IntegerField()
    window_start = serializers.DateTimeField()
    window_end = serializers.DateTimeField()
    revision = serializers.IntegerField()
    events = serializers.IntegerField(help_text="Difference in events delivered; may be negative.")
    bytes = serializers.IntegerField(help_text="Difference in bytes delivered; may be negative.")
    counted_events = serializers.IntegerField()
    counted_bytes = serializers.IntegerField()
    reason = serializers.CharField()
    created_by = serializers.EmailField(
        source="created_by.email",
        allow_null=True,
        default=None,
        help_text="Null: the ledger's reconciliation.",
    )
    created = serializers.DateTimeField()


class LedgerSummarySerializer(serializers.Serializer[Any]):
    """The ledger entries behind a line: its subscription's entries this invoice billed, in the
    period (or, for an adjustment line, of earlier periods: ``late``)."""

    late = serializers.BooleanField(help_text="Entries of windows before the invoice's period.")
    entries = serializers.IntegerField(help_text="Ledger entries (every revision).")
    usage_windows = serializers.IntegerField(help_text="Distinct hourly usage windows.")
    first_window_start = serializers.DateTimeField(allow_null=True)
    last_window_end = serializers.DateTimeField(allow_null=True)
    events = serializers.IntegerField(help_text="Events delivered (direction out), summed.")
    bytes = serializers.IntegerField(help_text="Bytes delivered, summed.")
    adjustments = AdjustmentSerializer(many=True)


class InvoiceLineSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    kind = serializers.CharField(help_text=LINE_KINDS)
    description = serializers.CharField()
    subscription = SubscriptionRefSerializer(allow_null=True, help_text="Null for a credit line.")
    credit = serializers.IntegerField(
        source="credit_id", allow_null=True, help_text="The credit a credit line spends."
    )
    quantity = serializers.IntegerField(
        help_text="1 for a fee; blocks of 1,000 events; bytes for bandwidth/overage."
    )
    unit_amount_minor = serializers.IntegerField()
    amount_minor = serializers.IntegerField(help_text="Negative for a credit.")
    events = serializers.IntegerField()
    bytes = serializers.IntegerField()
    ledger = LedgerSummarySerializer(
        allow_null=True, help_text="The ledger entries behind the line; null for credits."
    )


class InvoiceDetailSerializer(InvoiceSerializer):
    lines = InvoiceLineSerializer(many=True)


class EstimateLineSerializer(serializers.Serializer[Any]):
    subscription = SubscriptionRefSerializer()
    kind = serializers.CharField(help_text=LINE_KINDS)
    description = serializers.CharField()
    currency = serializers.CharField(source="subscription.plan.currency")
    quantity = serializers.IntegerField()
    unit_amount_minor = serializers.IntegerField()
    amount_minor = serializers.IntegerField()
    events = serializers.IntegerField()
    bytes = serializers.IntegerField()


class CurrencyTotalSerializer(serializers.Serializer[Any]):
    currency = serializers.CharField()
    total_minor = serializers.IntegerField()


class EstimateSerializer(serializers.Serializer[Any]):
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField(help_text="Exclusive.")
    totals = CurrencyTotalSerializer(many=True, help_text="Per currency; empty without paid subscriptions.")
    lines = EstimateLineSerializer(many=True)


class RevenueRangeSerializer(serializers.Serializer[Any]):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    period = serializers.CharField(help_text="The `period` asked for (`2026-10`, `2026`), empty by default.")
    label = serializers.CharField()


class RevenueAPIRefSerializer(serializers.Serializer[Any]):
    slug = serializers.CharField()
    name = serializers.CharField()


class RevenuePlanRefSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    name = serializers.CharField()


class RevenueSumSerializer(serializers.Serializer[Any]):
    currency = serializers.CharField()
    invoiced_minor = serializers.IntegerField(help_text="Sum of the invoice lines.")
    paid_minor = serializers.IntegerField(help_text="Of invoices that are paid.")
    outstanding_minor = serializers.IntegerField(help_text="invoiced − paid.")
    subscribers = serializers.IntegerField(help_text="Distinct subscriptions billed.")
    invoices = serializers.IntegerField()


class RevenueAPISerializer(RevenueSumSerializer):
    api = RevenueAPIRefSerializer()


class RevenuePlanSerializer(RevenueAPISerializer):
    plan = RevenuePlanRefSerializer()


class RevenueRowSerializer(RevenuePlanSerializer):
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField()
    period = serializers.CharField(help_text="`2026-10`, `2026`, or empty for a custom period.")
    period_label = serializers.CharField()


class RevenueSerializer(serializers.Serializer[Any]):
    range = RevenueRangeSerializer()
    currencies = RevenueSumSerializer(many=True, help_text="Totals per currency.")
    apis = RevenueAPISerializer(many=True)
    plans = RevenuePlanSerializer(many=True)
    rows = RevenueRowSerializer(many=True, help_text="Per currency, period, API and plan; newest first.")


class LedgerEntrySerializer(AdjustmentSerializer):
    subscription = serializers.IntegerField(source="subscription_id")
    kind = serializers.CharField()


class WindowRerunResultSerializer(serializers.Serializer[Any]):
    window_start = serializers.DateTimeField()
    window_end = serializers.DateTimeField()
    difference = serializers.BooleanField(help_text="False: the ledger already held what analytics counted.")
    adjustments = LedgerEntrySerializer(
        many=True, help_text="The adjustment entries written (none if no difference)."
    )


class CreditSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    account = AccountSerializer()
    amount_minor = serializers.IntegerField()
    currency = serializers.CharField()
    reason = serializers.CharField()
    created_by = serializers.EmailField(source="created_by.email", allow_null=True, default=None)
    created = serializers.DateTimeField()
    invoice = serializers.IntegerField(
        source="invoice_id", allow_null=True, help_text="The invoice it was spent on; null until then."
    )


# --- input serializers ----------------------------------------------------------------------------


class WindowRerunInputSerializer(serializers.Serializer[Any]):
    start = serializers.DateTimeField(
        help_text="The window's start, ISO 8601 on the hour (UTC if no offset)."
    )
    reason = serializers.CharField(max_length=250, help_text="Stored on the adjustment entries.")

    def validate_start(self, value: Any) -> Any:
        try:
            return check_window_start(value)
        except ValueError as error:
            raise serializers.ValidationError(str(error)) from None


class CreditInputSerializer(serializers.Serializer[Any]):
    account = serializers.CharField(
        max_length=254, help_text="The consumer's email, or the billing account id."
    )
    amount_minor = serializers.IntegerField(
        min_value=1, max_value=MAX_CREDIT_MINOR, help_text="Positive, minor units: 1250 for $12.50."
    )
    currency = serializers.CharField(max_length=3, default="usd", help_text="ISO 4217, e.g. `usd`.")
    reason = serializers.CharField(max_length=300, help_text="The consumer reads it on the credit line.")

    def validate_account(self, value: str) -> Any:
        try:
            return user_for_account(value)
        except ValueError as error:
            raise serializers.ValidationError(str(error)) from None

    def validate_currency(self, value: str) -> str:
        try:
            return clean_currency(value)
        except ValueError as error:
            raise serializers.ValidationError(str(error)) from None


# --- helpers ---------------------------------------------------------------------------------------


class IsPlatformAdmin(permissions.BasePermission):
    message = "The billing desk is for platform admins."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user.is_authenticated and request.user.is_staff)


class IsProviderOrAdmin(permissions.BasePermission):
    message = "Revenue is for the providers of APIs."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user.is_authenticated and (request.user.is_provider or request.user.is_staff))


def invoice_data(invoice: Invoice) -> dict[str, Any]:
    """``InvoiceSerializer`` input for ``invoice`` (``account__owner`` and ``dunning`` selected)."""
    state = invoice_state(invoice)
    return {
        "id": invoice.pk,
        "account": invoice.account,
        "period_start": invoice.period_start,
        "period_end": invoice.period_end,
        "period_label": invoice.period_label,
        "currency": invoice.currency,
        "subtotal_minor": invoice.subtotal_minor,
        "tax_minor": invoice.tax_minor,
        "total_minor": invoice.total_minor,
        "status": invoice.status,
        "payment_failed": state.payment_failed,
        "payment_failed_at": invoice.payment_failed_at,
        "paid_at": invoice.paid_at,
        "issued_at": invoice.issued_at,
        "hosted_invoice_url": hosted_url(invoice),
        "stripe_invoice_id": invoice.stripe_invoice_id,
        "stripe_synced_at": invoice.stripe_synced_at,
        "dunning": dunning_of(invoice),
    }


def _filters(form: Any) -> Any:
    """The form's cleaned data, or a 400 naming each bad query parameter."""
    if not form.is_valid():
        raise serializers.ValidationError({name: list(errors) for name, errors in form.errors.items()})
    return form.cleaned_data


def _paginated(request: Request, view: APIView, rows: Any, serialize: Any) -> Response:
    paginator = LinkHeaderPagination()
    page = paginator.paginate_queryset(rows, request, view=view)
    return paginator.get_paginated_response([serialize(item) for item in page or []])


INVOICES = Invoice.objects.select_related("account__owner", "dunning")
BAD_INPUT = OpenApiResponse(description='Bad input: `{"<field>": ["..."]}`.')
NOT_ADMIN = OpenApiResponse(description="Not a platform admin.")

# --- consumers -------------------------------------------------------------------------------------


class InvoiceListView(V1View):
    @extend_schema(
        parameters=PAGINATION_PARAMETERS,
        responses=InvoiceSerializer(many=True),
        summary="Your invoices",
        description="Your billing account's invoices, newest period first (a platform admin sees their "
        "own here too: every invoice is under `admin/invoices/`).",
    )
    def get(self, request: Request) -> Response:
        invoices = INVOICES.filter(account__owner=request.user).order_by("-period_start", "currency", "pk")
        return _paginated(
            request, self, invoices, lambda invoice: InvoiceSerializer(invoice_data(invoice)).data
        )


class InvoiceDetailView(V1View):
    @extend_schema(
        responses=InvoiceDetailSerializer,
        summary="One of your invoices, with its lines and the ledger entries behind each",
        description="Lines per subscription (base fee, events, bandwidth, overage, late usage "
        "adjustment) then credit lines; each line's `ledger` summarizes the ledger entries it bills: "
        "usage windows, events, bytes and the adjustments with their reason. 404 for an invoice that "
        "is not yours.",
    )
    def get(self, request: Request, pk: int) -> Response:
        invoice = INVOICES.filter(account__owner=request.user, pk=pk).first()
        if invoice is None:
            raise NotFound("No such invoice.")
        lines = [line for group in line_groups(invoice) for line in group.lines]
        data = {**invoice_data(invoice), "lines": lines}
        return Response(InvoiceDetailSerializer(data).data)


class EstimateView(V1View):
    @extend_schema(
        responses=EstimateSerializer,
        summary="This month so far: the running estimate of your next invoice",
        description="The lines and prices your invoice would have if the month (UTC) ended now, "
        "from the usage recorded until now; nothing is stored.",
    )
    def get(self, request: Request) -> Response:
        estimate = period_estimate(user=request.user, now=timezone.now())
        data = {
            "period_start": estimate.period_start,
            "period_end": estimate.period_end,
            "totals": [
                {"currency": currency, "total_minor": total} for currency, total in estimate.totals.items()
            ],
            "lines": estimate.lines,
        }
        return Response(EstimateSerializer(data).data)


# --- providers -------------------------------------------------------------------------------------


class RevenueView(V1View):
    permission_classes = [IsProviderOrAdmin]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "period",
                str,
                description="A month `YYYY-MM` or a year `YYYY` (yearly plans); "
                "default: the periods that ended in the last 12 months.",
            ),
            OpenApiParameter("api", str, description="The slug of one of your APIs."),
        ],
        responses={
            200: RevenueSerializer,
            400: BAD_INPUT,
            403: OpenApiResponse(description="Not a provider."),
        },
        summary="Revenue of your APIs",
        description="What your APIs' subscribers were invoiced (lines of issued, not void invoices), "
        "per currency, API, business plan and period: `invoiced_minor`, `paid_minor`, "
        "`outstanding_minor`, subscribers billed. Platform admins: every API.",
    )
    def get(self, request: Request) -> Response:
        data = _filters(RevenueFilterForm(request.query_params, user=request.user))
        report = revenue_report(
            request.user, period=data.get("period"), api=data.get("api"), now=timezone.now()
        )
        return Response(RevenueSerializer(report).data)


# --- platform admins ------------------------------------------------------------------------------


class AdminInvoiceListView(V1View):
    permission_classes = [IsPlatformAdmin]

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=Invoice.Status.values),
            OpenApiParameter("period", str, description="A month `YYYY-MM` or a year `YYYY`."),
            OpenApiParameter("email", str, description="Part of the account owner's email."),
            *PAGINATION_PARAMETERS,
        ],
        responses={200: InvoiceSerializer(many=True), 400: BAD_INPUT, 403: NOT_ADMIN},
        summary="Every invoice (admins)",
    )
    def get(self, request: Request) -> Response:
        form = InvoiceFilterForm(request.query_params)
        _filters(form)
        invoices = form.filter(INVOICES.order_by("-period_start", "-pk"))
        return _paginated(
            request, self, invoices, lambda invoice: InvoiceSerializer(invoice_data(invoice)).data
        )


class AdminFailedPaymentsView(V1View):
    permission_classes = [IsPlatformAdmin]

    @extend_schema(
        responses={200: InvoiceSerializer(many=True), 403: NOT_ADMIN},
        summary="Failed payments (admins)",
        description="Invoices whose last payment failed and that are not paid, latest failure first, "
        "with their dunning case (state, reminders sent, when the subscriptions are suspended).",
    )
    def get(self, request: Request) -> Response:
        return Response([InvoiceSerializer(invoice_data(invoice)).data for invoice in failed_payments()])


class AdminWindowRerunView(V1View):
    permission_classes = [IsPlatformAdmin]

    @extend_schema(
        request=WindowRerunInputSerializer,
        responses={200: WindowRerunResultSerializer, 400: BAD_INPUT, 403: NOT_ADMIN},
        summary="Re-run a usage window (admins)",
        description="Reads the hour starting at `start` from analytics again and records any difference "
        "with the ledger as adjustment entries (with `reason` and you as their author), billed on the "
        "next invoices. Running it again writes nothing. 400 naming `start` for a time not on the hour, "
        "a window that has not ended or is still in its grace period, or one older than the ledger.",
    )
    def post(self, request: Request) -> Response:
        given = WindowRerunInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        start = given.validated_data["start"]
        try:
            entries = window_rerun(start=start, by=request.user, reason=given.validated_data["reason"])
        except ValueError as error:
            raise serializers.ValidationError({"start": [str(error)]}) from None
        written = LedgerEntry.objects.filter(
            pk__in=[entry.pk for entry in entries if entry.pk]
        ).select_related("created_by")
        data = {
            "window_start": start,
            "window_end": start + WINDOW,
            "difference": bool(entries),
            "adjustments": list(written.order_by("subscription_id", "revision")),
        }
        return Response(WindowRerunResultSerializer(data).data)


class AdminCreditListView(V1View):
    permission_classes = [IsPlatformAdmin]

    @extend_schema(
        parameters=PAGINATION_PARAMETERS,
        responses={200: CreditSerializer(many=True), 403: NOT_ADMIN},
        summary="Credits (admins)",
        description="Every credit, newest first; `invoice` is null until an invoice spends it.",
    )
    def get(self, request: Request) -> Response:
        credits = Credit.objects.select_related("account__owner", "created_by").order_by("-created", "-pk")
        return _paginated(request, self, credits, lambda credit: CreditSerializer(credit).data)

    @extend_schema(
        request=CreditInputSerializer,
        responses={201: CreditSerializer, 400: BAD_INPUT, 403: NOT_ADMIN},
        summary="Issue a credit (admins)",
        description="Credits `amount_minor` (minor units, positive) of `currency` to the billing account "
        "of `account` (an email or a billing account id; the account is created if the consumer has "
        "none yet); their next invoice in that currency gets a negative line with `reason`.",
    )
    def post(self, request: Request) -> Response:
        given = CreditInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        with service_errors(), transaction.atomic():
            account, _ = BillingAccount.objects.get_or_create(owner=data["account"])
            credit = issue_credit(
                account=account,
                amount_minor=data["amount_minor"],
                currency=data["currency"],
                reason=data["reason"],
                by=request.user,
            )
        credit = Credit.objects.select_related("account__owner", "created_by").get(pk=credit.pk)
        return Response(CreditSerializer(credit).data, status=status.HTTP_201_CREATED)
