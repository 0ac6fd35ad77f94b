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
    # The default payment method (a Stripe PaymentMethod), mirrored for pages: never card numbers.
    payment_method_id = models.CharField(max_length=255, blank=True)
    payment_method_brand = models.CharField(max_length=32, blank=True)
    payment_method_last4 = models.CharField(max_length=4, blank=True)
    payment_method_exp_month = models.PositiveSmallIntegerField(null=True, blank=True)
    payment_method_exp_year = models.PositiveSmallIntegerField(null=True, blank=True)
    # Admin-approved invoicing: Stripe emails the invoice and the consumer pays it by transfer
    # (collection_method "send_invoice") instead of a card being charged.
    invoicing_approved_at = models.DateTimeField(null=True, blank=True)
    invoicing_approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"Billing account of {self.owner}"

    @property
    def has_payment_method(self) -> bool:
        """Whether a card (Stripe PaymentMethod) is on file."""
        return bool(self.payment_method_id)

    @property
    def invoicing_approved(self) -> bool:
        """Whether an admin approved paying by invoice (no card needed)."""
        return self.invoicing_approved_at is not None

    @property
    def can_pay(self) -> bool:
        """Whether this account may subscribe to paid plans: a payment method on file, or
        admin-approved invoicing."""
        return self.has_payment_method or self.invoicing_approved

    @property
    def collection_method(self) -> str:
        """Stripe's ``collection_method`` for this account's invoices: ``send_invoice`` with
        approved invoicing, else ``charge_automatically`` (Stripe API reference: Invoices ›
        collection_method)."""
        return (
            "send_invoice"
            if self.invoicing_approved and not self.has_payment_method
            else ("charge_automatically")
        )


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
    subtotal_minor = models.BigIntegerField(default=0, help_text="Sum of the lines, before tax.")
    tax_minor = models.BigIntegerField(default=0, help_text="Tax: always 0 (prices are tax-free).")
    total_minor = models.BigIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    issued_at = models.DateTimeField(
        null=True, blank=True, help_text="When the ledger issued it; its lines never change after."
    )
    paid_at = models.DateTimeField(null=True, blank=True)
    payment_failed_at = models.DateTimeField(null=True, blank=True, help_text="The last failed payment.")
    hosted_invoice_url = models.URLField(max_length=500, blank=True, help_text="Stripe's page to pay it.")
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
        BANDWIDTH = "bandwidth", "Bandwidth"
        EVENTS_OVERAGE = "events_overage", "Events overage"
        BYTES_OVERAGE = "bytes_overage", "Bytes overage"
        ADJUSTMENT = "adjustment", "Late usage adjustment"
        CREDIT = "credit", "Credit"

    OVERAGE_KINDS = frozenset({Kind.EVENTS_OVERAGE, Kind.BYTES_OVERAGE})

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    subscription = models.ForeignKey(
        "portal.Subscription",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="invoice_lines",
        help_text="None for a credit line (credits are per billing account).",
    )
    credit = models.OneToOneField(
        "Credit", null=True, blank=True, on_delete=models.PROTECT, related_name="invoice_line"
    )
    plan = models.ForeignKey(
        "portal.BusinessPlan",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="invoice_lines",
        help_text="The business plan whose prices this line applies (a subscription that changed plan "
        "in the period has lines of each).",
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    description = models.CharField(max_length=300)
    quantity = models.PositiveBigIntegerField(
        default=1,
        help_text="Units billed (1 for a fee; blocks of 1,000 events; bytes over the quota for "
        "bytes overage).",
    )
    unit_amount_minor = models.BigIntegerField(
        default=0, help_text="Price per unit (per GB of 10^9 bytes for bandwidth and bytes overage)."
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
            models.UniqueConstraint(
                fields=["invoice", "subscription", "plan", "kind"], name="unique_invoice_line"
            )
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


class UsageWindow(models.Model):
    """A fixed usage window (a whole UTC hour, ``billing.ledger.WINDOW``) that the ledger has
    closed: its ``LedgerEntry`` rows were written in the same transaction that created this row,
    so a window row exists if and only if all its entries do.
    The unique ``start`` is the claim: a second closer (run twice, two workers, a retry after a
    crash) inserts nothing."""

    start = models.DateTimeField(unique=True)
    end = models.DateTimeField()
    closed_at = models.DateTimeField(default=timezone.now)
    subscriptions = models.PositiveIntegerField(default=0, help_text="Ledger entries written at close.")

    class Meta:
        ordering = ["-start"]

    def __str__(self) -> str:
        return f"Usage window {self.start:%Y-%m-%d %H:%M}–{self.end:%H:%M} UTC"


class LedgerEntry(models.Model):
    """What one subscription used in one closed usage window: the analytics numbers the consumer
    sees (``analytics.services``), frozen.

    ``revision`` 0 is the entry written when the window closed (exactly one per subscription and
    window: unique constraint). Usage that reached analytics after that (a late gateway flush)
    becomes an *adjustment*: revision 1, 2, … holding the difference, with who or what found it
    (``reason``, ``created_by``). ``invoice`` is set when an invoice bills the entry, in the same
    transaction that issues the invoice, so each entry is billed at most once.

    ``events``/``bytes`` are delivered (direction ``out``), ``in_events``/``in_bytes`` sent by the
    client (direction ``in``); ``counted_events``/``counted_bytes`` are the directions the
    entry's ``plan``'s quotas count (``BusinessPlan.counted_directions``). ``plan`` is the
    subscription's plan when the window closed, so a plan change never re-prices usage already
    in the ledger. Adjustments may be negative.
    """

    class Kind(models.TextChoices):
        USAGE = "usage", "Usage"
        ADJUSTMENT = "adjustment", "Adjustment"

    subscription = models.ForeignKey(
        "portal.Subscription", on_delete=models.PROTECT, related_name="ledger_entries"
    )
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    revision = models.PositiveIntegerField(default=0)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.USAGE)
    plan = models.ForeignKey(
        "portal.BusinessPlan",
        null=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The subscription's business plan when the window closed: the prices of this usage.",
    )
    events = models.BigIntegerField(default=0)
    bytes = models.BigIntegerField(default=0)
    in_events = models.BigIntegerField(default=0, help_text="Events the client sent (direction in).")
    in_bytes = models.BigIntegerField(default=0, help_text="Bytes the client sent (direction in).")
    counted_events = models.BigIntegerField(default=0)
    counted_bytes = models.BigIntegerField(default=0)
    created = models.DateTimeField(default=timezone.now)
    reason = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    invoice = models.ForeignKey(
        Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_entries"
    )

    class Meta:
        ordering = ["window_start", "subscription", "revision"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "window_start", "revision"], name="unique_ledger_entry"
            )
        ]
        indexes = [models.Index(fields=["subscription", "invoice", "window_start"])]
        verbose_name_plural = "ledger entries"

    def __str__(self) -> str:
        window = f"{self.window_start:%Y-%m-%d %H:%M}"
        return f"{self.get_kind_display()} of subscription {self.subscription_id} {window}"


class Credit(models.Model):
    """An amount an admin credits a billing account (``amount_minor`` > 0 is taken off); it
    becomes a negative ``credit`` line on the account's next invoice in ``currency`` and is then
    spent (``invoice`` set)."""

    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="credits")
    currency = models.CharField(max_length=3, default="usd")
    amount_minor = models.PositiveBigIntegerField()
    reason = models.CharField(max_length=300)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(default=timezone.now)
    invoice = models.ForeignKey(
        Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="credits"
    )

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"Credit {self.pk} of {self.amount_minor} {self.currency} to {self.account}"


class StripeRequest(models.Model):
    """Write-ahead record of a Stripe create call: committed *before* the call with the
    idempotency key, completed with the returned id *after* it. A key without an id after a
    crash means Stripe may have created the object: the retry looks it up by its
    ``eventgate_key`` metadata before creating (localstripe ignores idempotency keys; real Stripe
    replays them for 24 hours)."""

    idempotency_key = models.CharField(max_length=255, unique=True)
    object_type = models.CharField(max_length=32)
    stripe_id = models.CharField(max_length=255, blank=True)
    requested_at = models.DateTimeField(default=timezone.now)
    answered_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.idempotency_key


class StripeEvent(models.Model):
    """A Stripe webhook event as received (signature verified), processed at most once: the
    unique ``event_id`` drops duplicates at receipt, and a worker claims it with a conditional
    update of ``claimed_at`` before handling it (Stripe docs: Webhooks › Handle duplicate events)."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    stripe_created = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, help_text="The last processing failure, if any.")
    note = models.CharField(
        max_length=500,
        blank=True,
        help_text="Why a processed event changed nothing (ignored type, unknown invoice).",
    )

    class Meta:
        ordering = ["-received_at"]
        indexes = [models.Index(fields=["processed_at", "received_at"])]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class DunningCase(models.Model):
    """A failed payment being chased: reminders every ``BILLING_DUNNING_REMINDER_SECONDS``, then,
    at ``suspend_at`` (``BILLING_DUNNING_GRACE_SECONDS`` after the first failure), the account's
    active subscriptions are suspended (the gateway closes their connections); paying the invoice
    resolves the case and reinstates exactly the subscriptions it suspended."""

    class State(models.TextChoices):
        OPEN = "open", "Reminding"
        SUSPENDED = "suspended", "Suspended"
        RESOLVED = "resolved", "Resolved"

    invoice = models.OneToOneField(Invoice, on_delete=models.PROTECT, related_name="dunning")
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN)
    started_at = models.DateTimeField(default=timezone.now)
    failures = models.PositiveIntegerField(default=1)
    last_failure_message = models.CharField(max_length=500, blank=True)
    reminders_sent = models.PositiveIntegerField(default=0)
    next_reminder_at = models.DateTimeField(null=True, blank=True)
    suspend_at = models.DateTimeField()
    suspended_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            models.Index(fields=["state", "next_reminder_at"]),
            models.Index(fields=["state", "suspend_at"]),
        ]

    def __str__(self) -> str:
        return f"Dunning of invoice {self.invoice_id} ({self.get_state_display()})"


class DunningSuspension(models.Model):
    """A subscription a dunning case suspended, so paying reinstates it and only it (a
    subscription an admin suspended for another reason stays suspended)."""

    case = models.ForeignKey(DunningCase, on_delete=models.CASCADE, related_name="suspensions")
    subscription = models.ForeignKey("portal.Subscription", on_delete=models.CASCADE, related_name="+")
    suspended_at = models.DateTimeField(default=timezone.now)
    reinstated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["case", "subscription"], name="unique_dunning_suspension")
        ]

    def __str__(self) -> str:
        return f"Subscription {self.subscription_id} suspended by {self.case}"
