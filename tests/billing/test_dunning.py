"""Dunning: reminders at their times and never twice, suspension after the grace period of exactly
the account's active paid subscriptions, and reinstatement of exactly those when the invoice is
paid — driven by signed webhooks, as Stripe would."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.db import connection

from billing.dunning import dunning_advance
from billing.models import DunningCase, DunningSuspension, Invoice, StripeEvent
from billing.services import invoice_period_close
from portal.models import Subscription
from portal.services.subscriptions import subscription_reinstate, subscription_suspend
from tests.billing import test_webhooks as hooks
from tests.billing.conftest import NOVEMBER, OCTOBER
from tests.factories import ApplicationFactory, SubscriptionFactory, UserFactory

DAY = timedelta(days=1)

# Fixtures shared with the webhook tests (a signed delivery through the test client, bob's
# October invoice of $53.50 as the Stripe sync leaves it).
deliver = hooks.deliver
october_invoice = hooks.october_invoice
webhook_secret = hooks.webhook_secret


@pytest.fixture(autouse=True)
def _dunning_schedule(settings) -> None:
    settings.BILLING_DUNNING_REMINDER_SECONDS = 3 * 86400
    settings.BILLING_DUNNING_GRACE_SECONDS = 10 * 86400


@pytest.fixture
def advance(django_capture_on_commit_callbacks) -> Callable[[datetime], dict[str, int]]:
    """``advance(now)``: one ``dunning_advance`` run at ``now``, its after-commit emails sent."""

    def run(now: datetime) -> dict[str, int]:
        with django_capture_on_commit_callbacks(execute=True):
            return dunning_advance(now=now)

    return run


def fail(deliver, invoice: Invoice, created: int | None = None) -> DunningCase:
    assert deliver(hooks.invoice_event("invoice.payment_failed", invoice, created=created)).status_code == 200
    return DunningCase.objects.get(invoice=invoice)


def pay(deliver, invoice: Invoice, event_type: str = "invoice.paid", **fields) -> None:
    assert deliver(hooks.invoice_event(event_type, invoice, status="paid", **fields)).status_code == 200


def subjects() -> list[str]:
    return [email.subject for email in mail.outbox]


def status(subscription: Subscription) -> str:
    return Subscription.objects.get(pk=subscription.pk).status


def test_reminders_go_out_at_their_times_then_the_suspension(deliver, advance, october_invoice):
    case = fail(deliver, october_invoice)
    start = case.started_at
    what = "Eventgate invoice for October 2026 ($53.50)"
    assert subjects() == [f"Payment failed: {what}"]

    assert advance(start + DAY) == {"suspended": 0, "reminded": 0}
    assert advance(start + 3 * DAY) == {"suspended": 0, "reminded": 1}
    assert advance(start + 3 * DAY + timedelta(hours=1)) == {"suspended": 0, "reminded": 0}
    # A beat that stopped for days sends one reminder, not the missed ones in a burst.
    assert advance(start + 8 * DAY) == {"suspended": 0, "reminded": 1}
    assert advance(start + 9 * DAY) == {"suspended": 0, "reminded": 1}
    assert advance(start + 9 * DAY + timedelta(hours=12)) == {"suspended": 0, "reminded": 0}
    assert advance(start + 10 * DAY) == {"suspended": 1, "reminded": 0}
    assert advance(start + 13 * DAY) == {"suspended": 0, "reminded": 0}

    assert subjects() == [
        f"Payment failed: {what}",
        f"Reminder: {what} is unpaid",
        f"Reminder: {what} is unpaid",
        f"Reminder: {what} is unpaid",
        f"Subscriptions suspended: {what} is unpaid",
    ]
    case.refresh_from_db()
    assert (case.state, case.reminders_sent, case.next_reminder_at) == ("suspended", 4, None)
    suspended = mail.outbox[-1]
    assert "Trading bot → Ticker (Metered)" in suspended.body
    assert f"https://eventgate.example.com/billing/invoices/{october_invoice.pk}/" in suspended.body


def test_suspension_suspends_active_paid_subscriptions_with_a_reason_that_says_how_to_pay(
    deliver, advance, bob, october_invoice, bob_subscription, free_plan
):
    free = SubscriptionFactory(application=ApplicationFactory(owner=bob, name="Free bot"), plan=free_plan)
    case = fail(deliver, october_invoice)

    advance(case.suspend_at - timedelta(seconds=1))
    assert status(bob_subscription) == "active"
    advance(case.suspend_at)

    subscription = Subscription.objects.get(pk=bob_subscription.pk)
    assert subscription.status == "suspended" and subscription.decided_by is None
    assert subscription.decision_reason == (
        f"Payment failed for invoice {october_invoice.pk} (October 2026, $53.50) — pay it at "
        f"https://eventgate.example.com/billing/invoices/{october_invoice.pk}/ to reinstate."
    )
    assert status(free) == "active"  # free plans cost nothing: nothing to suspend them for
    assert list(DunningSuspension.objects.values_list("subscription_id", flat=True)) == [bob_subscription.pk]


def test_paying_reinstates_what_dunning_suspended_but_not_an_admins_suspension(
    deliver, advance, bob, admin_user, metered_plan, october_invoice, bob_subscription
):
    second = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Backtester"), plan=metered_plan
    )
    banned = SubscriptionFactory(application=ApplicationFactory(owner=bob, name="Scraper"), plan=metered_plan)
    subscription_suspend(subscription=banned, by=admin_user, reason="Scraping the whole feed")
    case = fail(deliver, october_invoice)
    advance(case.suspend_at)
    assert (status(bob_subscription), status(second), status(banned)) == ("suspended",) * 3
    # Meanwhile an admin suspends the second subscription for a reason of their own.
    subscription_reinstate(subscription=second, by=admin_user)
    subscription_suspend(subscription=second, by=admin_user, reason="Abuse report")
    mail.outbox.clear()

    pay(deliver, october_invoice)

    assert status(bob_subscription) == "active"
    assert Subscription.objects.get(pk=second.pk).decision_reason == "Abuse report"
    assert (status(second), status(banned)) == ("suspended", "suspended")
    case.refresh_from_db()
    assert case.state == "resolved"
    [email] = mail.outbox
    assert email.subject == "Payment received: Eventgate invoice for October 2026 ($53.50)"
    assert "Trading bot → Ticker (Metered)" in email.body
    assert "Backtester" not in email.body and "Scraper" not in email.body


def test_a_late_older_payment_failure_does_not_undo_a_payment(deliver, advance, october_invoice):
    now = int(time.time())
    pay(deliver, october_invoice, created=now)
    deliver(hooks.invoice_event("invoice.payment_failed", october_invoice, created=now - 60))

    invoice = Invoice.objects.get(pk=october_invoice.pk)
    assert invoice.status == "paid" and invoice.payment_failed_at is None
    assert not DunningCase.objects.exists() and mail.outbox == []
    late = StripeEvent.objects.get(type="invoice.payment_failed")
    assert late.processed_at is not None
    assert late.note == f"ignored: invoice {october_invoice.pk} is already paid"
    assert advance(datetime.now(UTC) + 30 * DAY) == {"suspended": 0, "reminded": 0}


def test_payment_within_the_grace_period_ends_dunning_without_a_suspension(
    deliver, advance, october_invoice, bob_subscription
):
    case = fail(deliver, october_invoice)
    pay(deliver, october_invoice, "invoice.payment_succeeded")
    pay(deliver, october_invoice, "invoice.paid")  # real Stripe sends both

    assert advance(case.suspend_at + DAY) == {"suspended": 0, "reminded": 0}
    assert status(bob_subscription) == "active"
    case.refresh_from_db()
    assert (case.state, case.suspended_at) == ("resolved", None)
    assert subjects()[1:] == ["Payment received: Eventgate invoice for October 2026 ($53.50)"]


def test_voiding_the_invoice_reinstates(deliver, advance, october_invoice, bob_subscription):
    case = fail(deliver, october_invoice)
    advance(case.suspend_at)
    assert status(bob_subscription) == "suspended"

    deliver(hooks.invoice_event("invoice.voided", october_invoice, status="void"))

    assert status(bob_subscription) == "active"
    assert Invoice.objects.get(pk=october_invoice.pk).status == "void"
    assert subjects()[-1] == "Invoice voided: Eventgate invoice for October 2026 ($53.50)"


def test_with_two_unpaid_invoices_paying_one_keeps_the_suspension_until_both_are_paid(
    deliver, advance, october_invoice, bob_subscription
):
    [november] = invoice_period_close(period_start=NOVEMBER[0], period_end=NOVEMBER[1], allow_open=True)
    Invoice.objects.filter(pk=november.pk).update(stripe_invoice_id="in_november", status="open")
    november.refresh_from_db()
    october_case, november_case = fail(deliver, october_invoice), fail(deliver, november)
    advance(max(october_case.suspend_at, november_case.suspend_at))
    assert status(bob_subscription) == "suspended"

    pay(deliver, october_invoice)
    assert status(bob_subscription) == "suspended"  # November is still unpaid
    pay(deliver, november)
    assert status(bob_subscription) == "active"
    assert set(DunningCase.objects.values_list("state", flat=True)) == {"resolved"}


def test_a_second_failure_of_the_same_invoice_counts_without_a_new_case_or_email(deliver, october_invoice):
    fail(deliver, october_invoice)
    case = fail(deliver, october_invoice)

    assert (case.failures, DunningCase.objects.count(), len(mail.outbox)) == (2, 1, 1)


@pytest.mark.django_db(transaction=True)
def test_concurrent_dunning_runs_send_each_reminder_and_suspend_each_case_once(
    deliver, metered_plan, bob_subscription
):
    for n in range(3):
        owner = UserFactory(email=f"consumer{n}@example.com")
        SubscriptionFactory(
            application=ApplicationFactory(owner=owner), plan=metered_plan, created=OCTOBER[0] - DAY
        )
    invoices = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])
    for invoice in invoices:
        Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id=f"in_race{invoice.pk}", status="open")
        invoice.refresh_from_db()
        fail(deliver, invoice)
    start = min(DunningCase.objects.values_list("started_at", flat=True))
    mail.outbox.clear()

    def race(now: datetime) -> list[dict[str, int]]:
        barrier, results = threading.Barrier(4), []

        def run() -> None:
            try:
                barrier.wait()
                results.append(dunning_advance(now=now))
            finally:
                connection.close()

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        return results

    reminders = race(start + 3 * DAY + timedelta(minutes=1))
    assert sum(result["reminded"] for result in reminders) == len(invoices) == 4
    assert sorted(email.to[0] for email in mail.outbox) == sorted(i.account.owner.email for i in invoices)

    suspensions = race(start + 10 * DAY + timedelta(minutes=1))
    assert sum(result["suspended"] for result in suspensions) == 4
    assert len(mail.outbox) == 8 and all("suspended" in email.subject for email in mail.outbox[4:])
    assert DunningSuspension.objects.count() == 4
    assert not Subscription.objects.filter(status="active").exists()
