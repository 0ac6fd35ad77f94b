"""``manage.py load_demo_billing``: a demo invoice, so `make run` shows the billing side at once.

Run after ``load_demo``. The demo consumer gets a second application, "Demo backtesting",
subscribed (approved) to the train-departures "Business" plan since the start of last month, with
demo usage for every day of last month; last month is then closed into an invoice and, when Stripe
is configured (`make run` starts localstripe), queued for the worker to push to Stripe. Idempotent:
a second run adds no usage and no invoice. Demo only: the usage is made up.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from analytics.queries import usage_totals
from analytics.services import usage_record_batch
from billing.services import invoice_period_close, last_closed_period
from billing.tasks import enqueue_stripe_sync
from portal.models import Application, BusinessPlan, Subscription, User
from portal.services.subscriptions import application_create, subscription_approve, subscription_create

CONSUMER_EMAIL = "consumer@eventgate.local"
ADMIN_EMAIL = "admin@eventgate.local"
APPLICATION_NAME = "Demo backtesting"
API_SLUG, PLAN_NAME, CHANNEL = "train-departures", "Business", "departures/{station}"
EVENTS_PER_DAY = (18_000, 26_000)  # about 660,000 events in a month: over the plan's 500,000
BYTES_PER_EVENT = 310


class Command(BaseCommand):
    help = "Give the demo consumer a paid subscription with last month's usage and its invoice (demo only)."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            consumer = User.objects.get(email=CONSUMER_EMAIL)
            admin = User.objects.get(email=ADMIN_EMAIL)
            plan = BusinessPlan.objects.get(api__slug=API_SLUG, name=PLAN_NAME)
        except (User.DoesNotExist, BusinessPlan.DoesNotExist) as missing:
            raise CommandError(f"{missing} Run `manage.py load_demo` first.") from None
        start, end = last_closed_period(now=timezone.now())
        subscription = _demo_subscription(consumer=consumer, admin=admin, plan=plan, since=start)
        if not usage_totals(subscriptions=[subscription.pk], start=start, end=end).events:
            usage_record_batch(rows=_demo_usage(subscription_id=subscription.pk, start=start, end=end))
        created = invoice_period_close(period_start=start, period_end=end)
        queued = enqueue_stripe_sync()
        self.stdout.write(
            f"Demo billing: {len(created)} new invoice(s) for {start:%B %Y}; {len(queued)} queued for Stripe."
        )


def _demo_subscription(*, consumer: User, admin: User, plan: BusinessPlan, since: Any) -> Subscription:
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
    # Demo history: the subscription has been live since the start of last month.
    Subscription.objects.filter(pk=subscription.pk, created__gt=since).update(created=since)
    return subscription


def _demo_usage(*, subscription_id: int, start: Any, end: Any) -> list[tuple]:
    rng = random.Random(subscription_id)  # the same made-up month on every machine
    rows, day = [], start
    while day < end:
        events = rng.randint(*EVENTS_PER_DAY)
        rows.append(
            (subscription_id, day + timedelta(hours=12), CHANNEL, "out", events, events * BYTES_PER_EVENT)
        )
        day += timedelta(days=1)
    return rows
