"""Stripe webhooks: verified on the raw body, stored once per event id, processed once, async.

``POST /billing/stripe/webhook/`` (``stripe_webhook``) checks the ``Stripe-Signature`` header
against ``settings.STRIPE_WEBHOOK_SECRET`` on the raw request body, refusing timestamps older
than ``STRIPE_WEBHOOK_TOLERANCE_SECONDS`` (Stripe docs: Webhooks › Verify signatures; Prevent
replay attacks), stores the event as a ``StripeEvent`` (its unique ``event_id`` drops duplicate
deliveries: Stripe docs: Webhooks › Handle duplicate events) and answers 200 at once; a Celery
task (``billing.tasks.stripe_event_process_task``) processes it after the commit.

Processing (``stripe_event_process``) claims the event with a conditional update (unprocessed,
and unclaimed or its claim older than ``CLAIM_LEASE_SECONDS``), then, in one transaction with the
event row locked, runs its handler and sets ``processed_at``: two workers never both apply an
event. A failure records ``error`` and the task retries with backoff; ``stripe_events_pending``
finds events whose task was lost (beat's sweep). Handled types:

- ``invoice.paid``, ``invoice.payment_succeeded``: the ledger invoice is paid; its dunning case
  is resolved and what the case suspended is reinstated (``billing.dunning``);
- ``invoice.payment_failed``: the invoice is open (never un-paid: events arrive out of order),
  ``payment_failed_at`` is set, and the dunning case is opened or advanced;
- ``invoice.finalized``, ``invoice.voided``, ``invoice.marked_uncollectible``: the status.

Other types are stored and marked processed, with a ``note``. So are events about
invoices Eventgate does not know, once ``UNKNOWN_INVOICE_PATIENCE_SECONDS`` have passed since
receipt (until then they are retried: the sync that stores a Stripe invoice id commits after
Stripe may already have sent an event about it).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import stripe
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DataError, transaction
from django.db.models import F, Q
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.dunning import dunning_payment_failed, dunning_resolve
from billing.models import Invoice, StripeEvent
from billing.stripe_sync import STATUS_RANK, stripe_client, stripe_enabled

logger = logging.getLogger(__name__)

# Seconds a worker's claim on an event lasts; after that another worker may take it over (the
# first one died). The event row lock still keeps two live workers from both applying it.
CLAIM_LEASE_SECONDS = 300
# The sweep re-enqueues unprocessed events received at least this long ago (their task was lost).
PENDING_AFTER_SECONDS = 60
# After this many processing attempts an event is left alone, with its error, for an operator.
MAX_ATTEMPTS = 10
# How long an event about an unknown invoice is retried before it is processed with a note.
UNKNOWN_INVOICE_PATIENCE_SECONDS = 3600

INVOICE_PAID_TYPES = frozenset({"invoice.paid", "invoice.payment_succeeded"})


class StripeEventNotReady(Exception):
    """The event is about an invoice not found (yet): retry later."""


class StripeEventFailed(Exception):
    """Processing an event failed; ``StripeEvent.error`` says why. The caller retries."""


# --- Receiving ---------------------------------------------------------------------------------


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    """Receive one Stripe event: verify, store once, enqueue; answer fast.

    Answers 200 ``{"received": true, "duplicate": bool}``; 400 ``{"error": ...}`` for a
    missing, malformed or wrong signature, a stale timestamp, or a body that is not a Stripe
    event; 413 for a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE``; 503 while
    ``STRIPE_WEBHOOK_SECRET`` is unset. Stripe retries non-2xx answers for three days (Stripe
    docs: Webhooks › Retry behavior), so a refused event is not lost while we are misconfigured.
    """
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        logger.error("Stripe webhook refused: STRIPE_WEBHOOK_SECRET is not set")
        return _error(503, "webhooks not configured")
    try:
        payload = request.body
    except RequestDataTooBig:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return _error(413, f"body too large (over {limit} bytes)")
    header = request.headers.get("Stripe-Signature", "")
    if not header:
        return _error(400, "missing Stripe-Signature header")
    tolerance = settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS
    try:
        stripe.Webhook.construct_event(payload, header, secret, tolerance=tolerance)
    except stripe.SignatureVerificationError as exc:
        return _error(400, _signature_problem(exc, header, tolerance))
    except (ValueError, TypeError, AttributeError, RecursionError):
        # Verified, then not UTF-8 JSON (ValueError), or JSON but not an object (the library
        # calls .get on it), or a thin v2 event notification (ValueError), or nested deeper
        # than the parser goes (RecursionError).
        return _error(400, "body is not a Stripe event (a JSON object)")
    try:
        fields = _event_fields(payload)
        _event, created = stripe_event_record(**fields)
    except ValueError as exc:
        return _error(400, str(exc))
    except RecursionError:
        return _error(400, "body is nested too deeply to store")
    except DataError:
        # PostgreSQL's jsonb refuses what JSON allows but it cannot store (\u0000 in strings).
        return _error(400, "body cannot be stored: it holds a \\u0000 character")
    return JsonResponse({"received": True, "duplicate": not created})


def _signature_problem(exc: stripe.SignatureVerificationError, header: str, tolerance: int) -> str:
    """The reason for a refused signature, in words a sender can act on."""
    message = exc.user_message or str(exc)
    if message.startswith("Timestamp outside the tolerance zone"):
        age = int(time.time()) - (_header_timestamp(header) or 0)
        return f"timestamp too old ({age} s, tolerance {tolerance} s)"
    if message.startswith("No signatures found matching"):
        return "signature does not match"
    if message.startswith("No signatures found with expected scheme"):
        return "no v1 signature in the Stripe-Signature header"
    if message.startswith("Unable to extract timestamp"):
        return "malformed Stripe-Signature header (expected t=<timestamp>,v1=<signature>)"
    return message


def _header_timestamp(header: str) -> int | None:
    for item in header.split(","):
        key, _, value = item.partition("=")
        if key.strip() == "t" and value.strip().isdigit():
            return int(value)
    return None


def _event_fields(payload: bytes) -> dict[str, Any]:
    """``event_id``, ``type``, ``payload`` (dict) and ``stripe_created`` from a verified body.

    Raises ``ValueError`` naming the field that is missing or wrong."""

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"body is not JSON ({name} is not a JSON number)")

    data = json.loads(payload, parse_constant=refuse_constant)
    event_id, event_type, created = data.get("id"), data.get("type"), data.get("created")
    if not isinstance(event_id, str) or not event_id or len(event_id) > 255:
        raise ValueError("field id: a Stripe event id (a string of at most 255 characters) is required")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 100:
        raise ValueError("field type: an event type (a string of at most 100 characters) is required")
    stripe_created = None
    if created is not None:
        if not isinstance(created, int) or isinstance(created, bool) or not 0 < created < 2**33:
            raise ValueError("field created: a Unix timestamp in seconds is required")
        stripe_created = datetime.fromtimestamp(created, tz=UTC)
    return {"event_id": event_id, "type": event_type, "payload": data, "stripe_created": stripe_created}


def stripe_event_record(
    *, event_id: str, type: str, payload: dict[str, Any], stripe_created: datetime | None
) -> tuple[StripeEvent, bool]:
    """Store a verified event once; returns ``(event, created)``. A new event is enqueued for
    ``stripe_event_process_task`` after the commit; a duplicate id (Stripe delivers at least once)
    changes and enqueues nothing. A broker that is down only delays processing: the enqueue error
    is logged and the sweep (``stripe_events_pending``) enqueues the event later."""
    with transaction.atomic():
        event, created = StripeEvent.objects.get_or_create(
            event_id=event_id,
            defaults={"type": type, "payload": payload, "stripe_created": stripe_created},
        )
        if created:
            event_pk = event.pk
            transaction.on_commit(lambda: _enqueue(event_pk), robust=True)
    return event, created


def _enqueue(event_pk: int) -> None:
    from billing.tasks import stripe_event_process_task  # billing.tasks imports this module

    stripe_event_process_task.delay(event_pk)


def stripe_events_pending(*, now: datetime | None = None) -> list[int]:
    """Ids of events a worker should (re)process: not processed, received at least
    ``PENDING_AFTER_SECONDS`` ago, not claimed within ``CLAIM_LEASE_SECONDS``, and tried fewer than
    ``MAX_ATTEMPTS`` times. Oldest first."""
    now = now or timezone.now()
    return list(
        StripeEvent.objects.filter(
            processed_at__isnull=True,
            received_at__lte=now - timedelta(seconds=PENDING_AFTER_SECONDS),
            attempts__lt=MAX_ATTEMPTS,
        )
        .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - timedelta(seconds=CLAIM_LEASE_SECONDS)))
        .order_by("received_at")
        .values_list("pk", flat=True)
    )


# --- Processing --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What processing one event did: ``processed`` (its effects applied), ``ignored``
    (processed, nothing to do: ``note`` says why) or ``skipped`` (already processed, or claimed
    by another worker)."""

    result: str
    note: str = ""


def stripe_event_process(*, event_pk: int, now: datetime | None = None) -> Outcome:
    """Process one stored event at most once (see the module docstring).

    ``now`` is the claim time (and the clock for an unknown invoice's patience). Raises
    ``StripeEventFailed`` after recording the error, ``attempts`` and releasing the claim; the
    caller retries. A missing event is ``skipped``.
    """
    now = now or timezone.now()
    claimed = (
        StripeEvent.objects.filter(pk=event_pk, processed_at__isnull=True)
        .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - timedelta(seconds=CLAIM_LEASE_SECONDS)))
        .update(claimed_at=now, attempts=F("attempts") + 1)
    )
    if not claimed:
        return Outcome("skipped")
    event = StripeEvent.objects.filter(pk=event_pk).first()
    if event is None:
        return Outcome("skipped")
    # A Stripe read (the failure message) happens before the transaction, not while rows are locked.
    failed = event.type == "invoice.payment_failed"
    context = {"failure_message": _failure_message(event.payload)} if failed else {}
    try:
        with transaction.atomic():
            locked = StripeEvent.objects.select_for_update().get(pk=event_pk)
            if locked.processed_at is not None:
                return Outcome("skipped")
            note = _handle(locked, now=now, **context)
            locked.processed_at, locked.note, locked.error = timezone.now(), note, ""
            locked.save(update_fields=["processed_at", "note", "error"])
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:2000]
        StripeEvent.objects.filter(pk=event_pk, processed_at__isnull=True).update(
            error=error, claimed_at=None
        )
        if isinstance(exc, StripeEventNotReady):
            logger.info("Stripe event %s (%s) not ready: %s", event.event_id, event.type, exc)
        else:
            logger.exception("Stripe event %s (%s) failed", event.event_id, event.type)
        raise StripeEventFailed(error) from exc
    return Outcome("ignored", note) if note else Outcome("processed")


def _handle(event: StripeEvent, *, now: datetime, failure_message: str = "") -> str:
    """Apply ``event``; returns a note when it changed nothing (else "")."""
    handler = HANDLERS.get(event.type)
    if handler is None:
        return f"ignored: Eventgate does not handle {event.type} events"
    data = event.payload.get("data") if isinstance(event.payload, dict) else None
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict) or obj.get("object", "invoice") != "invoice":
        return "ignored: the event carries no invoice object"
    invoice = _invoice_for(obj, event=event, now=now)
    if invoice is None:
        metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        return (
            f"ignored: no ledger invoice for Stripe invoice {obj.get('id')!s:.100} "
            f"(metadata eventgate_invoice_id={metadata.get('eventgate_invoice_id')!s:.30})"
        )
    return handler(event=event, obj=obj, invoice=invoice, now=now, failure_message=failure_message)


def _invoice_for(obj: dict[str, Any], *, event: StripeEvent, now: datetime) -> Invoice | None:
    """The ledger invoice of a Stripe invoice object, locked: by ``stripe_invoice_id``, else by
    ``metadata.eventgate_invoice_id`` (an invoice not linked to another Stripe invoice). None
    raises ``StripeEventNotReady`` while the event is younger than the patience, unless Stripe made
    the invoice for a subscription (Stripe API reference: Invoices › billing_reason)."""
    stripe_id = obj.get("id") if isinstance(obj.get("id"), str) else ""
    # Only the invoice row is locked (``of``): the sync holds its billing account's row for a while.
    invoices = Invoice.objects.select_for_update(of=("self",)).select_related("account__owner")
    invoice = invoices.filter(stripe_invoice_id=stripe_id).first() if stripe_id else None
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    ledger_id = str(metadata.get("eventgate_invoice_id") or "")
    if invoice is None and ledger_id.isdigit():
        invoice = (
            invoices.filter(pk=int(ledger_id)).filter(
                Q(stripe_invoice_id="") | Q(stripe_invoice_id=stripe_id)
            )
        ).first()
    # Stripe's own invoices for the zero-amount subscription (billing_reason "subscription_create",
    # "subscription_cycle", …) are never in the ledger: no point waiting for them.
    stripes_own = str(obj.get("billing_reason") or "").startswith("subscription")
    patience = timedelta(seconds=UNKNOWN_INVOICE_PATIENCE_SECONDS)
    if invoice is None and not stripes_own and event.received_at > now - patience:
        raise StripeEventNotReady(f"no ledger invoice for Stripe invoice {stripe_id!s:.100} yet; retrying")
    return invoice


def _moves_to(invoice: Invoice, status: str) -> bool:
    """Whether ``status`` may replace the invoice's status (``billing.stripe_sync.STATUS_RANK``,
    shared with the sync so both only move an invoice forward)."""
    return STATUS_RANK.get(status, -1) > STATUS_RANK.get(invoice.status, -1)


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**33:
        return datetime.fromtimestamp(value, tz=UTC)
    return None


def _copy_hosted_url(invoice: Invoice, obj: dict[str, Any]) -> None:
    url = obj.get("hosted_invoice_url")
    if isinstance(url, str) and url.startswith(("https://", "http://")) and len(url) <= 500:
        invoice.hosted_invoice_url = url


def _invoice_paid(
    *, event: StripeEvent, obj: dict[str, Any], invoice: Invoice, now: datetime, **_: Any
) -> str:
    note = ""
    if _moves_to(invoice, Invoice.Status.PAID):
        transitions = obj.get("status_transitions") if isinstance(obj.get("status_transitions"), dict) else {}
        invoice.status = Invoice.Status.PAID
        invoice.paid_at = _timestamp(transitions.get("paid_at")) or event.stripe_created or timezone.now()
    elif invoice.status != Invoice.Status.PAID:
        note = f"ignored: invoice {invoice.pk} is {invoice.status}; a payment cannot change that"
    _copy_hosted_url(invoice, obj)
    invoice.save(update_fields=["status", "paid_at", "hosted_invoice_url"])
    if invoice.status == Invoice.Status.PAID:
        dunning_resolve(invoice=invoice, reason="paid", now=now)
    return note


def _invoice_payment_failed(
    *, event: StripeEvent, obj: dict[str, Any], invoice: Invoice, now: datetime, failure_message: str = ""
) -> str:
    failed_at = min(event.stripe_created or now, timezone.now())
    if invoice.status in (Invoice.Status.PAID, Invoice.Status.VOID):
        # Out of order: the payment that failed is older than the state we hold.
        return f"ignored: invoice {invoice.pk} is already {invoice.status}"
    if _moves_to(invoice, Invoice.Status.OPEN):
        invoice.status = Invoice.Status.OPEN
    if invoice.payment_failed_at is None or failed_at > invoice.payment_failed_at:
        invoice.payment_failed_at = failed_at
    _copy_hosted_url(invoice, obj)
    invoice.save(update_fields=["status", "payment_failed_at", "hosted_invoice_url"])
    dunning_payment_failed(invoice=invoice, failed_at=failed_at, message=failure_message, now=now)
    return ""


def _invoice_status(
    *, event: StripeEvent, obj: dict[str, Any], invoice: Invoice, now: datetime, status: str, **_: Any
) -> str:
    note = ""
    if _moves_to(invoice, status):
        invoice.status = status
    elif invoice.status != status:
        note = f"ignored: invoice {invoice.pk} is already {invoice.status}"
    _copy_hosted_url(invoice, obj)
    invoice.save(update_fields=["status", "hosted_invoice_url"])
    if invoice.status == Invoice.Status.VOID:
        # Nothing is owed any more: the case ends and what it suspended is reinstated.
        dunning_resolve(invoice=invoice, reason="voided", now=now)
    return note


HANDLERS: dict[str, Callable[..., str]] = {
    "invoice.paid": _invoice_paid,
    "invoice.payment_succeeded": _invoice_paid,
    "invoice.payment_failed": _invoice_payment_failed,
    "invoice.finalized": partial(_invoice_status, status=Invoice.Status.OPEN),
    "invoice.voided": partial(_invoice_status, status=Invoice.Status.VOID),
    "invoice.marked_uncollectible": partial(_invoice_status, status=Invoice.Status.UNCOLLECTIBLE),
}


def _failure_message(payload: Any) -> str:
    """Why a payment failed, from the event's invoice: its charge's ``failure_message`` or its
    payment intent's ``last_payment_error.message`` when expanded in the event (localstripe
    expands the charge), else read from Stripe (Payment Intents › Retrieve) when Stripe is on.
    "" when unknown; a Stripe error is logged, never raised."""
    try:
        obj = payload["data"]["object"]
        charge, intent = obj.get("charge"), obj.get("payment_intent")
    except (KeyError, TypeError, AttributeError):
        return ""
    if isinstance(charge, dict) and charge.get("failure_message"):
        return str(charge["failure_message"])[:500]
    if isinstance(intent, dict):
        error = intent.get("last_payment_error")
        return str(error.get("message") or "")[:500] if isinstance(error, dict) else ""
    if isinstance(intent, str) and intent.startswith("pi_") and stripe_enabled():
        try:
            error = stripe_client().v1.payment_intents.retrieve(intent).last_payment_error
        except stripe.StripeError as exc:
            logger.warning("Could not read payment intent %s: %s", intent, exc)
            return ""
        return str(getattr(error, "message", "") or "")[:500]
    return ""
