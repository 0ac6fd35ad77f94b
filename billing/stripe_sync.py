"""Push ledger invoices to Stripe, or to a Stripe-compatible server such as localstripe.

Stripe mirrors Eventgate's ledger (``billing.models``), never the other way round. Per invoice:

1. the billing account's Stripe customer, created once (Stripe API reference: Customers › Create);
2. a zero-amount monthly subscription for the customer, created once: localstripe refuses
   ``Invoice.create`` for a customer without a subscription (and, when a subscription is created,
   pulls the customer's pending invoice items into that subscription's first invoice — so it must
   exist before any invoice item). It uses one product and one zero-amount plan per currency with
   fixed ids (Products / Plans › Create), created on first use;
3. one invoice item per invoice line — every kind alike (base fee, events, events overage, bytes
   overage) — with ``amount``, ``currency``, ``description`` and the line's kind, events and bytes
   as metadata (Invoice Items › Create), then one invoice with
   ``pending_invoice_items_behavior=include`` (Invoices › Create);
4. finalization (Invoices › Finalize an invoice) — skipped when the server has no such endpoint
   (localstripe).

Every create call carries an idempotency key derived from a ledger row (``customer-<account id>``,
``subscription-<account id>``, ``invoiceline-<line id>``, ``invoice-<invoice id>``), and every
returned id is stored as soon as Stripe answers, so a rerun creates nothing twice. Real Stripe also
replays an idempotent request whose answer was lost; localstripe ignores idempotency keys, so
against it the stored ids are what prevent duplicates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import stripe
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

from billing.models import BillingAccount, Invoice, InvoiceLine

logger = logging.getLogger(__name__)

PRODUCT_ID = "eventgate-usage"
ZERO_PLAN_ID = "eventgate-usage-zero-{currency}"
# Network errors, 5xx answers and rate limits are worth retrying; a rejected request is not.
TRANSIENT_ERRORS: tuple[type[stripe.StripeError], ...] = (
    stripe.APIConnectionError,
    stripe.APIError,
    stripe.RateLimitError,
)

T = TypeVar("T")


class StripeNotConfigured(ImproperlyConfigured):
    """Raised when a Stripe call is attempted without ``settings.STRIPE_API_KEY``."""


def stripe_enabled() -> bool:
    """True when ``settings.STRIPE_API_KEY`` is set: only then does Eventgate talk to Stripe."""
    return bool(settings.STRIPE_API_KEY)


def stripe_client() -> stripe.StripeClient:
    """A Stripe client for ``settings.STRIPE_API_KEY``, pointed at ``settings.STRIPE_API_BASE``
    (e.g. localstripe's ``http://127.0.0.1:8420``) when set. Raises ``StripeNotConfigured``."""
    if not stripe_enabled():
        raise StripeNotConfigured("STRIPE_API_KEY is not set; Stripe sync is off.")
    base = settings.STRIPE_API_BASE.rstrip("/")
    return stripe.StripeClient(
        settings.STRIPE_API_KEY, base_addresses={"api": base} if base else None, max_network_retries=2
    )


def invoice_sync_stripe(*, invoice: Invoice, client: stripe.StripeClient | None = None) -> Invoice:
    """Push ``invoice`` (customer, invoice items, invoice) to Stripe; returns it refreshed.

    Safe to run again at any time: objects whose ids are stored are not created again, and an
    already pushed invoice only has its status refreshed. Syncs of one billing account run one
    at a time (row lock on the account) because creating a Stripe invoice pulls in *all* the
    customer's pending invoice items; the lock is held across the HTTP calls, which is fine for
    a background job that makes a handful of them.

    On a Stripe error the ids stored so far and the error message (``Invoice.stripe_error``) are
    committed and the ``stripe.StripeError`` is re-raised for the caller (the Celery task) to
    retry; the ledger rows are never changed otherwise.
    Raises ``StripeNotConfigured`` without ``settings.STRIPE_API_KEY``.
    """
    client = client or stripe_client()
    error: stripe.StripeError | None = None
    with transaction.atomic():
        account = (
            BillingAccount.objects.select_for_update().select_related("owner").get(pk=invoice.account_id)
        )
        invoice = Invoice.objects.get(pk=invoice.pk)
        try:
            _push_invoice(client=client, account=account, invoice=invoice)
        except stripe.StripeError as exc:
            error = exc
            invoice.stripe_error = f"{type(exc).__name__}: {exc}"[:2000]
            invoice.save(update_fields=["stripe_error"])
            logger.warning("Stripe sync of invoice %s failed: %s", invoice.pk, invoice.stripe_error)
    if error is not None:
        raise error
    return invoice


def _push_invoice(*, client: stripe.StripeClient, account: BillingAccount, invoice: Invoice) -> None:
    customer_id = _ensure_customer(client=client, account=account)
    _ensure_subscription(client=client, account=account, currency=invoice.currency)
    for line in invoice.lines.filter(stripe_invoice_item_id="").order_by("pk"):
        _create_invoice_item(client=client, line=line, customer_id=customer_id, currency=invoice.currency)

    if invoice.stripe_invoice_id:
        stripe_invoice = client.v1.invoices.retrieve(invoice.stripe_invoice_id)
    else:
        stripe_invoice = client.v1.invoices.create(
            params={
                "customer": customer_id,
                # Real Stripe excludes pending invoice items by default; localstripe ignores this.
                "pending_invoice_items_behavior": "include",
                "description": f"Eventgate usage, {invoice.period_label}",
                "metadata": {
                    "eventgate_invoice_id": str(invoice.pk),
                    "period_start": invoice.period_start.isoformat(),
                    "period_end": invoice.period_end.isoformat(),
                },
            },
            options={"idempotency_key": f"invoice-{invoice.pk}"},
        )
        invoice.stripe_invoice_id = stripe_invoice.id
        invoice.save(update_fields=["stripe_invoice_id"])

    stripe_invoice = finalize_invoice(
        client=client, stripe_invoice=stripe_invoice, ledger_invoice_id=invoice.pk
    )
    if getattr(stripe_invoice, "status", None) in Invoice.Status.values:
        invoice.status = stripe_invoice.status
    invoice.stripe_synced_at = timezone.now()
    invoice.stripe_error = ""
    subtotal = getattr(stripe_invoice, "subtotal", None)
    if subtotal != invoice.total_minor:
        # Stray pending items of the customer (e.g. from a crashed run whose ids were lost) would
        # end up on this invoice. Keep the ids, but leave a message an operator sees in the admin.
        invoice.stripe_error = (
            f"Stripe invoice {stripe_invoice.id} subtotal {subtotal} "
            f"differs from the ledger total {invoice.total_minor}."
        )
        logger.error("Invoice %s: %s", invoice.pk, invoice.stripe_error)
    invoice.save(update_fields=["status", "stripe_synced_at", "stripe_error"])


def finalize_invoice(*, client: stripe.StripeClient, stripe_invoice: Any, ledger_invoice_id: int) -> Any:
    """Finalize a draft Stripe invoice so it can be paid; returns the (possibly updated) invoice.

    The one place Eventgate finalizes invoices (Stripe API reference: Invoices › Finalize an
    invoice). Servers without the endpoint — localstripe answers 404 with a non-JSON body, which
    stripe-python raises as ``stripe.APIError`` — leave the invoice a draft; real Stripe's 404s are
    JSON ``InvalidRequestError``s and propagate.
    """
    if getattr(stripe_invoice, "status", None) != "draft":
        return stripe_invoice
    try:
        return client.v1.invoices.finalize_invoice(
            stripe_invoice.id, options={"idempotency_key": f"invoice-{ledger_invoice_id}-finalize"}
        )
    except stripe.APIError as exc:
        if exc.http_status != 404:
            raise
        logger.debug("Stripe server has no finalize endpoint; invoice %s stays a draft", stripe_invoice.id)
        return stripe_invoice


def _ensure_customer(*, client: stripe.StripeClient, account: BillingAccount) -> str:
    if not account.stripe_customer_id:
        customer = client.v1.customers.create(
            params={"email": account.owner.email, "metadata": {"eventgate_account_id": str(account.pk)}},
            options={"idempotency_key": f"customer-{account.pk}"},
        )
        account.stripe_customer_id = customer.id
        account.save(update_fields=["stripe_customer_id"])
    return account.stripe_customer_id


def _ensure_subscription(*, client: stripe.StripeClient, account: BillingAccount, currency: str) -> str:
    if not account.stripe_subscription_id:
        plan_id = _ensure_zero_plan(client=client, currency=currency)
        subscription = client.v1.subscriptions.create(
            params={
                "customer": account.stripe_customer_id,
                "items": [{"plan": plan_id}],  # type: ignore[list-item]  # legacy key localstripe understands
                "metadata": {"eventgate_account_id": str(account.pk)},
            },
            options={"idempotency_key": f"subscription-{account.pk}"},
        )
        account.stripe_subscription_id = subscription.id
        account.save(update_fields=["stripe_subscription_id"])
    return account.stripe_subscription_id


def _ensure_zero_plan(*, client: stripe.StripeClient, currency: str) -> str:
    """The zero-amount monthly plan for ``currency`` (fixed ids make it naturally idempotent)."""
    _retrieve_or_create(
        lambda: client.v1.products.retrieve(PRODUCT_ID),
        lambda: client.v1.products.create(params={"id": PRODUCT_ID, "name": "Eventgate usage"}),
    )
    plan_id = ZERO_PLAN_ID.format(currency=currency)
    _retrieve_or_create(
        lambda: client.v1.plans.retrieve(plan_id),
        lambda: client.v1.plans.create(
            params={
                "id": plan_id,
                "amount": 0,
                "currency": currency,
                "interval": "month",
                "product": PRODUCT_ID,
                "nickname": "Eventgate account (usage is billed as invoice items)",
            }
        ),
    )
    return plan_id


def _retrieve_or_create(retrieve: Callable[[], T], create: Callable[[], T]) -> T:
    try:
        return retrieve()
    except stripe.InvalidRequestError as exc:
        if exc.http_status != 404:
            raise
    try:
        return create()
    except stripe.StripeError as exc:
        # Created meanwhile by another worker: Stripe says resource_already_exists, localstripe 409.
        if exc.http_status == 409 or exc.code == "resource_already_exists":
            return retrieve()
        raise


def _create_invoice_item(
    *, client: stripe.StripeClient, line: InvoiceLine, customer_id: str, currency: str
) -> None:
    item = client.v1.invoice_items.create(
        params={
            "customer": customer_id,
            "amount": line.amount_minor,
            "currency": currency,
            "description": line.description,
            "metadata": {
                "eventgate_invoice_id": str(line.invoice_id),
                "eventgate_invoice_line_id": str(line.pk),
                "eventgate_subscription_id": str(line.subscription_id),
                "eventgate_line_kind": line.kind,
                "events": str(line.events),
                "bytes": str(line.bytes),
            },
        },
        options={"idempotency_key": f"invoiceline-{line.pk}"},
    )
    line.stripe_invoice_item_id = item.id
    line.save(update_fields=["stripe_invoice_item_id"])
