"""Billing admin: the ledger read-only (issued invoices are immutable), plus a re-send to Stripe."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from billing.models import BillingAccount, Invoice, InvoiceLine
from billing.stripe_sync import stripe_enabled
from billing.tasks import enqueue_stripe_sync


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    list_display = ["owner", "stripe_customer_id", "stripe_subscription_id", "created"]
    search_fields = ["owner__email", "stripe_customer_id"]
    readonly_fields = ["owner", "created"]


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
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


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
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
        "total_minor",
        "status",
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
