"""Billing's Celery tasks and management command: close a period, then push to Stripe after commit."""

from __future__ import annotations

from datetime import UTC, datetime
from io import StringIO

import pytest
import stripe
from django.core.management import call_command

from billing.models import Invoice
from billing.tasks import SYNC_MAX_RETRIES, invoice_period_task, invoice_sync_task


@pytest.fixture
def october_usage(bob_subscription, record_usage) -> None:
    record_usage(bob_subscription, datetime(2026, 10, 3, tzinfo=UTC), 12_345, 1_000)


def test_period_task_creates_the_invoice_and_pushes_it_to_stripe_after_commit(
    stripe_settings, stripe_client, celery_eager, october_usage, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        created = invoice_period_task.delay("2026-10-01", "2026-11-01").get()

    invoice = Invoice.objects.get()
    assert created == [invoice.pk]
    assert len(callbacks) == 1  # one sync per invoice, enqueued only once the rows are committed
    assert invoice.stripe_synced_at is not None
    assert stripe_client.v1.invoices.retrieve(invoice.stripe_invoice_id).subtotal == 5350


def test_period_task_without_stripe_key_only_writes_the_ledger(
    settings, celery_eager, october_usage, django_capture_on_commit_callbacks
):
    settings.STRIPE_API_KEY = ""
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        invoice_period_task.delay("2026-10-01", "2026-11-01").get()

    assert callbacks == []
    assert Invoice.objects.get().stripe_synced_at is None


def test_sync_task_for_a_missing_invoice_does_nothing(stripe_settings, celery_eager, db):
    invoice_sync_task.delay(999_999).get()


def test_invoice_period_command_prints_what_it_created_and_syncs(
    stripe_settings, stripe_client, bob, october_usage
):
    out = StringIO()
    call_command("invoice_period", "--start", "2026-10-01", "--end", "2026-11-01", "--sync", stdout=out)

    invoice = Invoice.objects.get()
    output = out.getvalue()
    assert "1 new invoice(s)" in output
    assert f"Invoice {invoice.pk}  bob@example.com  October 2026  $53.50" in output
    assert "$4.50" in output and "$49.00" in output
    assert f"Stripe {invoice.stripe_invoice_id} (draft)" in output

    again = StringIO()
    call_command("invoice_period", "--start", "2026-10-01", "--end", "2026-11-01", stdout=again)
    assert "0 new invoice(s)" in again.getvalue()
    assert Invoice.objects.count() == 1


def test_sync_task_gives_up_after_its_last_retry_and_keeps_the_error(
    stripe_settings, celery_eager, october_usage
):
    call_command("invoice_period", "--start", "2026-10-01", "--end", "2026-11-01", stdout=StringIO())
    invoice = Invoice.objects.get()
    stripe_settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens: a transient error

    with pytest.raises(stripe.APIConnectionError):
        invoice_sync_task.apply(args=[invoice.pk], retries=SYNC_MAX_RETRIES, throw=True)

    invoice.refresh_from_db()
    assert "APIConnectionError" in invoice.stripe_error
    assert invoice.stripe_synced_at is None and invoice.total_minor == 5350
