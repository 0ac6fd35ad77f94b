"""``manage.py bench_billing``: what closing a month through the usage ledger costs, against a
baseline measured in the same run (docs/performance.md › Billing).

Creates a bench API, plan and ``--subscriptions`` subscriptions with one minute row of usage per
subscription per hour of a past month (so every usage window has an entry for everyone), rolled
up into hour and day rows as analytics' beat task does, then times, on this database:

- **baseline**: what invoicing did before the ledger — one ``usage_for_subscription`` read per
  subscription over the month;
- **close**: ``ledger_close_windows`` for the month's windows (one ledger entry per subscription
  per hour);
- **reconcile**: ``ledger_reconcile`` over the month with nothing late (the cost beat pays every
  ``BILLING_LEDGER_SECONDS``);
- **invoice**: ``invoice_period_close`` from the ledger (entries claimed, lines built).

Prints each figure in seconds with its ratio to the baseline. Everything it writes is rolled
back at the end (one transaction), so it can run against any database; use the bench database
(``make bench-billing``).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from analytics.rollup import rollup_days, rollup_hours
from analytics.services import usage_for_subscription, usage_record_batch
from billing.ledger import frontier, ledger_close_windows, ledger_reconcile
from billing.models import LedgerEntry
from billing.services import invoice_period_close
from portal.models import API, Application, BusinessPlan, Subscription, User


class _Rollback(Exception):
    pass


class Command(BaseCommand):
    help = "Benchmark closing a month through the usage ledger against direct analytics reads."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--subscriptions", type=int, default=200, help="Subscriptions (default 200).")
        parser.add_argument("--days", type=int, default=30, help="Days of hourly usage (default 30).")

    def handle(self, *args: Any, **options: Any) -> None:
        count, days = options["subscriptions"], options["days"]
        if not (1 <= count <= 100_000) or not (1 <= days <= 31):
            raise CommandError("--subscriptions must be 1–100,000 and --days 1–31.")
        if frontier() is not None:
            raise CommandError(
                "This database has a usage ledger already; run the bench against one without "
                "(`make bench-billing` uses eventgate_bench). Nothing was changed."
            )
        figures: dict[str, float] = {}
        try:
            with transaction.atomic():
                subscriptions, start = self._fixture(count, days)
                end = start + timedelta(days=days)
                ids = [subscription.pk for subscription in subscriptions]

                began = time.perf_counter()
                for subscription in subscriptions:
                    usage_for_subscription(subscription=subscription, start=start, end=end)
                figures["baseline"] = time.perf_counter() - began

                began = time.perf_counter()
                ledger_close_windows(until=end, begin=start)
                figures["close"] = time.perf_counter() - began
                entries = LedgerEntry.objects.filter(subscription_id__in=ids).count()

                began = time.perf_counter()
                late = ledger_reconcile(start=start, end=end)
                figures["reconcile"] = time.perf_counter() - began

                began = time.perf_counter()
                invoices = invoice_period_close(period_start=start, period_end=end, allow_open=True)
                figures["invoice"] = time.perf_counter() - began
                raise _Rollback
        except _Rollback:
            pass
        self.stdout.write(
            f"Billing bench: {count:,} subscriptions × {days} days of hourly usage "
            f"({entries:,} ledger entries, {len(invoices)} invoice(s), {len(late)} adjustments)"
        )
        self.stdout.write(f"{'step':<12}{'seconds':>10}{'× baseline':>12}{'µs per entry':>14}")
        for name, seconds in figures.items():
            ratio = seconds / figures["baseline"] if figures["baseline"] else float("nan")
            per_entry = seconds / entries * 1e6 if entries else float("nan")
            self.stdout.write(f"{name:<12}{seconds:>10.3f}{ratio:>12.2f}{per_entry:>14.1f}")

    def _fixture(self, count: int, days: int) -> tuple[list[Subscription], datetime]:
        """A bench provider, API, plan and ``count`` subscriptions with one usage row per hour."""
        provider = User.objects.create(email="bench-billing-provider@example.invalid", is_provider=True)
        consumer = User.objects.create(email="bench-billing-consumer@example.invalid")
        api = API.objects.create(provider=provider, name="Bench billing", slug="bench-billing")
        plan = BusinessPlan.objects.create(
            api=api,
            name="Bench",
            is_approved=True,
            flat_fee_minor=100,
            included_events=1_000,
            price_per_1000_events_minor=10,
        )
        # The first day of the month three months ago: closed, and within analytics' retention.
        start = (
            timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0) - timedelta(days=80)
        ).replace(day=1)
        subscriptions = []
        for index in range(count):
            application = Application.objects.create(owner=consumer, name=f"Bench {index}")
            subscriptions.append(
                Subscription.objects.create(
                    application=application, api=api, plan=plan, status="active", created=start
                )
            )
        rows = [
            (
                subscription.pk,
                start + timedelta(hours=hour, minutes=17),
                "bench/{n}",
                "out",
                10 + hour % 7,
                1_000,
            )
            for subscription in subscriptions
            for hour in range(days * 24)
        ]
        for offset in range(0, len(rows), 20_000):
            usage_record_batch(rows=rows[offset : offset + 20_000])
        # As in production, analytics has rolled the minutes up into hours and days by the time
        # beat closes a window (an hour after it ends).
        rolled = start + timedelta(days=days, hours=2)
        rollup_hours(rolled)
        rollup_days(rolled)
        return subscriptions, start
