"""Eventgate's own ledger: billing accounts, invoices and invoice lines.

Amounts are integer minor units (cents). Stripe is a mirror of this ledger, never its source.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone


class BillingAccount(models.Model):
    """Who pays: one per consumer user, mapped to a Stripe customer."""

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="billing_account"
    )
    stripe_customer_id = models.CharField(max_length=255, blank=True)
    stripe_subscription_id = models.CharField(
        max_length=255, blank=True, help_text="A zero-amount Stripe subscription that invoices attach to."
    )
    created = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"Billing account of {self.owner}"


class InvoiceQuerySet(models.QuerySet["Invoice"]):
    def for_user(self, user: Any) -> InvoiceQuerySet:
        """Invoices of ``user``'s billing account (none for anonymous users)."""
        if not getattr(user, "is_authenticated", False):
            return self.none()
        return self.filter(account__owner=user)

    def needing_stripe_sync(self) -> InvoiceQuerySet:
        """Invoices whose push to Stripe has not completed yet (never synced, or failed)."""
        return self.filter(stripe_synced_at__isnull=True)


class Invoice(models.Model):
    """An invoice for one billing account and one closed billing period.

    Unique per (account, period_start, period_end, currency), so closing a period twice creates
    nothing new. ``status`` follows Stripe's invoice statuses once synced.
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        OPEN = "open", "Open"
        PAID = "paid", "Paid"
        VOID = "void", "Void"
        UNCOLLECTIBLE = "uncollectible", "Uncollectible"

    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="invoices")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    currency = models.CharField(max_length=3, default="usd")
    total_minor = models.BigIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    stripe_invoice_id = models.CharField(max_length=255, blank=True)
    stripe_synced_at = models.DateTimeField(null=True, blank=True)
    stripe_error = models.TextField(blank=True, help_text="The last Stripe error, if the sync failed.")
    created = models.DateTimeField(default=timezone.now)

    objects = InvoiceQuerySet.as_manager()

    class Meta:
        ordering = ["-period_start"]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "period_start", "period_end", "currency"], name="unique_invoice_per_period"
            )
        ]

    def __str__(self) -> str:
        return f"Invoice {self.pk} {self.period_start:%Y-%m-%d}–{self.period_end:%Y-%m-%d}"

    def get_absolute_url(self) -> str:
        return reverse("billing:invoice_detail", args=[self.pk])

    @property
    def period_label(self) -> str:
        """The period for people: "October 2026" for a calendar month (UTC), else
        "2026-10-01 – 2026-10-15" (last day inclusive)."""
        start, end = self.period_start.astimezone(UTC), self.period_end.astimezone(UTC)
        next_month = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
        if start == start.replace(day=1, hour=0, minute=0, second=0, microsecond=0) and end == next_month:
            return f"{start:%B %Y}"
        last_day = (end - timedelta(microseconds=1)).date()
        return f"{start:%Y-%m-%d} – {last_day:%Y-%m-%d}"


class InvoiceLine(models.Model):
    """One charge on an invoice: a subscription's base fee, its events over the included amount,
    or (plans whose ``quota_action`` is "overage") its events or bytes over the plan's quota.

    ``quantity`` × ``unit_amount_minor`` is the amount for base fees and both events kinds
    (quantity 1, or started blocks of 1,000 events). A bytes-overage line's quantity is the bytes
    over the quota and its unit amount the price per GB (10^9 bytes); its amount is
    ``ceil(quantity × unit_amount_minor / 10^9)`` (``billing.services.bytes_overage_charge``).
    """

    class Kind(models.TextChoices):
        BASE_FEE = "base_fee", "Base fee"
        EVENTS = "events", "Events"
        EVENTS_OVERAGE = "events_overage", "Events overage"
        BYTES_OVERAGE = "bytes_overage", "Bytes overage"

    OVERAGE_KINDS = frozenset({Kind.EVENTS_OVERAGE, Kind.BYTES_OVERAGE})

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    subscription = models.ForeignKey(
        "portal.Subscription", on_delete=models.PROTECT, related_name="invoice_lines"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    description = models.CharField(max_length=300)
    quantity = models.PositiveBigIntegerField(
        default=1,
        help_text="Units billed (1 for a fee; blocks of 1,000 events; bytes over the quota for "
        "bytes overage).",
    )
    unit_amount_minor = models.BigIntegerField(
        default=0, help_text="Price per unit (per GB of 10^9 bytes for bytes overage)."
    )
    amount_minor = models.BigIntegerField(default=0)
    events = models.PositiveBigIntegerField(
        default=0,
        help_text="Events delivered in the period (from analytics); for overage lines, the events of "
        "the plan's counted directions.",
    )
    bytes = models.PositiveBigIntegerField(
        default=0,
        help_text="Bytes delivered in the period (from analytics); for overage lines, the bytes of "
        "the plan's counted directions.",
    )
    stripe_invoice_item_id = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["invoice", "subscription", "kind"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "subscription", "kind"], name="unique_invoice_line")
        ]

    def __str__(self) -> str:
        return self.description

    @property
    def is_overage(self) -> bool:
        """Whether this line bills events or bytes over the plan's quota."""
        return self.kind in self.OVERAGE_KINDS

    @property
    def detail(self) -> str:
        """The description without its "<API> — <plan> (<application>): " prefix."""
        return self.description.split(": ", 1)[-1]
