from __future__ import annotations

import io

from django.core.management import call_command

from analytics.services import usage_for_subscription
from billing.models import Invoice


def test_demo_billing_gives_the_demo_consumer_one_invoice_for_last_month(db, tmp_path):
    call_command("load_demo", credentials=tmp_path / "demo.json", stdout=io.StringIO())
    call_command("load_demo_billing", stdout=io.StringIO())
    call_command("load_demo_billing", stdout=io.StringIO())

    [invoice] = Invoice.objects.filter(account__owner__email="consumer@eventgate.local")
    [events_line] = invoice.lines.filter(kind="events")
    usage = usage_for_subscription(
        subscription=events_line.subscription, start=invoice.period_start, end=invoice.period_end
    )
    assert events_line.events == usage.events > 500_000, "more than the Business plan includes"
    blocks = -(-(usage.events - 500_000) // 1000)
    assert invoice.total_minor == 1900 + 3 * blocks
