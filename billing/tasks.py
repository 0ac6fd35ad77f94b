"""Billing's Celery tasks: thin wrappers that call ``billing.services`` and ``billing.stripe_sync``.

``invoice_closed_periods_task`` runs on Celery beat (``CELERY_BEAT_SCHEDULE`` in settings);
``invoice_period_task`` closes a chosen period on demand. Both enqueue one
``invoice_sync_task`` per invoice not yet in Stripe, after their transaction commits.
"""

from __future__ import annotations

import logging

from celery import Task, shared_task
from django.db import transaction
from django.utils import timezone

from billing.ledger import ledger_close_windows, ledger_reconcile
from billing.models import Invoice
from billing.services import invoice_closed_periods, invoice_period_close, parse_period_bound
from billing.stripe_sync import TRANSIENT_ERRORS, AccountSyncBusy, invoice_sync_stripe, stripe_enabled

logger = logging.getLogger(__name__)

SYNC_MAX_RETRIES = 8
SYNC_RETRY_MAX_DELAY = 3600  # seconds


@shared_task
def ledger_close_task() -> dict[str, int]:
    """Close the usage windows past their grace period, then turn usage that reached analytics
    after its window closed into adjustment entries (``billing.ledger``). Run by beat every
    ``BILLING_LEDGER_SECONDS``; safe to run twice or concurrently. Returns the counts."""
    closed = ledger_close_windows(now=timezone.now())
    adjustments = ledger_reconcile(now=timezone.now())
    return {"windows_closed": closed, "adjustments": len(adjustments)}


@shared_task
def invoice_closed_periods_task() -> list[int]:
    """Close the most recent billing month past its grace period; returns the new invoices' ids."""
    invoices = invoice_closed_periods(now=timezone.now())
    enqueue_stripe_sync()
    return [invoice.pk for invoice in invoices]


@shared_task
def invoice_period_task(period_start_iso: str, period_end_iso: str, allow_open: bool = False) -> list[int]:
    """Close the billing period ``[start, end)`` given as ISO 8601 dates or datetimes (UTC if
    naive); returns the new invoices' ids. See ``invoice_period_close`` for ``allow_open``."""
    invoices = invoice_period_close(
        period_start=parse_period_bound(period_start_iso),
        period_end=parse_period_bound(period_end_iso),
        allow_open=allow_open,
    )
    enqueue_stripe_sync()
    return [invoice.pk for invoice in invoices]


@shared_task(bind=True, max_retries=SYNC_MAX_RETRIES, acks_late=True)
def invoice_sync_task(self: Task, invoice_id: int) -> None:
    """Push one invoice to Stripe exactly once (``billing.stripe_sync``: safe twice, concurrently
    and after a crash, so ``acks_late`` redelivery is harmless). Transient Stripe errors, and
    another worker holding the billing account's Stripe lock, are retried with exponential
    backoff (30 s, 60 s, … capped at an hour). A declined card is no error: the invoice records
    ``payment_failed_at`` and the webhook starts dunning. A no-op without ``STRIPE_API_KEY``; an
    invoice already in Stripe only has its status refreshed."""
    invoice = Invoice.objects.filter(pk=invoice_id).first()
    if invoice is None or not stripe_enabled():
        return
    try:
        invoice_sync_stripe(invoice=invoice)
    except (*TRANSIENT_ERRORS, AccountSyncBusy) as exc:
        countdown = min(SYNC_RETRY_MAX_DELAY, 30 * 2**self.request.retries)
        raise self.retry(exc=exc, countdown=countdown) from exc


def enqueue_stripe_sync(*, invoice_ids: list[int] | None = None) -> list[int]:
    """Enqueue ``invoice_sync_task`` once the current transaction commits (so the worker sees
    the rows): for ``invoice_ids``, or by default every invoice not yet synced (which also
    re-sends those whose earlier sync gave up). Returns the invoice ids; none when Stripe is off."""
    if not stripe_enabled():
        return []
    if invoice_ids is None:
        invoice_ids = list(Invoice.objects.needing_stripe_sync().order_by("pk").values_list("pk", flat=True))
    for invoice_id in invoice_ids:
        transaction.on_commit(lambda invoice_id=invoice_id: invoice_sync_task.delay(invoice_id))
    return invoice_ids


# --- Stripe webhooks and dunning (billing.webhooks, billing.dunning) ---------------------------

EVENT_MAX_RETRIES = 8
EVENT_RETRY_MAX_DELAY = 3600  # seconds


@shared_task(bind=True, max_retries=EVENT_MAX_RETRIES, acks_late=True)
def stripe_event_process_task(self: Task, event_pk: int) -> str:
    """Process one stored Stripe event (``billing.webhooks.stripe_event_process``); returns
    ``processed``, ``ignored`` or ``skipped``. A failure (its error is on the event) is retried
    with exponential backoff: 15 s, 30 s, … capped at an hour, 8 retries; after that the sweep
    (``stripe_events_process_pending_task``) tries again until ``MAX_ATTEMPTS``."""
    from billing.webhooks import StripeEventFailed, stripe_event_process

    try:
        return stripe_event_process(event_pk=event_pk).result
    except StripeEventFailed as exc:
        countdown = min(EVENT_RETRY_MAX_DELAY, 15 * 2**self.request.retries)
        raise self.retry(exc=exc, countdown=countdown) from exc


@shared_task
def stripe_events_process_pending_task() -> list[int]:
    """Enqueue ``stripe_event_process_task`` for stored events whose task was lost (broker down
    at receipt, worker killed): unprocessed, received over a minute ago, unclaimed or with an
    expired claim (``billing.webhooks.stripe_events_pending``). Returns their ids; safe to run
    any time, since processing claims each event."""
    from billing.webhooks import stripe_events_pending

    event_pks = stripe_events_pending()
    for event_pk in event_pks:
        stripe_event_process_task.delay(event_pk)
    return event_pks


@shared_task
def dunning_advance_task() -> dict[str, int]:
    """Suspend dunning cases past their grace period and send due reminders
    (``billing.dunning.dunning_advance``). Run by beat every ``BILLING_DUNNING_SCHEDULE_SECONDS``;
    safe to run twice or concurrently."""
    from billing.dunning import dunning_advance

    return dunning_advance(now=timezone.now())
