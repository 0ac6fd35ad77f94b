"""``manage.py load_demo_billing``: two months of billing history, so `make run` shows the billing
side at once (invoices, revenue, the admin's desk).

Run after ``load_demo``. The demo consumer, approved by the admin to pay by invoice, gets a
second application, "Demo backtesting", subscribed (approved) to the train-departures "Business"
plan since the start of the month before last, with demo usage for every day of both months.
Then, as it would have happened:

1. the month before last is invoiced; the consumer paid it by transfer a few days later
   (status ``paid``, ``paid_at``);
2. some of its usage reached analytics late (a gateway process restarted before its flush) and
   the admin re-ran that usage window: an adjustment ledger entry with the admin's reason;
3. the admin credited the consumer for an outage;
4. last month is invoiced: its lines, the late usage adjustment and the credit (a negative line);
   the consumer paid it (status ``paid``, ``paid_at``).

These two invoices are made-up history, settled outside Stripe: they are marked synced without a
Stripe invoice, so the Stripe sync leaves their statuses alone; both are paid, so no open invoice
without a way to pay it is shown. Their ledger entries are dated as beat would have written them
(just after each usage window closed), never after the invoice that billed them was issued.
Any other unsynced invoice is queued for the worker to push to Stripe when Stripe is configured
(`make run` starts localstripe).

Idempotent: a second run adds no usage, entry, credit or invoice. A database whose last month is
already invoiced keeps its history, except that an open demo invoice settled outside Stripe (from
an earlier version of this command) is marked paid. Demo only: the usage is made up.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Sum
from django.utils import timezone

from analytics.queries import usage_totals
from analytics.services import usage_record_batch
from billing.ledger import window_rerun
from billing.models import BillingAccount, Credit, Invoice, LedgerEntry
from billing.payments import invoicing_approve
from billing.services import billing_period_containing, invoice_period_close, issue_credit, last_closed_period
from billing.tasks import enqueue_stripe_sync
from portal.models import Application, BusinessPlan, Subscription, User
from portal.services.subscriptions import application_create, subscription_approve, subscription_create

CONSUMER_EMAIL = "consumer@eventgate.local"
ADMIN_EMAIL = "admin@eventgate.local"
APPLICATION_NAME = "Demo backtesting"
API_SLUG, PLAN_NAME, CHANNEL = "train-departures", "Business", "departures/{station}"
EVENTS_PER_DAY = (18_000, 26_000)  # about 660,000 events in a month: over the plan's 500,000
BYTES_PER_EVENT = 310
# The late usage: events of one window of the month before last that reached analytics after
# the window closed, and why the admin re-ran it.
LATE_DAY, LATE_HOUR, LATE_EVENTS = 10, 12, 4_200
RERUN_REASON = "Gateway process restarted before its flush; usage recovered from its log (demo)."
# Beat closes a usage window a grace period after it ends, at its next run a few minutes later.
LEDGER_CLOSE_DELAY_MINUTES = 2
CREDIT_MINOR = 500
CREDIT_REASON = "Apology for the 40-minute delivery outage on the 18th (demo)."


class Command(BaseCommand):
    help = "Give the demo consumer a paid subscription with two months of invoices (demo only)."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            consumer = User.objects.get(email=CONSUMER_EMAIL)
            admin = User.objects.get(email=ADMIN_EMAIL)
            plan = BusinessPlan.objects.get(api__slug=API_SLUG, name=PLAN_NAME)
        except (User.DoesNotExist, BusinessPlan.DoesNotExist) as missing:
            raise CommandError(f"{missing} Run `manage.py load_demo` first.") from None
        last = last_closed_period(now=timezone.now())
        before = billing_period_containing(last[0] - timedelta(days=1))
        invoices = Invoice.objects.filter(account__owner=consumer)
        if invoices.filter(period_start=last[0], period_end=last[1]).exists():
            _settle_history(invoices=invoices)
            self.stdout.write(f"Demo billing: {last[0]:%B %Y} is already invoiced; nothing to do.")
            return

        subscription = _demo_subscription(consumer=consumer, admin=admin, plan=plan, since=before[0])
        for start, end in (before, last):
            if not usage_totals(subscriptions=[subscription.pk], start=start, end=end).events:
                usage_record_batch(rows=_demo_usage(subscription_id=subscription.pk, start=start, end=end))

        created = invoice_period_close(period_start=before[0], period_end=before[1])
        window = before[0].replace(day=LATE_DAY, hour=LATE_HOUR)
        try:
            _late_usage(
                subscription=subscription,
                admin=admin,
                window=window,
                at=before[1] + timedelta(days=2, hours=10),
            )
        except ValueError as error:  # e.g. a database whose ledger starts after that window
            self.stdout.write(f"Demo billing: no late usage adjustment ({error})")
        account, _ = BillingAccount.objects.get_or_create(owner=consumer)
        if not Credit.objects.filter(account=account, reason=CREDIT_REASON).exists():
            credit = issue_credit(
                account=account,
                amount_minor=CREDIT_MINOR,
                currency=plan.currency,
                reason=CREDIT_REASON,
                by=admin,
            )
            Credit.objects.filter(pk=credit.pk).update(
                created=min(timezone.now(), last[0] + timedelta(days=18, hours=15))
            )
        created += invoice_period_close(period_start=last[0], period_end=last[1])
        _history_statuses(invoices=invoices, before=before, last=last)
        _history_ledger_dates(invoices=invoices.filter(period_start__in=[before[0], last[0]]))

        queued = enqueue_stripe_sync()
        self.stdout.write(
            f"Demo billing: {len(created)} new invoice(s) for {before[0]:%B} and {last[0]:%B %Y}; "
            f"{len(queued)} queued for Stripe."
        )


def _demo_subscription(*, consumer: User, admin: User, plan: BusinessPlan, since: Any) -> Subscription:
    # The demo consumer pays by invoice (bank transfer), approved by the admin: paid plans need
    # that or a card (billing.payments.require_payment_method), and no card exists before Stripe runs.
    account, _ = BillingAccount.objects.get_or_create(owner=consumer)
    if not account.can_pay:
        invoicing_approve(account=account, by=admin)
    application = Application.objects.filter(owner=consumer, name=APPLICATION_NAME).first()
    if application is None:
        application = application_create(
            owner=consumer,
            name=APPLICATION_NAME,
            description="Replays departures for timetable analysis (demo).",
        )
    subscription = application.subscriptions.filter(api=plan.api).exclude(status="rejected").first()
    if subscription is None:
        subscription = subscription_create(application=application, plan=plan)
    if subscription.status == Subscription.Status.PENDING:
        subscription = subscription_approve(subscription=subscription, approver=admin)
    # Demo history: the subscription has been live since the start of the month before last.
    Subscription.objects.filter(pk=subscription.pk, created__gt=since).update(
        created=since, activated_at=since
    )
    return subscription


def _demo_usage(*, subscription_id: int, start: Any, end: Any) -> list[tuple]:
    rng = random.Random(f"{subscription_id}-{start:%Y-%m}")  # the same made-up month on every machine
    rows, day = [], start
    while day < end:
        events = rng.randint(*EVENTS_PER_DAY)
        rows.append(
            (subscription_id, day + timedelta(hours=12), CHANNEL, "out", events, events * BYTES_PER_EVENT)
        )
        day += timedelta(days=1)
    return rows


def _late_usage(*, subscription: Subscription, admin: User, window: datetime, at: datetime) -> None:
    """Usage of ``window`` (closed and invoiced) that reaches analytics only now, and the
    admin's re-run that records it as an adjustment entry (dated ``at``, as history); once.
    Raises ``ValueError`` when the window cannot be re-run (``window_rerun``)."""
    entries = LedgerEntry.objects.filter(subscription=subscription, window_start=window)
    if entries.filter(kind=LedgerEntry.Kind.ADJUSTMENT).exists():
        return
    billed = entries.aggregate(events=Sum("events"))["events"] or 0
    seen = usage_totals(subscriptions=[subscription.pk], start=window, end=window + timedelta(hours=1)).events
    if seen == billed:  # not recorded yet (a run that stopped in between already did)
        minute = window + timedelta(minutes=37)
        usage_record_batch(
            rows=[(subscription.pk, minute, CHANNEL, "out", LATE_EVENTS, LATE_EVENTS * BYTES_PER_EVENT)]
        )
    written = window_rerun(start=window, by=admin, reason=RERUN_REASON)
    LedgerEntry.objects.filter(pk__in=[entry.pk for entry in written]).update(created=min(timezone.now(), at))


def _history_statuses(
    *, invoices: Any, before: tuple[datetime, datetime], last: tuple[datetime, datetime]
) -> None:
    """Both months were issued an hour after they ended, as beat would have, and paid by transfer
    two days later: settled outside Stripe (synced, no Stripe invoice)."""
    now = timezone.now()
    history = invoices.filter(stripe_synced_at__isnull=True, stripe_invoice_id="")
    for start, end in (before, last):
        issued = min(now, end + timedelta(hours=1, minutes=5))
        paid = min(now, issued + timedelta(days=2, hours=3, minutes=12))
        history.filter(period_start=start, period_end=end).update(
            status=Invoice.Status.PAID, issued_at=issued, paid_at=paid, stripe_synced_at=issued
        )


def _settle_history(*, invoices: Any) -> None:
    """An open demo invoice settled outside Stripe (synced, no Stripe invoice, nothing to pay
    it with) becomes paid two days after it was issued, as ``_history_statuses`` writes it now."""
    now = timezone.now()
    open_history = invoices.filter(
        status=Invoice.Status.OPEN,
        stripe_synced_at__isnull=False,
        stripe_invoice_id="",
        hosted_invoice_url="",
    )
    for invoice in open_history:
        paid = min(now, (invoice.issued_at or now) + timedelta(days=2, hours=3, minutes=12))
        Invoice.objects.filter(pk=invoice.pk, status=Invoice.Status.OPEN).update(
            status=Invoice.Status.PAID, paid_at=paid
        )


def _history_ledger_dates(*, invoices: Any) -> None:
    """Usage entries (revision 0) of the demo invoices dated as beat writes them: just after their
    window closed (``BILLING_GRACE_SECONDS`` after it ended), never after the invoice's made-up
    ``issued_at``, not when this command ran. Adjustments keep the re-run's date, which is before
    the invoice billing them."""
    now = timezone.now()
    grace = timedelta(seconds=settings.BILLING_GRACE_SECONDS, minutes=LEDGER_CLOSE_DELAY_MINUTES)
    for invoice in invoices.exclude(issued_at=None):
        entries = LedgerEntry.objects.filter(invoice=invoice, revision=0).only("pk", "window_end")
        for entry in entries:
            closed = min(now, invoice.issued_at, entry.window_end + grace)
            LedgerEntry.objects.filter(pk=entry.pk).exclude(created=closed).update(created=closed)
