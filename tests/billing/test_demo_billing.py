"""``load_demo_billing``: two months of the demo consumer's billing history whose invoices bill
exactly what analytics shows, written once however often the command runs."""

from __future__ import annotations

import io

from django.core.management import call_command
from django.db.models import F

from analytics.services import usage_for_subscription
from billing.models import Credit, Invoice, LedgerEntry


def test_demo_billing_gives_the_demo_consumer_two_months_of_history(db, tmp_path):
    call_command("load_demo", credentials=tmp_path / "demo.json", stdout=io.StringIO())
    call_command("load_demo_billing", stdout=io.StringIO())
    call_command("load_demo_billing", stdout=io.StringIO())

    before, last = Invoice.objects.filter(account__owner__email="consumer@eventgate.local").order_by(
        "period_start"
    )
    # Settled outside Stripe, so both are paid: no open invoice without a way to pay it.
    assert before.status == Invoice.Status.PAID and before.issued_at < before.paid_at < last.issued_at
    assert last.status == Invoice.Status.PAID and last.issued_at < last.paid_at
    assert before.period_end == last.period_start
    # Ledger entries are dated when beat would have written them, before the invoice billing them.
    for invoice in (before, last):
        entries = LedgerEntry.objects.filter(invoice=invoice)
        assert entries.exists()
        assert entries.filter(created__gt=invoice.issued_at).count() == 0, invoice.period_label
        assert entries.filter(revision=0, created__lt=F("window_end")).count() == 0

    # Each month's events line is what analytics counted for it at close: last month's equals
    # analytics; the month before last plus its late adjustment equals analytics now.
    [events_line] = last.lines.filter(kind="events")
    subscription = events_line.subscription
    usage = usage_for_subscription(subscription=subscription, start=last.period_start, end=last.period_end)
    assert events_line.events == usage.events > 500_000, "more than the Business plan includes"
    [adjustment] = LedgerEntry.objects.filter(subscription=subscription, kind="adjustment")
    assert adjustment.invoice == last and adjustment.created_by.email == "admin@eventgate.local"
    assert "restarted before its flush" in adjustment.reason
    [earlier_events] = before.lines.filter(kind="events")
    earlier = usage_for_subscription(
        subscription=subscription, start=before.period_start, end=before.period_end
    )
    assert earlier_events.events + adjustment.events == earlier.events

    # Last month: base fee, events, the late usage of the month before, and the credit.
    [late_line] = last.lines.filter(kind="adjustment")
    [credit_line] = last.lines.filter(kind="credit")
    [credit] = Credit.objects.filter(account=last.account)
    assert credit.invoice == last and credit_line.amount_minor == -credit.amount_minor < 0
    blocks = -(-(usage.events - 500_000) // 1000)
    assert late_line.amount_minor > 0
    assert last.total_minor == 1900 + 3 * blocks + late_line.amount_minor - credit.amount_minor
    assert sum(line.amount_minor for line in last.lines.all()) == last.total_minor


def test_demo_billing_settles_an_open_demo_invoice_of_an_earlier_run(db, tmp_path):
    """A database from an earlier version (the month before last left open, settled outside
    Stripe) gets it paid on the next run; nothing else changes."""
    call_command("load_demo", credentials=tmp_path / "demo.json", stdout=io.StringIO())
    call_command("load_demo_billing", stdout=io.StringIO())
    before, last = Invoice.objects.filter(account__owner__email="consumer@eventgate.local").order_by(
        "period_start"
    )
    Invoice.objects.filter(pk=before.pk).update(status=Invoice.Status.OPEN, paid_at=None)
    entries = LedgerEntry.objects.count()

    call_command("load_demo_billing", stdout=io.StringIO())

    before.refresh_from_db()
    assert before.status == Invoice.Status.PAID and before.paid_at > before.issued_at
    assert LedgerEntry.objects.count() == entries and Invoice.objects.count() == 2
