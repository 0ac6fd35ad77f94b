"""Stripe webhooks: signatures checked on the raw body, each event stored and applied once, and the
whole path end to end — a real HTTP server and Celery worker, and localstripe sending its own
signed events about an invoice the billing code pushed to it."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
import requests
from django.core import mail
from django.core.management import call_command
from django.db import connection

from billing.models import BillingAccount, DunningCase, Invoice, StripeEvent
from billing.services import invoice_period_close
from billing.stripe_sync import invoice_sync_stripe
from billing.tasks import stripe_events_process_pending_task
from billing.webhooks import (
    UNKNOWN_INVOICE_PATIENCE_SECONDS,
    StripeEventFailed,
    stripe_event_process,
    stripe_event_record,
)
from tests.billing.conftest import OCTOBER
from tests.fixtures.servers import amqp_queues_delete, celery_worker_start
from tests.fixtures.stripe import TEST_API_KEY

SECRET = "whsec_test_eventgate"
WEBHOOK_URL = "/billing/stripe/webhook/"
DECLINED = "Your card was declined."
T = TypeVar("T")


# --- Helpers (also used by test_dunning.py and test_dunning_gateway.py) ---------------------------


def sign(body: bytes, *, secret: str = SECRET, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header as Stripe computes it: ``t=<unix time>,v1=<hex HMAC-SHA256
    of "<t>.<body>" keyed with the endpoint secret>`` (Stripe docs: Webhooks › Verify manually)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def invoice_event(
    event_type: str,
    invoice: Invoice | None = None,
    *,
    created: int | None = None,
    event_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A Stripe event about ``invoice`` (its Stripe invoice id), shaped like Stripe's; ``fields``
    go into the invoice object (``data.object``)."""
    obj: dict[str, Any] = {"object": "invoice", "metadata": {}}
    if invoice is not None:
        obj["id"] = invoice.stripe_invoice_id
        obj["amount_due"], obj["currency"] = invoice.total_minor, invoice.currency
    if event_type == "invoice.payment_failed":
        obj.update(
            status="open", charge={"object": "charge", "status": "failed", "failure_message": DECLINED}
        )
    obj.update(fields)
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:14]}",
        "object": "event",
        "api_version": "2017-08-15",
        "created": int(time.time()) if created is None else created,
        "livemode": False,
        "type": event_type,
        "data": {"object": obj},
    }


def wait_for(predicate: Callable[[], T], what: str, timeout: float = 20.0) -> T:
    """``predicate()``'s first truthy value within ``timeout`` seconds, else fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def post_webhook(base_url: str, body: bytes, header: str | None) -> tuple[int, dict[str, Any]]:
    """POST ``body`` to a running server's webhook endpoint; returns ``(status, JSON answer)``."""
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header
    request = urllib.request.Request(base_url + WEBHOOK_URL, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def webhook_secret(settings) -> str:
    settings.STRIPE_WEBHOOK_SECRET = SECRET
    settings.EVENTGATE_PUBLIC_URL = "https://eventgate.example.com"
    return SECRET


@pytest.fixture
def october_invoice(bob_subscription, record_usage) -> Invoice:
    """Bob's October invoice ($49.00 fee + $4.50 events = $53.50), as the Stripe sync leaves it:
    open, with a Stripe invoice id."""
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 15, tzinfo=UTC), 12_345, 1_234_500)
    [invoice] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])
    Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id=f"in_test{invoice.pk}", status="open")
    invoice.refresh_from_db()
    return invoice


@pytest.fixture
def deliver(client, db, webhook_secret, celery_eager, django_capture_on_commit_callbacks):
    """``deliver(event or raw bytes, header=None)``: POST it through Django's test client, signed
    with the endpoint secret unless ``header`` is given (``""`` sends none); the task enqueued
    after the commit runs inline, and so do the emails it sends after its own commit."""

    def post(event: dict[str, Any] | bytes, header: str | None = None, **extra: Any):
        body = event if isinstance(event, bytes) else json.dumps(event).encode()
        headers = {} if header == "" else {"HTTP_STRIPE_SIGNATURE": header or sign(body)}
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(WEBHOOK_URL, data=body, content_type="application/json", **headers, **extra)

    return post


# --- Signatures and bodies ----------------------------------------------------------------------


def test_wrong_signature_is_refused_and_nothing_is_stored(deliver, october_invoice):
    event = invoice_event("invoice.payment_failed", october_invoice)
    body = json.dumps(event).encode()

    other_secret = deliver(body, header=sign(body, secret="whsec_someone_else"))
    tampered = deliver(body.replace(b'"open"', b'"paid"'), header=sign(body))

    for response in (other_secret, tampered):
        assert response.status_code == 400
        assert response.json() == {"error": "signature does not match"}
    assert StripeEvent.objects.count() == 0 and mail.outbox == []


def test_a_correctly_signed_but_stale_timestamp_is_refused(deliver, october_invoice):
    body = json.dumps(invoice_event("invoice.payment_failed", october_invoice)).encode()

    response = deliver(body, header=sign(body, timestamp=int(time.time()) - 301))

    assert response.status_code == 400
    assert re.fullmatch(r"timestamp too old \(30[1-3] s, tolerance 300 s\)", response.json()["error"])
    assert StripeEvent.objects.count() == 0


def test_missing_or_malformed_signature_header_is_refused(deliver, october_invoice):
    body = json.dumps(invoice_event("invoice.paid", october_invoice)).encode()

    missing = deliver(body, header="")
    malformed = deliver(body, header="v1=abc")
    no_v1 = deliver(body, header=f"t={int(time.time())},v0=abc")

    assert (missing.status_code, missing.json()) == (400, {"error": "missing Stripe-Signature header"})
    assert malformed.status_code == 400 and "malformed Stripe-Signature header" in malformed.json()["error"]
    assert no_v1.json() == {"error": "no v1 signature in the Stripe-Signature header"}
    assert StripeEvent.objects.count() == 0


@pytest.mark.parametrize(
    "body, error",
    [
        (b"", "body is not a Stripe event (a JSON object)"),
        (b"event=invoice.paid", "body is not a Stripe event (a JSON object)"),
        (b"\xff\xfe not utf-8", "body is not a Stripe event (a JSON object)"),
        (b"[1, 2, 3]", "body is not a Stripe event (a JSON object)"),
        (b'{"type": "invoice.paid", "created": 1}', "field id: a Stripe event id"),
        (b'{"id": "evt_1", "created": 1}', "field type: an event type"),
        (
            b'{"id": "evt_1", "type": "invoice.paid", "created": "yesterday"}',
            "field created: a Unix timestamp",
        ),
        (b'{"id": "evt_1", "type": "invoice.paid", "amount": NaN}', "body is not JSON (NaN"),
        (b'{"id": "evt_1", "type": "invoice.paid", "note": "a\\u0000b"}', "body cannot be stored"),
        (b'{"a":' * 5_000 + b"1" + b"}" * 5_000, "body is not a Stripe event (a JSON object)"),  # too deep
    ],
)
def test_signed_bodies_that_are_not_stripe_events_get_a_400_naming_the_problem(deliver, body, error):
    response = deliver(body)

    assert response.status_code == 400
    assert response.json()["error"].startswith(error)
    assert StripeEvent.objects.count() == 0


def test_a_body_over_the_upload_limit_gets_413_not_500(deliver, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    body = json.dumps({"id": "evt_big", "type": "invoice.paid", "padding": "x" * 20_000}).encode()

    response = deliver(body)

    assert (response.status_code, response.json()) == (413, {"error": "body too large (over 10000 bytes)"})
    assert StripeEvent.objects.count() == 0


def test_without_a_configured_secret_the_endpoint_answers_503_and_logs_it(deliver, settings, caplog):
    body = json.dumps(invoice_event("invoice.paid")).encode()
    settings.STRIPE_WEBHOOK_SECRET = ""

    response = deliver(body, header=sign(body))

    assert (response.status_code, response.json()) == (503, {"error": "webhooks not configured"})
    assert "STRIPE_WEBHOOK_SECRET is not set" in caplog.text
    assert StripeEvent.objects.count() == 0


def test_only_post_is_allowed(client, webhook_secret):
    assert client.get(WEBHOOK_URL).status_code == 405


# --- Storing and applying events ----------------------------------------------------------------


def test_payment_failed_opens_dunning_and_emails_the_consumer_at_once(deliver, october_invoice, settings):
    settings.BILLING_DUNNING_GRACE_SECONDS = 14 * 86400
    created = int(time.time()) - 5
    event = invoice_event("invoice.payment_failed", october_invoice, created=created)

    response = deliver(event)

    assert (response.status_code, response.json()) == (200, {"received": True, "duplicate": False})
    stored = StripeEvent.objects.get()
    assert (stored.event_id, stored.type, stored.attempts, stored.error) == (
        event["id"],
        "invoice.payment_failed",
        1,
        "",
    )
    assert stored.processed_at is not None and stored.payload == event
    invoice = Invoice.objects.get(pk=october_invoice.pk)
    failed_at = datetime.fromtimestamp(created, tz=UTC)
    assert (invoice.status, invoice.payment_failed_at) == ("open", failed_at)
    case = DunningCase.objects.get(invoice=invoice)
    assert (case.state, case.failures, case.last_failure_message, case.reminders_sent) == (
        "open",
        1,
        DECLINED,
        1,
    )
    assert case.suspend_at == failed_at + timedelta(days=14)

    [email] = mail.outbox
    assert email.to == ["bob@example.com"]
    assert email.subject == "Payment failed: Eventgate invoice for October 2026 ($53.50)"
    suspend_on = case.suspend_at.astimezone(UTC)
    for text in (email.body, email.alternatives[0][0]):
        assert "$53.50" in text and "October 2026" in text and DECLINED in text
        assert f"https://eventgate.example.com/billing/invoices/{invoice.pk}/" in text
        assert f"{suspend_on.day} {suspend_on:%B %Y, %H:%M} UTC" in text
    assert email.alternatives[0][1] == "text/html"


def test_a_duplicate_delivery_answers_200_and_changes_nothing(deliver, october_invoice):
    event = invoice_event("invoice.payment_failed", october_invoice)

    first, second = deliver(event), deliver(event)

    assert first.json() == {"received": True, "duplicate": False}
    assert (second.status_code, second.json()) == (200, {"received": True, "duplicate": True})
    assert StripeEvent.objects.count() == 1 and StripeEvent.objects.get().attempts == 1
    assert DunningCase.objects.get().failures == 1
    assert len(mail.outbox) == 1


def test_paid_event_marks_the_invoice_paid_with_stripes_page(deliver, october_invoice):
    paid_at = int(datetime(2026, 11, 3, 8, 0, tzinfo=UTC).timestamp())
    event = invoice_event(
        "invoice.paid",
        october_invoice,
        status="paid",
        hosted_invoice_url="https://invoice.stripe.com/i/acct_1/test_abc",
        status_transitions={"paid_at": paid_at, "finalized_at": paid_at - 60},
    )

    assert deliver(event).status_code == 200

    invoice = Invoice.objects.get(pk=october_invoice.pk)
    assert invoice.status == "paid"
    assert invoice.paid_at == datetime(2026, 11, 3, 8, 0, tzinfo=UTC)
    assert invoice.hosted_invoice_url == "https://invoice.stripe.com/i/acct_1/test_abc"
    assert mail.outbox == []  # no dunning case, nothing to tell


def test_the_invoice_is_found_by_its_metadata_before_its_stripe_id_is_stored(deliver, october_invoice):
    Invoice.objects.filter(pk=october_invoice.pk).update(stripe_invoice_id="")
    event = invoice_event(
        "invoice.finalized", id="in_not_stored", metadata={"eventgate_invoice_id": str(october_invoice.pk)}
    )
    Invoice.objects.filter(pk=october_invoice.pk).update(status="draft")

    deliver(event)

    assert Invoice.objects.get(pk=october_invoice.pk).status == "open"
    assert StripeEvent.objects.get().error == ""


def test_status_events_never_move_an_invoice_backwards(deliver, october_invoice):
    deliver(invoice_event("invoice.payment_succeeded", october_invoice))
    deliver(invoice_event("invoice.finalized", october_invoice))
    deliver(invoice_event("invoice.marked_uncollectible", october_invoice))

    assert Invoice.objects.get(pk=october_invoice.pk).status == "paid"
    notes = list(StripeEvent.objects.order_by("received_at").values_list("note", flat=True))
    assert notes[0] == ""
    assert notes[1:] == [f"ignored: invoice {october_invoice.pk} is already paid"] * 2
    assert StripeEvent.objects.filter(processed_at__isnull=True).count() == 0


def test_voided_and_uncollectible_events_set_the_status(deliver, october_invoice):
    deliver(invoice_event("invoice.marked_uncollectible", october_invoice))
    assert Invoice.objects.get(pk=october_invoice.pk).status == "uncollectible"
    deliver(invoice_event("invoice.voided", october_invoice))
    assert Invoice.objects.get(pk=october_invoice.pk).status == "void"


def test_unknown_event_types_are_stored_and_marked_processed(deliver, october_invoice):
    event = invoice_event("customer.created", id="cus_123", object="customer")

    assert deliver(event).status_code == 200

    stored = StripeEvent.objects.get()
    assert stored.processed_at is not None
    assert stored.note == "ignored: Eventgate does not handle customer.created events"


def test_an_event_for_an_unknown_invoice_is_retried_then_processed_with_a_note(webhook_secret, db):
    event = invoice_event("invoice.payment_failed", id="in_nobody")
    stored, _ = stripe_event_record(
        event_id=event["id"], type=event["type"], payload=event, stripe_created=None
    )  # its task, enqueued on commit, never runs here: the test drives processing itself

    with pytest.raises(StripeEventFailed, match="no ledger invoice for Stripe invoice in_nobody yet"):
        stripe_event_process(event_pk=stored.pk)
    stored.refresh_from_db()
    assert (stored.processed_at, stored.attempts, stored.claimed_at) == (None, 1, None)
    assert "no ledger invoice for Stripe invoice in_nobody yet" in stored.error

    later = stored.received_at + timedelta(seconds=UNKNOWN_INVOICE_PATIENCE_SECONDS + 1)
    outcome = stripe_event_process(event_pk=stored.pk, now=later)

    stored.refresh_from_db()
    assert (outcome.result, stored.attempts) == ("ignored", 2)
    assert stored.processed_at is not None
    assert stored.note.startswith("ignored: no ledger invoice for Stripe invoice in_nobody")
    assert stripe_event_process(event_pk=stored.pk, now=later).result == "skipped"


def test_an_invoice_stripe_made_for_the_subscription_is_ignored_at_once(deliver):
    event = invoice_event("invoice.paid", id="in_zero", billing_reason="subscription_cycle", amount_due=0)

    assert deliver(event).status_code == 200

    stored = StripeEvent.objects.get()
    assert stored.processed_at is not None and stored.attempts == 1
    assert stored.note.startswith("ignored: no ledger invoice for Stripe invoice in_zero")


def test_an_event_that_arrives_before_the_sync_commits_is_applied_on_retry(
    webhook_secret, october_invoice, django_capture_on_commit_callbacks
):
    Invoice.objects.filter(pk=october_invoice.pk).update(stripe_invoice_id="")
    event = invoice_event("invoice.payment_failed", id="in_racing")
    stored, _ = stripe_event_record(
        event_id=event["id"], type=event["type"], payload=event, stripe_created=None
    )
    with pytest.raises(StripeEventFailed):
        stripe_event_process(event_pk=stored.pk)

    Invoice.objects.filter(pk=october_invoice.pk).update(stripe_invoice_id="in_racing")  # the sync commits
    with django_capture_on_commit_callbacks(execute=True):
        assert stripe_event_process(event_pk=stored.pk).result == "processed"

    assert DunningCase.objects.get(invoice=october_invoice).failures == 1
    assert StripeEvent.objects.get().error == "" and len(mail.outbox) == 1


def test_the_sweep_processes_events_whose_task_was_lost(
    webhook_secret, october_invoice, celery_eager, django_capture_on_commit_callbacks
):
    now = datetime.now(UTC)

    def stored(event_type: str, received_ago: float, claimed_ago: float | None = None) -> StripeEvent:
        event = invoice_event(event_type, october_invoice)
        record, _ = stripe_event_record(
            event_id=event["id"], type=event_type, payload=event, stripe_created=None
        )
        claimed_at = now - timedelta(seconds=claimed_ago) if claimed_ago is not None else None
        StripeEvent.objects.filter(pk=record.pk).update(
            received_at=now - timedelta(seconds=received_ago), claimed_at=claimed_at
        )
        return record

    lost = stored("invoice.payment_failed", received_ago=120)
    crashed = stored("invoice.finalized", received_ago=900, claimed_ago=600)  # its worker died
    fresh = stored("invoice.voided", received_ago=1)  # its task is surely still queued
    busy = stored("invoice.voided", received_ago=120, claimed_ago=10)  # a worker is on it

    with django_capture_on_commit_callbacks(execute=True):
        swept = stripe_events_process_pending_task.delay().get()

    assert sorted(swept) == sorted([lost.pk, crashed.pk])
    processed = set(StripeEvent.objects.filter(processed_at__isnull=False).values_list("pk", flat=True))
    assert processed == {lost.pk, crashed.pk}
    assert {fresh.pk, busy.pk}.isdisjoint(processed)
    assert Invoice.objects.get(pk=october_invoice.pk).status == "open"
    assert DunningCase.objects.get().failures == 1 and len(mail.outbox) == 1


@pytest.mark.django_db(transaction=True)
def test_workers_racing_for_one_event_apply_it_once(webhook_secret, october_invoice):
    event = invoice_event("invoice.payment_failed", october_invoice)
    stored, _ = stripe_event_record(
        event_id=event["id"], type=event["type"], payload=event, stripe_created=None
    )
    barrier, outcomes = threading.Barrier(4), []

    def worker() -> None:
        try:
            barrier.wait()
            outcomes.append(stripe_event_process(event_pk=stored.pk).result)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(outcomes) == ["processed", "skipped", "skipped", "skipped"]
    assert DunningCase.objects.get().failures == 1
    assert len(mail.outbox) == 1


# --- A real HTTP server and a real Celery worker ------------------------------------------------


@pytest.fixture
def worker_queue(monkeypatch) -> Iterator[str]:
    """A Celery queue of this test's own; the web server started after this fixture enqueues to it
    and verifies with the test secret (both through its environment)."""
    queue = f"eventgate-webhooks-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CELERY_TASK_DEFAULT_QUEUE", queue)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    yield queue
    amqp_queues_delete(queue)


@pytest.mark.e2e
def test_a_signed_event_over_http_is_stored_and_processed_once_by_a_celery_worker(
    worker_queue, daphne_server, october_invoice, tmp_path
):
    worker = celery_worker_start(tmp_path / "worker.log", queue=worker_queue)
    try:
        body = json.dumps(invoice_event("invoice.payment_failed", october_invoice)).encode()
        header = sign(body)

        assert post_webhook(daphne_server.url, body, header) == (200, {"received": True, "duplicate": False})
        stored = wait_for(
            lambda: StripeEvent.objects.filter(processed_at__isnull=False).first(), "the worker to process it"
        )
        subject = "Subject: Payment failed: Eventgate invoice for October 2026 ($53.50)"
        wait_for(lambda: subject in worker.log(), "the failure email (console backend) in the worker's log")
        # Stripe redelivers when it missed our answer: same id, same body.
        assert post_webhook(daphne_server.url, body, header) == (200, {"received": True, "duplicate": True})
        refused = post_webhook(daphne_server.url, body, sign(body, secret="whsec_wrong"))
    finally:
        worker.stop()

    assert refused == (400, {"error": "signature does not match"})
    assert StripeEvent.objects.count() == 1
    assert (StripeEvent.objects.get().attempts, stored.error) == (1, "")
    case = DunningCase.objects.get(invoice=october_invoice)
    assert (case.failures, case.reminders_sent) == (1, 1)
    assert worker.log().count(subject) == 1
    assert "Traceback" not in worker.log() and "Traceback" not in daphne_server.log()


# --- End to end with localstripe ----------------------------------------------------------------


@pytest.fixture
def localstripe_webhook(localstripe: str) -> Iterator[Callable[[str], None]]:
    """``register(url)`` points the session's localstripe at ``url`` with the test secret, through
    ``manage.py stripe_webhook_register``; afterwards localstripe sends that hook no more events
    (it has no way to delete one: an empty event list)."""

    def register(url: str) -> None:
        out = io.StringIO()
        call_command("stripe_webhook_register", url=url, wait=5, stdout=out)
        assert out.getvalue().strip() == f"Stripe webhooks from {localstripe} go to {url}."

    yield register
    disabled = {"url": "http://127.0.0.1:9/", "secret": "unused", "events": []}
    requests.post(f"{localstripe}/_config/webhooks/eventgate", json=disabled, timeout=10)


@pytest.fixture
def localstripe_server_env(monkeypatch, localstripe: str) -> None:
    """Environment for a web server started after this fixture: it verifies with the secret
    localstripe signs with, talks to localstripe, and runs Celery tasks inline (so the emails it
    sends after processing appear in its log through the console email backend)."""
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("CELERY_TASK_ALWAYS_EAGER", "true")
    monkeypatch.setenv("STRIPE_API_KEY", TEST_API_KEY)
    monkeypatch.setenv("STRIPE_API_BASE", localstripe)


@pytest.mark.e2e
def test_localstripe_payment_failure_then_success_runs_dunning_through_webhooks(
    localstripe_server_env,
    daphne_server,
    stripe_settings,
    webhook_secret,
    stripe_client,
    localstripe_webhook,
    bob_subscription,
    record_usage,
):
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 15, tzinfo=UTC), 12_345, 1_234_500)
    [invoice] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])
    invoice = invoice_sync_stripe(invoice=invoice)
    customer = BillingAccount.objects.get(pk=invoice.account_id).stripe_customer_id
    localstripe_webhook(daphne_server.url + WEBHOOK_URL)

    # localstripe declines this SEPA debit (Stripe's failing test IBAN) a moment after /pay and
    # then sends invoice.payment_failed; for a card declined during /pay it sends nothing.
    _default_payment_method(
        stripe_client, customer, {"type": "sepa_debit", "sepa_debit": {"iban": "DE62370400440532013001"}}
    )
    assert stripe_client.v1.invoices.pay(invoice.stripe_invoice_id).status == "open"
    case = wait_for(lambda: DunningCase.objects.filter(invoice=invoice).first(), "invoice.payment_failed")
    failed = "Subject: Payment failed: Eventgate invoice for October 2026 ($53.50)"
    wait_for(lambda: failed in daphne_server.log(), "the failure email in the server's log")
    invoice.refresh_from_db()
    assert (invoice.status, case.failures, case.state) == ("open", 1, "open")
    assert case.last_failure_message == DECLINED and invoice.payment_failed_at is not None

    card = {
        "type": "card",
        "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
    }
    _default_payment_method(stripe_client, customer, card)
    assert stripe_client.v1.invoices.pay(invoice.stripe_invoice_id).status == "paid"
    wait_for(
        lambda: Invoice.objects.filter(pk=invoice.pk, status="paid").exists(), "invoice.payment_succeeded"
    )
    received = "Subject: Payment received: Eventgate invoice for October 2026 ($53.50)"
    wait_for(lambda: received in daphne_server.log(), "the payment email in the server's log")

    case.refresh_from_db()
    assert case.state == "resolved" and case.resolved_at is not None
    assert Invoice.objects.get(pk=invoice.pk).paid_at is not None
    handled = StripeEvent.objects.filter(type__in=["invoice.payment_failed", "invoice.payment_succeeded"])
    assert sorted(handled.values_list("type", "error")) == [
        ("invoice.payment_failed", ""),
        ("invoice.payment_succeeded", ""),
    ]
    assert daphne_server.log().count(failed) == 1
    assert "Traceback" not in daphne_server.log()


def _default_payment_method(client, customer_id: str, params: dict[str, Any]) -> str:
    """Create a payment method, attach it to the customer and make it the default for invoices
    (Stripe API reference: Payment Methods › Attach; Customers › Update invoice_settings)."""
    method = client.v1.payment_methods.create(params=params)
    client.v1.payment_methods.attach(method.id, params={"customer": customer_id})
    client.v1.customers.update(
        customer_id, params={"invoice_settings": {"default_payment_method": method.id}}
    )
    return method.id
