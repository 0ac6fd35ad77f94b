"""Pushing ledger invoices to Stripe, checked by reading the objects back from a real localstripe."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import stripe

import billing.stripe_sync as stripe_sync
from billing.models import BillingAccount, Invoice, StripeRequest
from billing.payments import billing_account_get, payment_method_attach
from billing.services import invoice_period_close
from billing.stripe_sync import invoice_sync_stripe, subscription_key
from billing.webhooks import stripe_event_process, stripe_event_record
from tests.billing.conftest import NOVEMBER, OCTOBER


@pytest.fixture
def october_invoice(bob_subscription, record_usage) -> Invoice:
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 15, tzinfo=UTC), 12_345, 1_234_500)
    [invoice] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])
    return invoice


def invoice_item_lines(client: stripe.StripeClient, customer_id: str) -> list:
    """Every invoice-item line on every Stripe invoice of the customer, plus pending items."""
    lines = []
    for stripe_invoice in client.v1.invoices.list(params={"customer": customer_id, "limit": 100}).data:
        lines += [line for line in stripe_invoice.lines.data if line.type == "invoiceitem"]
    pending = client.v1.invoice_items.list(params={"customer": customer_id, "limit": 100}).data
    return lines + list(pending)


def test_sync_creates_customer_invoice_items_and_invoice_in_stripe(
    stripe_settings, stripe_client, bob, october_invoice
):
    invoice = invoice_sync_stripe(invoice=october_invoice)

    account = BillingAccount.objects.get(owner=bob)
    customer = stripe_client.v1.customers.retrieve(account.stripe_customer_id)
    assert customer.email == "bob@example.com"
    assert customer.metadata["eventgate_account_id"] == str(account.pk)

    stripe_invoice = stripe_client.v1.invoices.retrieve(invoice.stripe_invoice_id)
    assert stripe_invoice.customer == account.stripe_customer_id
    assert (stripe_invoice.subtotal, stripe_invoice.currency) == (5350, "usd")
    assert stripe_invoice.description == "Eventgate usage, October 2026"  # localstripe drops metadata

    for line in invoice.lines.all():
        item = stripe_client.v1.invoice_items.retrieve(line.stripe_invoice_item_id)
        assert (item.amount, item.currency, item.description) == (line.amount_minor, "usd", line.description)
        assert item.invoice == invoice.stripe_invoice_id
        assert item.metadata["eventgate_invoice_line_id"] == str(line.pk)
    assert sorted(line.amount for line in invoice_item_lines(stripe_client, customer.id)) == [450, 4900]

    # localstripe has no finalize endpoint, so the invoice stays a draft there and here.
    assert (stripe_invoice.status, invoice.status) == ("draft", "draft")
    assert invoice.stripe_synced_at is not None and invoice.stripe_error == ""


def test_syncing_twice_creates_no_duplicates_in_stripe(stripe_settings, stripe_client, october_invoice):
    first = invoice_sync_stripe(invoice=october_invoice)
    item_ids = sorted(first.lines.values_list("stripe_invoice_item_id", flat=True))
    second = invoice_sync_stripe(invoice=october_invoice)

    assert second.stripe_invoice_id == first.stripe_invoice_id
    assert sorted(second.lines.values_list("stripe_invoice_item_id", flat=True)) == item_ids
    customer_id = second.account.stripe_customer_id
    assert len(invoice_item_lines(stripe_client, customer_id)) == 2
    assert len(stripe_client.v1.subscriptions.list(params={"customer": customer_id}).data) == 1
    invoices = stripe_client.v1.invoices.list(params={"customer": customer_id}).data
    ours = [i.id for i in invoices if (i.description or "").startswith("Eventgate usage")]
    assert ours == [first.stripe_invoice_id]


def test_next_period_reuses_the_customer_and_its_subscription(
    stripe_settings, stripe_client, bob_subscription, record_usage, october_invoice
):
    invoice_sync_stripe(invoice=october_invoice)
    account = BillingAccount.objects.get(pk=october_invoice.account_id)
    record_usage(bob_subscription, datetime(2026, 11, 2, tzinfo=UTC), 500)
    # November has not ended when this is written: close it early on purpose.
    [november] = invoice_period_close(period_start=NOVEMBER[0], period_end=NOVEMBER[1], allow_open=True)

    november = invoice_sync_stripe(invoice=november)

    assert BillingAccount.objects.get(pk=account.pk).stripe_customer_id == account.stripe_customer_id
    subscriptions = stripe_client.v1.subscriptions.list(params={"customer": account.stripe_customer_id}).data
    assert [s.id for s in subscriptions] == [account.stripe_subscription_id]
    assert stripe_client.v1.invoices.retrieve(november.stripe_invoice_id).subtotal == 4900


def test_unreachable_stripe_keeps_the_ledger_and_records_the_error(
    stripe_settings, stripe_client, localstripe, october_invoice
):
    stripe_settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # discard port: nothing listens

    with pytest.raises(stripe.APIConnectionError):
        invoice_sync_stripe(invoice=october_invoice)

    invoice = Invoice.objects.get(pk=october_invoice.pk)
    assert "APIConnectionError" in invoice.stripe_error
    assert invoice.stripe_synced_at is None and invoice.stripe_invoice_id == ""
    assert invoice.total_minor == 5350 and invoice.lines.count() == 2

    stripe_settings.STRIPE_API_BASE = localstripe  # Stripe is back: the retry succeeds
    invoice = invoice_sync_stripe(invoice=invoice)
    assert invoice.stripe_error == "" and invoice.stripe_synced_at is not None
    assert stripe_client.v1.invoices.retrieve(invoice.stripe_invoice_id).subtotal == 5350


def test_idempotency_keys_come_from_ledger_rows_and_travel_as_metadata(
    stripe_settings, stripe_client, bob_subscription, october_invoice
):
    invoice = invoice_sync_stripe(invoice=october_invoice)

    account, sub = invoice.account_id, f"{bob_subscription.pk}-p{bob_subscription.plan_id}"
    period = "2026100100-2026110100"
    assert set(StripeRequest.objects.values_list("idempotency_key", "object_type")) == {
        (f"eg-customer-{account}", "customer"),
        (f"eg-subscription-{account}", "subscription"),
        (f"eg-ii-{sub}-{period}-base_fee", "invoiceitem"),
        (f"eg-ii-{sub}-{period}-events", "invoiceitem"),
        (f"eg-invoice-{account}-{period}-usd", "invoice"),
    }
    assert not StripeRequest.objects.filter(stripe_id="").exists()
    for line in invoice.lines.all():
        item = stripe_client.v1.invoice_items.retrieve(line.stripe_invoice_item_id)
        assert item.metadata["eventgate_key"] == f"eg-ii-{sub}-{period}-{line.kind}"


def test_a_sync_that_read_an_older_status_never_undoes_a_payment_from_a_webhook(
    stripe_settings, october_invoice
):
    invoice = invoice_sync_stripe(invoice=october_invoice)
    # Stripe says the invoice was paid (the webhook arrives while Stripe still shows it as a draft
    # here: localstripe's invoice stays one, as a slow read of real Stripe's would).
    paid_at = datetime(2026, 11, 2, 8, 30, tzinfo=UTC)
    event, _ = stripe_event_record(
        event_id="evt_paid_meanwhile",
        type="invoice.paid",
        payload={
            "id": "evt_paid_meanwhile",
            "type": "invoice.paid",
            "data": {
                "object": {
                    "object": "invoice",
                    "id": invoice.stripe_invoice_id,
                    "status": "paid",
                    "status_transitions": {"paid_at": int(paid_at.timestamp())},
                }
            },
        },
        stripe_created=paid_at,
    )
    stripe_event_process(event_pk=event.pk)
    assert Invoice.objects.get(pk=invoice.pk).status == "paid"

    invoice = invoice_sync_stripe(invoice=invoice)

    assert (invoice.status, invoice.paid_at) == ("paid", paid_at)
    assert invoice.stripe_synced_at is not None and invoice.stripe_error == ""


def test_a_later_sync_still_moves_the_status_forward(stripe_settings, stripe_client, bob, october_invoice):
    invoice = invoice_sync_stripe(invoice=october_invoice)
    assert invoice.status == "draft"  # no card: nothing charged
    payment_method_attach(account=billing_account_get(user=bob), payment_method_id="pm_card_visa")
    stripe_client.v1.invoices.pay(invoice.stripe_invoice_id)  # the consumer pays on Stripe's page

    invoice = invoice_sync_stripe(invoice=invoice)

    assert invoice.status == "paid" and invoice.paid_at is not None


def test_without_the_zero_amount_subscription_no_stripe_subscription_is_made(
    stripe_settings, stripe_client, bob, october_invoice
):
    stripe_settings.STRIPE_ZERO_AMOUNT_SUBSCRIPTION = False  # as with real Stripe

    # localstripe cannot invoice a customer without a subscription (the reason the zero-amount one
    # exists); real Stripe takes the pending invoice items into the invoice.
    with pytest.raises(stripe.InvalidRequestError, match="No upcoming invoices"):
        invoice_sync_stripe(invoice=october_invoice)

    account = BillingAccount.objects.get(owner=bob)
    assert account.stripe_customer_id and account.stripe_subscription_id == ""
    listing = stripe_client.v1.subscriptions.list(params={"customer": account.stripe_customer_id})
    assert listing.data == []
    assert not StripeRequest.objects.filter(idempotency_key=subscription_key(account.pk)).exists()
    pending = stripe_client.v1.invoice_items.list(params={"customer": account.stripe_customer_id}).data
    assert sorted((item.amount, item.invoice) for item in pending) == [(450, None), (4900, None)]


@pytest.mark.parametrize(("base", "expected"), [("", False), ("http://127.0.0.1:8420", True)])
def test_the_zero_amount_subscription_is_on_by_default_only_for_a_fake_stripe_server(
    settings, base, expected
):
    settings.STRIPE_ZERO_AMOUNT_SUBSCRIPTION = None  # unset in the environment
    settings.STRIPE_API_BASE = base

    assert stripe_sync.zero_amount_subscription_enabled() is expected
