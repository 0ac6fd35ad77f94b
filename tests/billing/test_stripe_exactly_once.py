"""Each ledger invoice reaches Stripe exactly once — after a real crash, a Stripe outage part way,
runs twice and concurrent runs — and is collected once (billing.stripe_sync).

Everything is checked by reading the objects back from a real localstripe: one customer, one
subscription, one invoice, and every invoice line as exactly one invoice item with the ledger's
amount. Crashes are real: the sync runs in a ``manage.py shell`` process that kills itself with
SIGKILL right after the Nth Stripe answer (``EVENTGATE_TEST_CRASH_AFTER_STRIPE_ANSWERS``), before
the answer is committed. Outages are real: a second localstripe of this module's own is stopped
(SIGSTOP) while a request is on its way, which it then handles once continued (SIGCONT) — Stripe
created the object, the answer was lost.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import stripe
from django.conf import settings
from django.db import connection

import billing.stripe_sync as stripe_sync
from billing.models import BillingAccount, Invoice, StripeRequest
from billing.payments import billing_account_get, invoicing_approve, payment_method_attach
from billing.services import invoice_period_close, issue_credit
from billing.stripe_sync import (
    CRASH_AFTER_ANSWERS_ENV,
    AccountSyncBusy,
    account_stripe_lock,
    customer_key,
    invoice_item_key,
    invoice_sync_stripe,
    subscription_key,
)
from billing.tasks import invoice_sync_task
from tests.billing.conftest import NOVEMBER, OCTOBER
from tests.factories import ApplicationFactory, SubscriptionFactory, UserFactory
from tests.fixtures.servers import server_env
from tests.fixtures.stripe import TEST_API_KEY, _free_port, _wait_until_answering

# Stripe objects are told apart by keys made of database ids, which SQLite reuses after each test's
# rollback while the session's localstripe keeps them; PostgreSQL sequences never go back.
pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="needs PostgreSQL (set DATABASE_URL; `make test` does)"
)

SEPTEMBER_15 = datetime(2026, 9, 15, tzinfo=UTC)
OCTOBER_3 = datetime(2026, 10, 3, 9, 15, tzinfo=UTC)


# --- reading Stripe back ----------------------------------------------------------------------------


@dataclass
class InStripe:
    """What Stripe holds for one billing account."""

    customers: list[str]
    subscriptions: list[str]
    invoices: dict[str, Any]  # Eventgate's invoices (not the zero subscription's own first one)
    items: list[tuple[str, int, str | None]]  # (eventgate_key, amount, invoice id or None if pending)
    charges: list[Any]


def in_stripe(client: stripe.StripeClient, account: BillingAccount) -> InStripe:
    customers = [
        c.id
        for c in client.v1.customers.list(
            params={"email": account.owner.email, "limit": 100}
        ).auto_paging_iter()
        if c.metadata.to_dict().get("eventgate_key") == customer_key(account.pk)
    ]
    state = InStripe(customers, [], {}, [], [])
    for customer in customers:
        listing = client.v1.subscriptions.list(params={"customer": customer, "status": "all", "limit": 100})
        state.subscriptions += [
            s.id
            for s in listing.auto_paging_iter()
            if s.metadata.to_dict().get("eventgate_key") == subscription_key(account.pk)
        ]
        for item in client.v1.invoice_items.list(
            params={"customer": customer, "limit": 100}
        ).auto_paging_iter():
            state.items.append((item.metadata.to_dict().get("eventgate_key"), item.amount, item.invoice))
        for invoice in client.v1.invoices.list(
            params={"customer": customer, "limit": 100}
        ).auto_paging_iter():
            if not (invoice.description or "").startswith("Eventgate usage"):
                continue
            state.invoices[invoice.id] = invoice
            for line in client.v1.invoices.line_items.list(
                invoice.id, params={"limit": 100}
            ).auto_paging_iter():
                if line.type == "invoiceitem":
                    state.items.append(
                        (line.metadata.to_dict().get("eventgate_key"), line.amount, invoice.id)
                    )
        state.charges += list(
            client.v1.charges.list(params={"customer": customer, "limit": 100}).auto_paging_iter()
        )
    return state


def assert_billed_once(client: stripe.StripeClient, *invoices: Invoice) -> InStripe:
    """One customer, one subscription, and per ledger invoice one Stripe invoice holding each of
    its lines as exactly one invoice item with the ledger's amount; nothing left pending."""
    account = BillingAccount.objects.get(pk=invoices[0].account_id)
    state = in_stripe(client, account)
    assert state.customers == [account.stripe_customer_id]
    assert state.subscriptions == [account.stripe_subscription_id]
    fresh = [Invoice.objects.get(pk=invoice.pk) for invoice in invoices]
    assert sorted(state.invoices) == sorted(invoice.stripe_invoice_id for invoice in fresh)
    counts = Counter(key for key, _, _ in state.items)
    assert all(count == 1 for count in counts.values()), f"invoice items billed twice: {counts}"
    expected = {}
    for invoice in fresh:
        for line in invoice.lines.all():
            expected[invoice_item_key(invoice, line)] = (line.amount_minor, invoice.stripe_invoice_id)
        assert state.invoices[invoice.stripe_invoice_id].subtotal == invoice.total_minor
        assert invoice.stripe_synced_at is not None and invoice.stripe_error == ""
    assert {key: (amount, on) for key, amount, on in state.items} == expected
    return state


# --- ledger fixtures ---------------------------------------------------------------------------------


def paid_subscription(owner, plan, name: str = "Trading bot"):
    return SubscriptionFactory(
        application=ApplicationFactory(owner=owner, name=name), plan=plan, created=SEPTEMBER_15
    )


def close_october() -> list[Invoice]:
    return sorted(invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1]), key=lambda i: i.pk)


@pytest.fixture
def october_with_credit(
    transactional_db, stripe_settings, bob_subscription, record_usage, admin_user
) -> Invoice:
    """Bob's October: $49.00 base fee, $4.50 for 12,345 events, and a $5.00 credit (a negative line)."""
    record_usage(bob_subscription, OCTOBER_3, 12_345, 1_234_500)
    account = billing_account_get(user=bob_subscription.application.owner)
    issue_credit(account=account, amount_minor=500, currency="usd", reason="Outage on Oct 2", by=admin_user)
    [invoice] = close_october()
    assert sorted(invoice.lines.values_list("amount_minor", flat=True)) == [-500, 450, 4900]
    return invoice


# --- 1. a real crash after Stripe answered -------------------------------------------------------------


def sync_in_a_process_that_crashes(
    invoice: Invoice, localstripe: str, after_answers: int
) -> subprocess.CompletedProcess:
    code = (
        "from billing.models import Invoice\n"
        "from billing.stripe_sync import invoice_sync_stripe\n"
        f"invoice_sync_stripe(invoice=Invoice.objects.get(pk={invoice.pk}))\n"
    )
    env = server_env(
        STRIPE_API_KEY=TEST_API_KEY,
        STRIPE_API_BASE=localstripe,
        **{CRASH_AFTER_ANSWERS_ENV: str(after_answers)},
    )
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# Stripe answers in order: customer (only without a card: adding one creates it), subscription,
# the base fee, events and credit invoice items, the invoice, the payment.
CRASH_POINTS = [
    pytest.param(False, 1, "customer", id="customer"),
    pytest.param(True, 1, "subscription", id="subscription"),
    pytest.param(True, 3, "invoiceitem", id="second-invoice-item"),
    pytest.param(True, 4, "invoiceitem", id="credit-invoice-item"),
    pytest.param(True, 5, "invoice", id="invoice"),
    pytest.param(True, 6, "invoice_payment", id="payment"),
]


@pytest.mark.parametrize(("with_card", "after_answers", "crashed_on"), CRASH_POINTS)
def test_crash_after_stripe_answered_but_before_the_ledger_commit_bills_once_on_retry(
    october_with_credit, localstripe, stripe_client, with_card, after_answers, crashed_on
):
    invoice = october_with_credit
    account = BillingAccount.objects.get(pk=invoice.account_id)
    if with_card:
        payment_method_attach(account=account, payment_method_id="pm_card_visa")

    crashed = sync_in_a_process_that_crashes(invoice, localstripe, after_answers)

    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    # Stripe answered, and the answer died with the process: one write-ahead row without its id.
    [unanswered] = StripeRequest.objects.filter(answered_at__isnull=True)
    assert unanswered.object_type == crashed_on and unanswered.stripe_id == ""

    invoice = invoice_sync_stripe(invoice=invoice)

    state = assert_billed_once(stripe_client, invoice)
    assert invoice.total_minor == 4850
    if with_card:
        assert [(charge.amount, charge.status) for charge in state.charges] == [(4850, "succeeded")]
        assert (invoice.status, state.invoices[invoice.stripe_invoice_id].status) == ("paid", "paid")
        assert invoice.paid_at is not None
    assert (
        not StripeRequest.objects.filter(answered_at__isnull=True, stripe_id="")
        .exclude(object_type="invoice_payment")
        .exists()
    )


def test_a_later_invoice_pushes_first_the_one_a_crash_left_with_pending_items(
    october_with_credit, localstripe, stripe_client, bob_subscription, record_usage
):
    october = october_with_credit
    crashed = sync_in_a_process_that_crashes(october, localstripe, after_answers=3)  # its first invoice item
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    record_usage(bob_subscription, datetime(2026, 11, 2, tzinfo=UTC), 500)
    [november] = invoice_period_close(period_start=NOVEMBER[0], period_end=NOVEMBER[1], allow_open=True)

    # November's Stripe invoice would take in October's pending item: October goes first.
    invoice_sync_stripe(invoice=november)

    state = assert_billed_once(stripe_client, october, november)
    assert sorted(invoice.subtotal for invoice in state.invoices.values()) == [4850, 4900]


# --- 2. Stripe stops answering part way ---------------------------------------------------------------


@dataclass
class OwnLocalstripe:
    url: str
    process: subprocess.Popen[bytes]

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture
def own_localstripe(tmp_path: Path, stripe_settings) -> Iterator[OwnLocalstripe]:
    """A localstripe process of this test's own, which it may stop; settings point at it."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "localstripe.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("localstripe")), "--port", str(port), "--from-scratch"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = OwnLocalstripe(url, process)
    try:
        _wait_until_answering(url, process, log)
        stripe_settings.STRIPE_API_BASE = url
        yield server
    finally:
        server.resume()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class StopsStripeBeforeInvoiceItem(stripe.RequestsClient):
    """A real HTTP client that stops (SIGSTOP) the Stripe server just before sending invoice item
    create number ``n``: that request and every later one time out here, and the server handles
    them once it continues."""

    def __init__(self, server: OwnLocalstripe, n: int) -> None:
        super().__init__(timeout=1.5)
        self.server, self.n, self.items = server, n, 0

    def request(self, method: str, url: str, headers: Any, post_data: Any = None) -> Any:
        if method.lower() == "post" and url.endswith("/v1/invoiceitems"):
            self.items += 1
            if self.items == self.n:
                self.server.freeze()
        return super().request(method, url, headers, post_data)


def stopping_client(server: OwnLocalstripe, n: int) -> stripe.StripeClient:
    return stripe.StripeClient(
        TEST_API_KEY,
        base_addresses={"api": server.url},
        max_network_retries=0,
        http_client=StopsStripeBeforeInvoiceItem(server, n),
    )


def wait_until(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def test_partial_failure_across_three_subscriptions_of_one_account_bills_each_once(
    own_localstripe, bob, metered_plan, record_usage
):
    for n, name in enumerate(["Trading bot", "Backtester", "Alerts"]):
        record_usage(paid_subscription(bob, metered_plan, name), OCTOBER_3, 11_000 + n * 1_000)
    [invoice] = close_october()
    assert invoice.lines.count() == 6
    client = stripe.StripeClient(TEST_API_KEY, base_addresses={"api": own_localstripe.url})

    with pytest.raises(stripe.APIConnectionError):
        invoice_sync_stripe(invoice=invoice, client=stopping_client(own_localstripe, n=3))

    invoice.refresh_from_db()
    assert "APIConnectionError" in invoice.stripe_error and invoice.stripe_invoice_id == ""
    assert invoice.lines.exclude(stripe_invoice_item_id="").count() == 2
    own_localstripe.resume()
    customer = BillingAccount.objects.get(owner=bob).stripe_customer_id
    # Stripe did create the third item; its answer was lost.
    wait_until(
        lambda: len(client.v1.invoice_items.list(params={"customer": customer}).data) == 3,
        "localstripe handles the request it received while stopped",
    )

    assert_billed_once(client, invoice_sync_stripe(invoice=invoice))


def test_partial_failure_across_three_accounts_bills_each_once(
    own_localstripe, bob, carol, metered_plan, record_usage
):
    owners = [bob, carol, UserFactory(email="dave@example.com")]
    for owner in owners:
        record_usage(paid_subscription(owner, metered_plan), OCTOBER_3, 12_345)
    invoices = sorted(close_october(), key=lambda invoice: owners.index(invoice.account.owner))
    stopping = stopping_client(own_localstripe, n=3)  # the first item of the second account

    failures = []
    for invoice in invoices:
        try:
            invoice_sync_stripe(invoice=invoice, client=stopping)
        except stripe.APIConnectionError:
            failures.append(invoice.account.owner.email)
    assert failures == ["carol@example.com", "dave@example.com"]

    own_localstripe.resume()
    client = stripe.StripeClient(TEST_API_KEY, base_addresses={"api": own_localstripe.url})
    wait_until(
        lambda: len(client.v1.customers.list(params={"email": "dave@example.com"}).data) == 1,
        "localstripe creates dave's customer, whose answer was lost",
    )
    for invoice in invoices:
        invoice_sync_stripe(invoice=invoice)

    for invoice in invoices:
        assert_billed_once(client, invoice)


# --- 3. twice, and concurrently ------------------------------------------------------------------------


def run_concurrently(*invoices: Invoice) -> list[BaseException]:
    """Sync each invoice in its own thread (its own database connection), all at once."""
    barrier, errors = threading.Barrier(len(invoices)), []

    def sync(invoice: Invoice) -> None:
        try:
            barrier.wait()
            invoice_sync_stripe(invoice=invoice)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sync, args=(invoice,)) for invoice in invoices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


def test_two_concurrent_syncs_of_one_invoice_create_one_set_of_objects(
    transactional_db, stripe_settings, stripe_client, bob_subscription, record_usage
):
    record_usage(bob_subscription, OCTOBER_3, 12_345)
    [invoice] = close_october()

    assert run_concurrently(invoice, invoice) == []
    invoice_sync_stripe(invoice=invoice)  # and once more, afterwards

    assert_billed_once(stripe_client, invoice)


def test_concurrent_syncs_of_two_invoices_of_one_account_keep_their_items_apart(
    transactional_db, stripe_settings, stripe_client, bob_subscription, record_usage
):
    record_usage(bob_subscription, OCTOBER_3, 12_345)
    [october] = close_october()
    record_usage(bob_subscription, datetime(2026, 11, 2, tzinfo=UTC), 500)
    [november] = invoice_period_close(period_start=NOVEMBER[0], period_end=NOVEMBER[1], allow_open=True)

    assert run_concurrently(october, november, october, november) == []

    state = assert_billed_once(stripe_client, october, november)
    assert sorted(invoice.subtotal for invoice in state.invoices.values()) == [4900, 5350]


def test_a_sync_waits_for_the_one_holding_the_account_and_gives_up_after_a_while(
    transactional_db, stripe_settings, stripe_client, bob_subscription, record_usage, monkeypatch
):
    record_usage(bob_subscription, OCTOBER_3, 12_345)
    [invoice] = close_october()
    monkeypatch.setattr(stripe_sync, "ACCOUNT_LOCK_WAIT_SECONDS", 0.5)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with account_stripe_lock(invoice.account_id):
                held.set()
                release.wait(30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        with pytest.raises(AccountSyncBusy):
            invoice_sync_stripe(invoice=invoice)
        assert StripeRequest.objects.count() == 0  # nothing was sent to Stripe
    finally:
        release.set()
        holder.join(10)

    assert_billed_once(stripe_client, invoice_sync_stripe(invoice=invoice))


# --- 4. collection -------------------------------------------------------------------------------------


@pytest.fixture
def october(bob_subscription, record_usage) -> Invoice:
    record_usage(bob_subscription, OCTOBER_3, 12_345)
    [invoice] = close_october()
    return invoice


def test_a_card_on_file_pays_the_invoice_in_stripe(stripe_settings, stripe_client, bob, october):
    payment_method_attach(account=billing_account_get(user=bob), payment_method_id="pm_card_visa")

    invoice = invoice_sync_stripe(invoice=october)

    state = assert_billed_once(stripe_client, invoice)
    assert state.invoices[invoice.stripe_invoice_id].status == "paid"
    assert [(charge.amount, charge.status) for charge in state.charges] == [(5350, "succeeded")]
    assert invoice.status == "paid" and invoice.paid_at is not None and invoice.payment_failed_at is None


def test_a_declined_card_records_the_failure_and_the_task_does_not_fail(
    stripe_settings, stripe_client, celery_eager, bob, october
):
    payment_method_attach(
        account=billing_account_get(user=bob), payment_method_id="pm_card_chargeCustomerFail"
    )

    invoice_sync_task.delay(october.pk).get()  # re-raises anything that escaped the task

    invoice = Invoice.objects.get(pk=october.pk)
    assert invoice.payment_failed_at is not None and invoice.status == "open" and invoice.paid_at is None
    state = assert_billed_once(stripe_client, invoice)
    assert state.invoices[invoice.stripe_invoice_id].status == "open"
    assert [(charge.status, charge.failure_code) for charge in state.charges] == [("failed", "card_declined")]

    invoice_sync_task.delay(october.pk).get()  # a rerun refreshes; retrying the card is dunning's
    assert len(in_stripe(stripe_client, invoice.account).charges) == 1


def test_approved_invoicing_sends_the_invoice_instead_of_charging(
    stripe_settings, stripe_client, bob, admin_user, october
):
    invoicing_approve(account=billing_account_get(user=bob), by=admin_user)

    invoice = invoice_sync_stripe(invoice=october)

    state = assert_billed_once(stripe_client, invoice)
    assert state.invoices[invoice.stripe_invoice_id].collection_method == "send_invoice"
    assert state.charges == [] and invoice.payment_failed_at is None
