"""Billing admin: the ledger read-only (issued invoices are immutable), plus a re-send to Stripe
and approving paying by invoice.

Nothing billing holds is added or deleted here. Billing accounts are created by the system
(``billing.payments.billing_account_get``); their Stripe ids and card are Stripe's mirror and
read-only; invoicing is approved with the action (``billing.payments.invoicing_approve``, which
records who and when). Invoices, invoice lines, usage windows, ledger entries, credits, Stripe
events and dunning cases are written by the ledger, the billing desk (/billing/admin/: re-run a
window, issue a credit, approve invoicing), the Stripe webhook and dunning, each with its checks
and audit trail.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest

from billing.models import (
    BillingAccount,
    Credit,
    DunningCase,
    DunningSuspension,
    Invoice,
    InvoiceLine,
    LedgerEntry,
    StripeEvent,
    UsageWindow,
)
from billing.payments import invoicing_approve
from billing.stripe_sync import stripe_enabled
from billing.tasks import enqueue_stripe_sync


class NoAddDeleteAdmin(admin.ModelAdmin):
    """Rows are written by the billing services, never added or deleted by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    """Billing accounts: created by the system, so no add form (the owner cannot be chosen); the
    Stripe ids, card mirror and invoicing approval are read-only (the approval goes through the
    "Approve paying by invoice" action and ``billing.payments.invoicing_approve``)."""

    list_display = [
        "owner",
        "stripe_customer_id",
        "payment_method_last4",
        "invoicing_approved_at",
        "invoicing_approved_by",
        "created",
    ]
    list_select_related = ["owner", "invoicing_approved_by"]
    search_fields = ["owner__email", "stripe_customer_id"]
    readonly_fields = [
        "owner",
        "stripe_customer_id",
        "stripe_subscription_id",
        "payment_method_id",
        "payment_method_brand",
        "payment_method_last4",
        "payment_method_exp_month",
        "payment_method_exp_year",
        "invoicing_approved_at",
        "invoicing_approved_by",
        "created",
    ]
    actions = ["approve_invoicing"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Approve paying by invoice")
    def approve_invoicing(self, request: HttpRequest, queryset: QuerySet[BillingAccount]) -> None:
        """``billing.payments.invoicing_approve`` for each selected account, by the signed-in admin."""
        approved = 0
        for account in queryset:
            try:
                invoicing_approve(account=account, by=request.user)
            except PermissionDenied as error:
                self.message_user(request, str(error), messages.ERROR)
                return
            approved += 1
        self.message_user(request, f"Paying by invoice approved for {approved} billing account(s).")


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    max_num = 0
    fields = [
        "subscription",
        "kind",
        "description",
        "events",
        "bytes",
        "quantity",
        "unit_amount_minor",
        "amount_minor",
        "stripe_invoice_item_id",
    ]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Invoice | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Invoice | None = None) -> bool:
        return False


@admin.register(InvoiceLine)
class InvoiceLineAdmin(admin.ModelAdmin):
    """Invoice lines, read-only: they are part of an issued invoice."""

    list_display = ["pk", "invoice", "kind", "subscription", "amount_minor"]
    list_filter = ["kind"]
    list_select_related = ["invoice__account__owner", "subscription__api"]
    search_fields = ["invoice__account__owner__email", "description"]
    raw_id_fields = ["invoice", "subscription", "credit"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Invoice)
class InvoiceAdmin(NoAddDeleteAdmin):
    list_display = [
        "pk",
        "account",
        "period_start",
        "period_end",
        "currency",
        "total_minor",
        "status",
        "stripe_invoice_id",
        "stripe_synced_at",
        "has_stripe_error",
    ]
    list_filter = ["status", "currency", "period_start"]
    search_fields = ["account__owner__email", "stripe_invoice_id"]
    readonly_fields = [
        "account",
        "period_start",
        "period_end",
        "currency",
        "subtotal_minor",
        "tax_minor",
        "total_minor",
        "status",
        "issued_at",
        "paid_at",
        "payment_failed_at",
        "hosted_invoice_url",
        "stripe_invoice_id",
        "stripe_synced_at",
        "stripe_error",
        "created",
    ]
    inlines = [InvoiceLineInline]
    actions = ["send_to_stripe"]

    @admin.display(boolean=True, description="Stripe error")
    def has_stripe_error(self, obj: Invoice) -> bool:
        return bool(obj.stripe_error)

    @admin.action(description="Send to Stripe again (creates only what is missing)")
    def send_to_stripe(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        if not stripe_enabled():
            self.message_user(request, "STRIPE_API_KEY is not set; Stripe sync is off.", messages.WARNING)
            return
        ids = enqueue_stripe_sync(invoice_ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"Queued {len(ids)} invoice(s) for Stripe sync.")


class ReadOnlyAdmin(admin.ModelAdmin):
    """Shows rows and their fields; adds, changes and deletes nothing (the ledger's rows are
    written by services with their checks, never by hand)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(UsageWindow)
class UsageWindowAdmin(ReadOnlyAdmin):
    list_display = ["start", "end", "closed_at", "subscriptions"]
    date_hierarchy = "start"


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = [
        "window_start",
        "subscription",
        "plan",
        "revision",
        "kind",
        "events",
        "bytes",
        "in_events",
        "in_bytes",
        "counted_events",
        "counted_bytes",
        "invoice",
        "created_by",
        "reason",
    ]
    list_filter = ["kind", ("invoice", admin.EmptyFieldListFilter), "window_start"]
    list_select_related = [
        "subscription__api",
        "subscription__plan",
        "subscription__application",
        "plan__api",
        "created_by",
    ]
    search_fields = ["subscription__application__owner__email", "subscription__api__slug", "reason"]
    date_hierarchy = "window_start"
    raw_id_fields = ["subscription", "invoice", "created_by"]


@admin.register(Credit)
class CreditAdmin(ReadOnlyAdmin):
    list_display = ["pk", "account", "amount_minor", "currency", "reason", "created_by", "created", "invoice"]
    list_filter = ["currency", ("invoice", admin.EmptyFieldListFilter)]
    list_select_related = ["account__owner", "created_by", "invoice"]
    search_fields = ["account__owner__email", "reason"]


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ["event_id", "type", "received_at", "processed_at", "attempts", "has_error"]
    list_filter = ["type", ("processed_at", admin.EmptyFieldListFilter)]
    search_fields = ["event_id", "type"]
    date_hierarchy = "received_at"

    @admin.display(boolean=True, description="Error")
    def has_error(self, obj: StripeEvent) -> bool:
        return bool(obj.error)


class DunningSuspensionInline(admin.TabularInline):
    model = DunningSuspension
    extra = 0
    fields = ["subscription", "suspended_at", "reinstated_at"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: DunningCase | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DunningCase | None = None) -> bool:
        return False


@admin.register(DunningCase)
class DunningCaseAdmin(ReadOnlyAdmin):
    list_display = [
        "invoice",
        "account_email",
        "state",
        "started_at",
        "failures",
        "reminders_sent",
        "suspend_at",
        "suspended_at",
        "resolved_at",
    ]
    list_filter = ["state"]
    list_select_related = ["invoice__account__owner"]
    search_fields = ["invoice__account__owner__email"]
    inlines = [DunningSuspensionInline]

    @admin.display(description="Account", ordering="invoice__account__owner__email")
    def account_email(self, obj: DunningCase) -> str:
        return obj.invoice.account.owner.email
