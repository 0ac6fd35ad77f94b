"""Push ledger invoices to Stripe exactly once, or to a Stripe-compatible server such as localstripe.

Stripe mirrors Eventgate's ledger (``billing.models``), never the other way round. Per invoice:

1. the billing account's Stripe customer, created once (Stripe API reference: Customers › Create);
2. only on a fake server: a zero-amount monthly subscription for the customer, created once.
   localstripe refuses ``Invoice.create`` for a customer without a subscription (and, when a
   subscription is created, pulls the customer's pending invoice items into that subscription's
   first invoice — so it must exist before any invoice item). It uses one product and one
   zero-amount plan per currency with fixed ids (Products / Plans › Create), created on first use.
   Real Stripe needs none, and would send the customer a $0 invoice (and its email) every month
   for it: ``STRIPE_ZERO_AMOUNT_SUBSCRIPTION`` turns it on, by default only when
   ``STRIPE_API_BASE`` points at a fake server (``zero_amount_subscription_enabled``);
3. one invoice item per invoice line — every kind alike, credit lines with a negative ``amount``
   (Invoice Items › Create: "a negative amount creates a credit") — then one invoice with
   ``pending_invoice_items_behavior=include`` (Invoices › Create), which takes in the customer's
   pending invoice items. Without a subscription (real Stripe) the invoice items are created
   pending, attached to no invoice or subscription, and this invoice is what takes them in;
4. ``collection_method=send_invoice`` for accounts with admin-approved invoicing (Invoices ›
   Update, on the draft: localstripe answers 500 to that parameter on create);
5. finalization, in one place: ``finalize_invoice`` (Invoices › Finalize an invoice);
6. collection: accounts with a payment method are charged (Invoices › Pay an invoice); a declined
   card is not a sync failure — ``Invoice.payment_failed_at`` is set, the invoice stays open and the
   ``invoice.payment_failed`` webhook drives dunning. Approved invoicing: Invoices › Send.

Exactly once
------------
Every create call (customer, subscription, invoice item, invoice, and the payment) carries an
idempotency key derived from ledger rows, never from the run (see the ``*_key`` functions), and is
written ahead in ``StripeRequest``: the row is committed *before* the call, and the returned id is
committed in its own short transaction right *after* it, together with the ledger's copy of the id
(``BillingAccount.stripe_customer_id``, ``InvoiceLine.stripe_invoice_item_id``, ...). A row
without an id means an earlier run may have crashed after Stripe created the object: the retry
looks the object up by its key before creating it — customers by email and metadata
``eventgate_key``, subscriptions by customer and metadata, invoice items by metadata among the
customer's pending items and invoice lines, invoices by metadata or by the keys of the invoice
items they took in (localstripe drops invoice metadata but keeps invoice items'). Real Stripe also
replays an idempotency key for 24 hours; localstripe ignores them, so there the look-up is what
prevents duplicates. No transaction spans a Stripe call: ``invoice_sync_stripe`` must run outside
``transaction.atomic`` (the write-ahead rows are ``durable``, so a caller's transaction is refused).

One billing account at a time
-----------------------------
Creating a Stripe invoice takes in *all* the customer's pending invoice items, so two syncs of one
account must never interleave. ``account_stripe_lock`` serializes them with a lock that no crash can
leave behind and that is held across no database transaction: on PostgreSQL a session-level
advisory lock (``pg_try_advisory_lock``), released by the server when the process's connection
dies; on SQLite (``make run``, one machine) an ``flock`` on a file per account beside the database,
released by the kernel when the process dies. A row lock (``select_for_update``) would have to stay
inside one transaction across the HTTP calls — the design this replaces — and a lease column would
need a migration and a timeout guess. (Behind a transaction-pooling PgBouncer, session advisory
locks do not work: use a session pool.) A sync also first pushes another ledger invoice of the
account whose invoice items wait in Stripe (a crashed run's), so they never land on this invoice.

Test-only crash point: with ``EVENTGATE_TEST_CRASH_AFTER_STRIPE_ANSWERS=N`` in the environment, the
process kills itself with SIGKILL right after the Nth Stripe create call answered, before the
answer is committed (tests/billing/test_stripe_exactly_once.py). Never set it in production.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import stripe
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from billing.models import BillingAccount, Invoice, InvoiceLine, StripeRequest

logger = logging.getLogger(__name__)

PRODUCT_ID = "eventgate-usage"
ZERO_PLAN_ID = "eventgate-usage-zero-{currency}"
# Days a consumer with approved invoicing has to pay (Invoices › Create: days_until_due).
INVOICE_DAYS_UNTIL_DUE = 30
# How long a sync waits for another process's sync of the same billing account (seconds).
ACCOUNT_LOCK_WAIT_SECONDS = 30.0
CRASH_AFTER_ANSWERS_ENV = "EVENTGATE_TEST_CRASH_AFTER_STRIPE_ANSWERS"
# Network errors, 5xx answers and rate limits are worth retrying; a rejected request is not.
TRANSIENT_ERRORS: tuple[type[stripe.StripeError], ...] = (
    stripe.APIConnectionError,
    stripe.APIError,
    stripe.RateLimitError,
)
# Stripe's invoice statuses in the order an invoice moves through them: a status only replaces
# one of lower rank, so a late ``invoice.finalized`` or a sync's stale read never reopens a paid
# invoice (Stripe API reference: Invoices › The invoice object › status; paid and void are final).
# Used by the sync (``_record_stripe_state``) and the webhooks (``billing.webhooks``).
STATUS_RANK = {
    Invoice.Status.DRAFT: 0,
    Invoice.Status.OPEN: 1,
    Invoice.Status.UNCOLLECTIBLE: 2,
    Invoice.Status.PAID: 3,
    Invoice.Status.VOID: 3,
}
# Key space of the PostgreSQL advisory locks ("EGST"), so they never collide with other users'.
_ADVISORY_NAMESPACE = 0x45475354

T = TypeVar("T")


class StripeNotConfigured(ImproperlyConfigured):
    """Raised when a Stripe call is attempted without ``settings.STRIPE_API_KEY``."""


class AccountSyncBusy(Exception):
    """Another process held the billing account's Stripe lock for ``ACCOUNT_LOCK_WAIT_SECONDS``;
    try again later (the Celery task retries)."""


def zero_amount_subscription_enabled() -> bool:
    """Whether each Stripe customer gets the zero-amount subscription localstripe needs (module
    docstring, step 2): ``settings.STRIPE_ZERO_AMOUNT_SUBSCRIPTION``, by default true exactly when
    ``STRIPE_API_BASE`` is set (a fake Stripe server)."""
    configured = getattr(settings, "STRIPE_ZERO_AMOUNT_SUBSCRIPTION", None)
    return bool(settings.STRIPE_API_BASE) if configured is None else bool(configured)


def stripe_enabled() -> bool:
    """True when ``settings.STRIPE_API_KEY`` is set: only then does Eventgate talk to Stripe."""
    return bool(settings.STRIPE_API_KEY)


def stripe_client() -> stripe.StripeClient:
    """A Stripe client for ``settings.STRIPE_API_KEY``, pointed at ``settings.STRIPE_API_BASE``
    (e.g. localstripe's ``http://127.0.0.1:8420``) when set. Raises ``StripeNotConfigured``.

    Without network retries: stripe-python would resend a create whose answer was lost, which
    localstripe (no idempotency keys) turns into a duplicate; our retry looks the object up first.
    """
    if not stripe_enabled():
        raise StripeNotConfigured("STRIPE_API_KEY is not set; Stripe sync is off.")
    base = settings.STRIPE_API_BASE.rstrip("/")
    return stripe.StripeClient(
        settings.STRIPE_API_KEY, base_addresses={"api": base} if base else None, max_network_retries=0
    )


# --- idempotency keys: derived from ledger rows only ---------------------------------------------


def _hour(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H")


def customer_key(account_id: int) -> str:
    """``eg-customer-<account id>``: the billing account's Stripe customer."""
    return f"eg-customer-{account_id}"


def subscription_key(account_id: int) -> str:
    """``eg-subscription-<account id>``: the account's zero-amount Stripe subscription."""
    return f"eg-subscription-{account_id}"


def invoice_key(invoice: Invoice) -> str:
    """``eg-invoice-<account id>-<period start>-<period end>-<currency>`` (hours as %Y%m%d%H,
    UTC): the ledger invoice's unique (account, period, currency). Finalize, pay and send use it
    with ``-finalize``, ``-pay`` and ``-send`` appended."""
    start, end = _hour(invoice.period_start), _hour(invoice.period_end)
    return f"eg-invoice-{invoice.account_id}-{start}-{end}-{invoice.currency.lower()}"


def invoice_item_key(invoice: Invoice, line: InvoiceLine) -> str:
    """``eg-ii-<subscription id>-p<plan id>-<period start>-<period end>-<kind>`` for a
    subscription's line (one line per plan and kind and period: a subscription that changed plan
    in the period has lines at each), or ``eg-ii-credit-<credit id>`` for a credit line."""
    if line.credit_id is not None:
        return f"eg-ii-credit-{line.credit_id}"
    start, end = _hour(invoice.period_start), _hour(invoice.period_end)
    return f"eg-ii-{line.subscription_id}-p{line.plan_id}-{start}-{end}-{line.kind}"


# --- per-account lock ------------------------------------------------------------------------------


@contextmanager
def account_stripe_lock(account_id: int, *, wait: float | None = None) -> Iterator[None]:
    """Hold the billing account's Stripe lock (see the module docstring for why this kind):
    waits up to ``wait`` seconds (default ``ACCOUNT_LOCK_WAIT_SECONDS``) for another holder,
    then raises ``AccountSyncBusy``. Take it once per operation: it is not re-entrant."""
    if connection.vendor == "postgresql":
        acquire, release, abandon = _advisory_lock(account_id)
    else:
        acquire, release, abandon = _file_lock(account_id)
    deadline = time.monotonic() + (ACCOUNT_LOCK_WAIT_SECONDS if wait is None else wait)
    while not acquire():
        if time.monotonic() >= deadline:
            abandon()
            raise AccountSyncBusy(
                f"Billing account {account_id} is being synced with Stripe by another process."
            )
        time.sleep(0.1)
    try:
        yield
    finally:
        release()


_Lock = tuple[Callable[[], bool], Callable[[], None], Callable[[], None]]  # acquire, release, abandon


def _advisory_lock(account_id: int) -> _Lock:
    key = (_ADVISORY_NAMESPACE << 32) | (account_id & 0xFFFFFFFF)

    def acquire() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
            return bool(cursor.fetchone()[0])

    def release() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [key])

    return acquire, release, lambda: None


def _file_lock(account_id: int) -> _Lock:
    name = str(connection.settings_dict["NAME"])
    directory = Path(name).parent if os.path.isabs(name) else Path(tempfile.gettempdir())
    path = directory / "stripe-locks" / f"account-{account_id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    # One open file description per holder: flock excludes other threads of this process too.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def acquire() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release() -> None:
        os.close(fd)  # closing the descriptor releases the lock

    return acquire, release, release


# --- write-ahead log of create calls ------------------------------------------------------------

_answers = 0


def _after_stripe_answer() -> None:
    """The test-only crash point (``CRASH_AFTER_ANSWERS_ENV``): SIGKILL after the Nth answer."""
    global _answers
    limit = os.environ.get(CRASH_AFTER_ANSWERS_ENV)
    if not limit:
        return
    _answers += 1
    if _answers >= int(limit):
        logger.warning("Test crash point: killing process %s after Stripe answer %s", os.getpid(), _answers)
        os.kill(os.getpid(), signal.SIGKILL)


def _request_begin(key: str, object_type: str) -> tuple[StripeRequest, bool]:
    """Commit the write-ahead row for ``key`` (or find the existing one); ``(row, created)``."""
    with transaction.atomic(durable=True):
        return StripeRequest.objects.get_or_create(idempotency_key=key, defaults={"object_type": object_type})


def _request_complete(request: StripeRequest, stripe_id: str, record: Callable[[str], None]) -> None:
    """Commit the answer: the Stripe id on the write-ahead row and in the ledger (``record``)."""
    with transaction.atomic(durable=True):
        StripeRequest.objects.filter(pk=request.pk).update(stripe_id=stripe_id, answered_at=timezone.now())
        record(stripe_id)


def _create_once(
    *,
    key: str,
    object_type: str,
    find: Callable[[], str | None],
    create: Callable[[], Any],
    record: Callable[[str], None],
) -> str:
    """The Stripe id of the object ``key`` stands for, created at most once across runs and
    crashes: an answered write-ahead row gives it; an unanswered one (an earlier run died or lost
    the answer) means the object may exist, so ``find()`` looks for it first; else ``create()``."""
    request, created = _request_begin(key, object_type)
    if request.stripe_id:
        with transaction.atomic(durable=True):
            record(request.stripe_id)
        return request.stripe_id
    stripe_id = None if created else find()
    if stripe_id is None:
        stripe_id = create().id
        _after_stripe_answer()
    else:
        logger.info("Stripe %s %s found by its key %s after an unfinished run", object_type, stripe_id, key)
    _request_complete(request, stripe_id, record)
    return stripe_id


def _data(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj or {})


def _eventgate_key(obj: Any) -> str | None:
    return (_data(obj).get("metadata") or {}).get("eventgate_key")


# --- the sync ----------------------------------------------------------------------------------------


def invoice_sync_stripe(*, invoice: Invoice, client: stripe.StripeClient | None = None) -> Invoice:
    """Push ``invoice`` to Stripe (customer, invoice items, invoice, finalization, collection);
    returns it reloaded.

    Safe to run again at any time, twice at once, or after a crash at any point: each Stripe
    object is created once (module docstring). An invoice already pushed only has its status,
    ``paid_at`` and ``hosted_invoice_url`` refreshed from Stripe; one marked synced without a
    Stripe invoice (settled outside Stripe) is left alone. Must be called outside any
    transaction (``RuntimeError`` otherwise).

    On a Stripe error the error message is committed to ``Invoice.stripe_error`` and the
    ``stripe.StripeError`` re-raised for the caller (the Celery task) to retry; a declined card is
    not an error (``payment_failed_at``). Raises ``AccountSyncBusy`` when another process syncs
    the same billing account for too long, ``StripeNotConfigured`` without ``STRIPE_API_KEY``.
    """
    client = client or stripe_client()
    with account_stripe_lock(invoice.account_id):
        invoice = Invoice.objects.select_related("account__owner").get(pk=invoice.pk)
        try:
            _push_invoice(client=client, invoice=invoice, push_earlier=True)
        except stripe.StripeError as exc:
            message = f"{type(exc).__name__}: {exc}"[:2000]
            Invoice.objects.filter(pk=invoice.pk).update(stripe_error=message)
            logger.warning("Stripe sync of invoice %s failed: %s", invoice.pk, message)
            raise
    return Invoice.objects.select_related("account__owner").get(pk=invoice.pk)


def _push_invoice(*, client: stripe.StripeClient, invoice: Invoice, push_earlier: bool) -> None:
    if invoice.stripe_synced_at is not None and not invoice.stripe_invoice_id:
        return  # settled outside Stripe (e.g. demo history): nothing to push or refresh
    account = invoice.account
    customer_id = _customer_ensure(client=client, account=account)
    if zero_amount_subscription_enabled():
        _subscription_ensure(client=client, account=account, currency=invoice.currency)
    if not invoice.stripe_invoice_id:
        if push_earlier:
            _push_invoices_with_pending_items(client=client, invoice=invoice, customer_id=customer_id)
        lines = list(invoice.lines.order_by("pk"))
        for line in lines:
            if not line.stripe_invoice_item_id:
                _invoice_item_ensure(client=client, invoice=invoice, line=line, customer_id=customer_id)
        item_keys = {invoice_item_key(invoice, line) for line in lines}
        _invoice_ensure(client=client, invoice=invoice, customer_id=customer_id, item_keys=item_keys)

    stripe_invoice = client.v1.invoices.retrieve(invoice.stripe_invoice_id)
    if invoice.stripe_synced_at is None:
        stripe_invoice = _collection_method_set(client=client, account=account, stripe_invoice=stripe_invoice)
        stripe_invoice = finalize_invoice(
            client=client,
            stripe_invoice=stripe_invoice,
            ledger_invoice_id=invoice.pk,
            key=invoice_key(invoice),
        )
        stripe_invoice = _collect(
            client=client, account=account, invoice=invoice, stripe_invoice=stripe_invoice
        )
    _record_stripe_state(invoice=invoice, stripe_invoice=stripe_invoice)


def _record_stripe_state(*, invoice: Invoice, stripe_invoice: Any) -> None:
    """Mirror Stripe's status, payment time and hosted page on the ledger invoice; mark it synced.

    One UPDATE of only these fields, so a webhook's concurrent update of others is kept; and the
    status only moves forward (``STATUS_RANK``), decided by the database at the moment of the
    update: a status read from Stripe before a webhook marked the invoice paid never turns it back
    to open, and ``paid_at`` is only written with the move to paid."""
    data = _data(stripe_invoice)
    fields: dict[str, Any] = {"stripe_synced_at": timezone.now(), "stripe_error": ""}
    status = data.get("status")
    if status in Invoice.Status.values:
        behind = [value for value, rank in STATUS_RANK.items() if rank < STATUS_RANK[status]]
        moves = Q(status__in=behind)
        fields["status"] = Case(When(moves, then=Value(status)), default=F("status"))
        if status == Invoice.Status.PAID:
            paid_at = (data.get("status_transitions") or {}).get("paid_at")
            paid = datetime.fromtimestamp(paid_at, UTC) if paid_at else timezone.now()
            fields["paid_at"] = Case(When(moves, then=Value(paid)), default=F("paid_at"))
    if data.get("hosted_invoice_url"):
        fields["hosted_invoice_url"] = data["hosted_invoice_url"]
    subtotal = data.get("subtotal")
    if subtotal != invoice.total_minor:
        # Pending items of the customer that are not ours would end up on this invoice. Keep the
        # ids, but leave a message an operator sees in the admin.
        fields["stripe_error"] = (
            f"Stripe invoice {stripe_invoice.id} subtotal {subtotal} "
            f"differs from the ledger total {invoice.total_minor}."
        )
        logger.error("Invoice %s: %s", invoice.pk, fields["stripe_error"])
    Invoice.objects.filter(pk=invoice.pk).update(**fields)


def _push_invoices_with_pending_items(
    *, client: stripe.StripeClient, invoice: Invoice, customer_id: str
) -> None:
    """Push first any other ledger invoice of the account whose invoice items already wait in
    Stripe (an earlier run died between its items and its invoice): creating this invoice would
    take them in. Afterwards at most one ledger invoice has pending items in Stripe at a time."""
    other_ids = set()
    for item in client.v1.invoice_items.list(
        params={"customer": customer_id, "limit": 100}
    ).auto_paging_iter():
        data = _data(item)
        owner = (data.get("metadata") or {}).get("eventgate_invoice_id", "")
        if not data.get("invoice") and owner.isdigit() and int(owner) != invoice.pk:
            other_ids.add(int(owner))
    others = Invoice.objects.filter(pk__in=other_ids, account_id=invoice.account_id, stripe_invoice_id="")
    for other in others.select_related("account__owner").order_by("pk"):
        logger.info(
            "Invoice %s: pushing invoice %s first, its invoice items are pending", invoice.pk, other.pk
        )
        _push_invoice(client=client, invoice=other, push_earlier=False)


def finalize_invoice(
    *, client: stripe.StripeClient, stripe_invoice: Any, ledger_invoice_id: int, key: str | None = None
) -> Any:
    """Finalize a draft Stripe invoice so it can be paid; returns the (possibly updated) invoice.

    The one place Eventgate finalizes invoices (Stripe API reference: Invoices › Finalize an
    invoice), with the idempotency key ``<invoice key>-finalize`` (``invoice_key``; the ledger id
    when ``key`` is not given). Finalizing is naturally idempotent: only drafts are finalized.
    Servers without the endpoint — localstripe answers 404 with a non-JSON body, which
    stripe-python raises as ``stripe.APIError`` — leave the invoice a draft (localstripe finalizes
    when paying); real Stripe's 404s are JSON ``InvalidRequestError``s and propagate.
    """
    if getattr(stripe_invoice, "status", None) != "draft":
        return stripe_invoice
    try:
        return client.v1.invoices.finalize_invoice(
            stripe_invoice.id,
            options={"idempotency_key": f"{key or f'invoice-{ledger_invoice_id}'}-finalize"},
        )
    except stripe.APIError as exc:
        if exc.http_status != 404:
            raise
        logger.debug("Stripe server has no finalize endpoint; invoice %s stays a draft", stripe_invoice.id)
        return stripe_invoice


def _customer_ensure(*, client: stripe.StripeClient, account: BillingAccount) -> str:
    """The account's Stripe customer id, created once. Call with the account's lock held."""
    if account.stripe_customer_id:
        return account.stripe_customer_id
    key, email = customer_key(account.pk), account.owner.email

    def find() -> str | None:
        customers = client.v1.customers.list(params={"email": email, "limit": 100}).auto_paging_iter()
        return next((customer.id for customer in customers if _eventgate_key(customer) == key), None)

    def create() -> Any:
        return client.v1.customers.create(
            params={
                "email": email,
                "metadata": {"eventgate_key": key, "eventgate_account_id": str(account.pk)},
            },
            options={"idempotency_key": key},
        )

    def record(stripe_id: str) -> None:
        BillingAccount.objects.filter(pk=account.pk).update(stripe_customer_id=stripe_id)
        account.stripe_customer_id = stripe_id

    return _create_once(key=key, object_type="customer", find=find, create=create, record=record)


def customer_ensure(*, account: BillingAccount, client: stripe.StripeClient | None = None) -> str:
    """The billing account's Stripe customer id, creating the customer once (Customers › Create)
    under the account's Stripe lock. For callers outside a sync (``billing.payments``); must run
    outside a transaction. Raises ``stripe.StripeError``, ``AccountSyncBusy``,
    ``StripeNotConfigured``."""
    client = client or stripe_client()
    with account_stripe_lock(account.pk):
        account.refresh_from_db(fields=["stripe_customer_id"])
        return _customer_ensure(client=client, account=account)


def _subscription_ensure(*, client: stripe.StripeClient, account: BillingAccount, currency: str) -> str:
    if account.stripe_subscription_id:
        return account.stripe_subscription_id
    plan_id = _ensure_zero_plan(client=client, currency=currency)
    key, customer_id = subscription_key(account.pk), account.stripe_customer_id

    def find() -> str | None:
        listing = client.v1.subscriptions.list(
            params={"customer": customer_id, "status": "all", "limit": 100}
        )
        return next((sub.id for sub in listing.auto_paging_iter() if _eventgate_key(sub) == key), None)

    def create() -> Any:
        return client.v1.subscriptions.create(
            params={
                "customer": customer_id,
                "items": [{"plan": plan_id}],  # type: ignore[list-item]  # legacy key localstripe understands
                "metadata": {"eventgate_key": key, "eventgate_account_id": str(account.pk)},
            },
            options={"idempotency_key": key},
        )

    def record(stripe_id: str) -> None:
        BillingAccount.objects.filter(pk=account.pk).update(stripe_subscription_id=stripe_id)
        account.stripe_subscription_id = stripe_id

    return _create_once(key=key, object_type="subscription", find=find, create=create, record=record)


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


def _invoice_lines(client: stripe.StripeClient, stripe_invoice: Any) -> Iterator[dict[str, Any]]:
    """Every line of a Stripe invoice as a dict (the invoice embeds only the first few)."""
    listing = client.v1.invoices.line_items.list(stripe_invoice.id, params={"limit": 100})
    for line in listing.auto_paging_iter():
        yield _data(line)


def _line_invoice_item_id(line: dict[str, Any]) -> str | None:
    """The invoice item behind an invoice line: ``invoice_item`` (localstripe, older API
    versions) or ``parent.invoice_item_details.invoice_item`` (API 2025-03-31 and later)."""
    details = ((line.get("parent") or {}).get("invoice_item_details")) or {}
    return line.get("invoice_item") or details.get("invoice_item")


def _find_invoice_item(client: stripe.StripeClient, customer_id: str, key: str) -> str | None:
    """The customer's invoice item whose metadata ``eventgate_key`` is ``key``: among its listed
    invoice items (Stripe lists all; localstripe only pending ones), then on its invoices."""
    items = client.v1.invoice_items.list(params={"customer": customer_id, "limit": 100}).auto_paging_iter()
    for item in items:
        if _eventgate_key(item) == key:
            return item.id
    for stripe_invoice in client.v1.invoices.list(
        params={"customer": customer_id, "limit": 100}
    ).auto_paging_iter():
        for line in _invoice_lines(client, stripe_invoice):
            if (line.get("metadata") or {}).get("eventgate_key") == key:
                return _line_invoice_item_id(line)
    return None


def _invoice_item_ensure(
    *, client: stripe.StripeClient, invoice: Invoice, line: InvoiceLine, customer_id: str
) -> str:
    key = invoice_item_key(invoice, line)
    metadata = {
        "eventgate_key": key,
        "eventgate_invoice_id": str(invoice.pk),
        "eventgate_invoice_line_id": str(line.pk),
        "eventgate_line_kind": line.kind,
        "events": str(line.events),
        "bytes": str(line.bytes),
    }
    if line.subscription_id is not None:
        metadata["eventgate_subscription_id"] = str(line.subscription_id)
    if line.credit_id is not None:
        metadata["eventgate_credit_id"] = str(line.credit_id)

    def create() -> Any:
        return client.v1.invoice_items.create(
            params={
                "customer": customer_id,
                "amount": line.amount_minor,  # negative for a credit line
                "currency": invoice.currency,
                "description": line.description,
                "metadata": metadata,
            },
            options={"idempotency_key": key},
        )

    def record(stripe_id: str) -> None:
        InvoiceLine.objects.filter(pk=line.pk).update(stripe_invoice_item_id=stripe_id)
        line.stripe_invoice_item_id = stripe_id

    return _create_once(
        key=key,
        object_type="invoiceitem",
        find=lambda: _find_invoice_item(client, customer_id, key),
        create=create,
        record=record,
    )


def _invoice_ensure(
    *, client: stripe.StripeClient, invoice: Invoice, customer_id: str, item_keys: set[str]
) -> str:
    key = invoice_key(invoice)

    def find() -> str | None:
        listing = client.v1.invoices.list(params={"customer": customer_id, "limit": 100})
        for stripe_invoice in listing.auto_paging_iter():
            if _eventgate_key(stripe_invoice) == key:
                return stripe_invoice.id
            # localstripe drops invoice metadata: recognise the invoice by the items it took in.
            for line in _invoice_lines(client, stripe_invoice):
                if (line.get("metadata") or {}).get("eventgate_key") in item_keys:
                    return stripe_invoice.id
        return None

    def create() -> Any:
        return client.v1.invoices.create(
            params={
                "customer": customer_id,
                # Real Stripe excludes pending invoice items by default; localstripe ignores this.
                "pending_invoice_items_behavior": "include",
                "description": f"Eventgate usage, {invoice.period_label}",
                "metadata": {
                    "eventgate_key": key,
                    "eventgate_invoice_id": str(invoice.pk),
                    "period_start": invoice.period_start.isoformat(),
                    "period_end": invoice.period_end.isoformat(),
                },
            },
            options={"idempotency_key": key},
        )

    def record(stripe_id: str) -> None:
        Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id=stripe_id)
        invoice.stripe_invoice_id = stripe_id

    return _create_once(key=key, object_type="invoice", find=find, create=create, record=record)


def _collection_method_set(
    *, client: stripe.StripeClient, account: BillingAccount, stripe_invoice: Any
) -> Any:
    """Make a draft invoice of an account with approved invoicing (and no card) ``send_invoice``,
    due in ``INVOICE_DAYS_UNTIL_DUE`` days (Invoices › Update). localstripe answers 500 to
    ``collection_method`` on create and 400 to ``days_until_due``: it gets the method alone."""
    data = _data(stripe_invoice)
    if account.collection_method != "send_invoice" or data.get("status") != "draft":
        return stripe_invoice
    if data.get("collection_method") == "send_invoice":
        return stripe_invoice
    try:
        return client.v1.invoices.update(
            stripe_invoice.id,
            params={"collection_method": "send_invoice", "days_until_due": INVOICE_DAYS_UNTIL_DUE},
        )
    except stripe.InvalidRequestError as exc:
        if exc.http_status != 400:
            raise
        return client.v1.invoices.update(stripe_invoice.id, params={"collection_method": "send_invoice"})


def _collect(
    *, client: stripe.StripeClient, account: BillingAccount, invoice: Invoice, stripe_invoice: Any
) -> Any:
    """Ask Stripe to collect a finalized (or, on localstripe, draft) invoice once: email it for
    approved invoicing, charge the default payment method otherwise. Accounts with neither are
    left to pay on Stripe's hosted invoice page."""
    if _data(stripe_invoice).get("status") not in ("draft", "open"):
        return stripe_invoice
    if account.collection_method == "send_invoice":
        return _send_once(client=client, invoice=invoice, stripe_invoice=stripe_invoice)
    if not account.has_payment_method:
        return stripe_invoice
    return _pay_once(client=client, invoice=invoice, stripe_invoice=stripe_invoice)


def _send_once(*, client: stripe.StripeClient, invoice: Invoice, stripe_invoice: Any) -> Any:
    """Email the invoice once (Invoices › Send an invoice for manual payment); servers without
    the endpoint (localstripe: 404, non-JSON) leave it to the hosted page."""
    key = f"{invoice_key(invoice)}-send"
    request, _ = _request_begin(key, "invoice_send")
    if request.answered_at:
        return stripe_invoice
    try:
        stripe_invoice = client.v1.invoices.send_invoice(stripe_invoice.id, options={"idempotency_key": key})
    except stripe.APIError as exc:
        if exc.http_status != 404:
            raise
        logger.debug("Stripe server cannot send invoice %s; it stays on the hosted page", stripe_invoice.id)
    _request_complete(request, stripe_invoice.id, lambda stripe_id: None)
    return stripe_invoice


def _pay_once(*, client: stripe.StripeClient, invoice: Invoice, stripe_invoice: Any) -> Any:
    """Charge the customer's default payment method for the invoice, at most one attempt per
    ledger invoice (Invoices › Pay an invoice, key ``<invoice key>-pay``); later attempts are
    dunning's. A declined card — ``stripe.CardError`` (real Stripe: 402) or an invoice still open
    after paying (localstripe) — sets ``payment_failed_at`` and is not raised. An invoice can
    only be paid once, so repeating the call after a crash never charges twice."""
    key = f"{invoice_key(invoice)}-pay"
    request, _ = _request_begin(key, "invoice_payment")
    if request.answered_at:
        return stripe_invoice
    decline = ""
    try:
        stripe_invoice = client.v1.invoices.pay(stripe_invoice.id, options={"idempotency_key": key})
    except stripe.CardError as exc:
        decline = exc.user_message or str(exc)
        stripe_invoice = client.v1.invoices.retrieve(stripe_invoice.id)
    except stripe.InvalidRequestError:
        # "Invoice is already paid": an earlier run's payment whose answer was lost.
        stripe_invoice = client.v1.invoices.retrieve(stripe_invoice.id)
        if _data(stripe_invoice).get("status") != "paid":
            raise
    _after_stripe_answer()
    data = _data(stripe_invoice)
    failed = data.get("status") != "paid"
    if failed and not decline and data.get("payment_intent"):
        intent = _data(client.v1.payment_intents.retrieve(str(data["payment_intent"])))
        decline = (intent.get("last_payment_error") or {}).get("message", "")

    def record(stripe_id: str) -> None:
        if failed:
            Invoice.objects.filter(pk=invoice.pk).update(payment_failed_at=timezone.now())

    _request_complete(request, stripe_invoice.id, record)
    if failed:
        logger.info("Invoice %s: payment failed (%s); dunning follows the webhook", invoice.pk, decline)
    return stripe_invoice
