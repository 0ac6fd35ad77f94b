"""Close one billing period on demand and print the invoices it created.

    python manage.py invoice_period --start 2026-10-01 --end 2026-11-01 [--sync]

Bounds are ISO 8601 dates (midnight UTC) or datetimes; ``--end`` is exclusive. Running it again
creates nothing new. ``--sync`` then pushes the period's invoices not yet in Stripe, right here
rather than through Celery.
"""

from __future__ import annotations

from typing import Any

import stripe
from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.models import Invoice
from billing.services import invoice_period_close, parse_period_bound
from billing.stripe_sync import AccountSyncBusy, invoice_sync_stripe, stripe_client, stripe_enabled
from portal.money import format_money


class Command(BaseCommand):
    help = "Close a billing period [--start, --end) into invoices; optionally push them to Stripe."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--start", required=True, help="Period start, e.g. 2026-10-01 (UTC).")
        parser.add_argument("--end", required=True, help="Period end (exclusive), e.g. 2026-11-01 (UTC).")
        parser.add_argument("--sync", action="store_true", help="Push the period's invoices to Stripe now.")
        parser.add_argument(
            "--allow-open",
            action="store_true",
            help="Close a period that has not ended yet (demos; later usage in it becomes an adjustment "
            "on the next invoice).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            start, end = parse_period_bound(options["start"]), parse_period_bound(options["end"])
            created = invoice_period_close(
                period_start=start, period_end=end, allow_open=options["allow_open"]
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

        self.stdout.write(
            f"Period {start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} UTC: {len(created)} new invoice(s)."
        )
        for invoice in created:
            self._print_invoice(invoice)

        if options["sync"]:
            self._sync(Invoice.objects.filter(period_start=start, period_end=end).needing_stripe_sync())

    def _print_invoice(self, invoice: Invoice) -> None:
        self.stdout.write(
            f"Invoice {invoice.pk}  {invoice.account.owner}  {invoice.period_label}  "
            f"{format_money(invoice.total_minor, invoice.currency)}"
        )
        for line in invoice.lines.all():
            self.stdout.write(
                f"    {format_money(line.amount_minor, invoice.currency):>12}  {line.description}"
            )

    def _sync(self, invoices: Any) -> None:
        if not stripe_enabled():
            self.stdout.write("Stripe sync skipped: STRIPE_API_KEY is not set.")
            return
        client, failures = stripe_client(), 0
        if not invoices.exists():
            self.stdout.write("Nothing to push to Stripe: every invoice of the period is there.")
        for invoice in invoices.order_by("pk"):
            try:
                invoice = invoice_sync_stripe(invoice=invoice, client=client)
            except (stripe.StripeError, AccountSyncBusy) as exc:
                failures += 1
                self.stderr.write(f"Invoice {invoice.pk}: Stripe sync failed: {exc}")
                continue
            self.stdout.write(f"Invoice {invoice.pk} → Stripe {invoice.stripe_invoice_id} ({invoice.status})")
        if failures:
            raise CommandError(f"{failures} invoice(s) could not be pushed to Stripe; they keep their error.")
