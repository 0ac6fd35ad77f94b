"""Dunning: reminders at their times and never twice, suspension after the grace period of exactly
the account's active paid subscriptions, and reinstatement of exactly those when the invoice is
paid — driven by signed webhooks, as Stripe would; invoices never paid nor failed are chased once
overdue; and no paid plan can be taken while an invoice is being chased."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.db import connection

from billing.dunning import dunning_advance
from billing.models import DunningCase, DunningSuspension, Invoice, StripeEvent
from billing.services import invoice_period_close
from portal.models import Subscription
from portal.services.subscriptions import (
    subscription_cancel,
    subscription_create,
    subscription_plan_change,
    subscription_reinstate,
    subscription_suspend,
)
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


def race(now: datetime, workers: int = 4) -> list[dict[str, int]]:
    """``dunning_advance(now=now)`` in ``workers`` threads released at once (a barrier); each
    thread's result."""
    barrier, results = threading.Barrier(workers), []

    def run() -> None:
        try:
            barrier.wait()
            results.append(dunning_advance(now=now))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_reminders_go_out_at_their_times_then_the_suspension(deliver, advance, october_invoice):
    case = fail(deliver, october_invoice)
    start = case.started_at
    what = "Eventgate invoice for October 2026 ($53.50)"
    assert subjects() == [f"Payment failed: {what}"]

    assert advance(start + DAY) == {"suspended": 0, "reminded": 0, "overdue": 0}
    assert advance(start + 3 * DAY) == {"suspended": 0, "reminded": 1, "overdue": 0}
    assert advance(start + 3 * DAY + timedelta(hours=1)) == {"suspended": 0, "reminded": 0, "overdue": 0}
    # A beat that stopped for days sends one reminder, not the missed ones in a burst.
    assert advance(start + 8 * DAY) == {"suspended": 0, "reminded": 1, "overdue": 0}
    assert advance(start + 9 * DAY) == {"suspended": 0, "reminded": 1, "overdue": 0}
    assert advance(start + 9 * DAY + timedelta(hours=12)) == {"suspended": 0, "reminded": 0, "overdue": 0}
    assert advance(start + 10 * DAY) == {"suspended": 1, "reminded": 0, "overdue": 0}
    assert advance(start + 13 * DAY) == {"suspended": 0, "reminded": 0, "overdue": 0}

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
    assert advance(datetime.now(UTC) + 30 * DAY) == {"suspended": 0, "reminded": 0, "overdue": 0}


def test_payment_within_the_grace_period_ends_dunning_without_a_suspension(
    deliver, advance, october_invoice, bob_subscription
):
    case = fail(deliver, october_invoice)
    pay(deliver, october_invoice, "invoice.payment_succeeded")
    pay(deliver, october_invoice, "invoice.paid")  # real Stripe sends both

    assert advance(case.suspend_at + DAY) == {"suspended": 0, "reminded": 0, "overdue": 0}
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

    reminders = race(start + 3 * DAY + timedelta(minutes=1))
    assert sum(result["reminded"] for result in reminders) == len(invoices) == 4
    assert sorted(email.to[0] for email in mail.outbox) == sorted(i.account.owner.email for i in invoices)

    suspensions = race(start + 10 * DAY + timedelta(minutes=1))
    assert sum(result["suspended"] for result in suspensions) == 4
    assert len(mail.outbox) == 8 and all("suspended" in email.subject for email in mail.outbox[4:])
    assert DunningSuspension.objects.count() == 4
    assert not Subscription.objects.filter(status="active").exists()


# --- no paid plan while an invoice is chased -------------------------------------------------------


def test_a_suspended_consumer_cannot_cancel_and_subscribe_again_until_the_invoice_is_paid(
    deliver, advance, client, bob, october_invoice, bob_subscription, metered_plan, free_plan
):
    app = bob_subscription.application
    refusal = (
        "Your invoice for October 2026 ($53.50) is unpaid: pay it at "
        f"/billing/invoices/{october_invoice.pk}/ before subscribing to the paid Metered plan. "
        "Free plans stay open to you."
    )
    case = fail(deliver, october_invoice)
    with pytest.raises(ValidationError) as reminding:  # refused while reminding already
        subscription_create(application=ApplicationFactory(owner=bob, name="Backtester"), plan=metered_plan)
    assert reminding.value.message_dict == {"plan": [refusal]}
    advance(case.suspend_at)
    subscription_cancel(subscription=bob_subscription, actor=bob)

    with pytest.raises(ValidationError) as refused:
        subscription_create(application=app, plan=metered_plan)
    [error] = refused.value.error_dict["plan"]
    assert (error.code, error.message) == ("unpaid_invoice", refusal)
    # Free plans stay open, but moving to a paid one is refused too; through REST alike.
    free = subscription_create(application=app, plan=free_plan)
    with pytest.raises(ValidationError) as moving:
        subscription_plan_change(subscription=free, plan=metered_plan, by=bob)
    assert moving.value.message_dict == {"plan": [refusal]}
    subscription_cancel(subscription=free, actor=bob)
    client.force_login(bob)
    response = client.post(
        f"/api/v1/applications/{app.pk}/subscriptions/",
        {"plan": metered_plan.pk},
        content_type="application/json",
    )
    assert (response.status_code, response.json()) == (400, {"plan": [refusal]})
    assert not Subscription.objects.filter(application__owner=bob, status="active").exists()

    pay(deliver, october_invoice)

    assert subscription_create(application=app, plan=metered_plan).status == "active"


# --- invoices never paid nor failed ---------------------------------------------------------------

ISSUED = datetime(2026, 11, 1, 1, tzinfo=UTC)


def issued_and_pushed(invoice: Invoice, **fields) -> Invoice:
    """The invoice as the Stripe sync leaves it for an account that pays by invoice (or has no
    card): open in Stripe, issued at ``ISSUED``, no payment attempted."""
    Invoice.objects.filter(pk=invoice.pk).update(
        **{"status": "open", "issued_at": ISSUED, "stripe_synced_at": ISSUED, **fields}
    )
    return Invoice.objects.get(pk=invoice.pk)


def test_an_invoice_unpaid_past_its_due_date_starts_dunning_without_a_failed_payment(
    advance, webhook_secret, october_invoice, bob_subscription
):
    invoice = issued_and_pushed(october_invoice)
    due = ISSUED + 30 * DAY

    assert advance(due - timedelta(minutes=1)) == {"suspended": 0, "reminded": 0, "overdue": 0}
    assert advance(due + timedelta(minutes=1)) == {"suspended": 0, "reminded": 0, "overdue": 1}

    case = DunningCase.objects.get(invoice=invoice)
    assert (case.state, case.failures, case.last_failure_message) == ("open", 1, "Payment overdue")
    assert case.suspend_at == due + timedelta(minutes=1) + 10 * DAY
    assert subjects() == ["Payment overdue: Eventgate invoice for October 2026 ($53.50)"]
    assert f"https://eventgate.example.com/billing/invoices/{invoice.pk}/" in mail.outbox[0].body
    assert "is overdue: it was due 30 days after it was issued." in mail.outbox[0].body
    assert "could not collect" not in mail.outbox[0].body
    assert advance(due + DAY) == {"suspended": 0, "reminded": 0, "overdue": 0}  # opened once
    assert advance(case.suspend_at)["suspended"] == 1
    assert status(bob_subscription) == "suspended"


def test_the_due_date_follows_the_setting(advance, settings, october_invoice):
    settings.BILLING_INVOICE_DUE_DAYS = 45
    issued_and_pushed(october_invoice)

    assert advance(ISSUED + 31 * DAY)["overdue"] == 0
    assert advance(ISSUED + 46 * DAY)["overdue"] == 1


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"status": "paid"}, id="paid"),
        pytest.param({"status": "draft"}, id="not-finalized"),
        pytest.param({"status": "void"}, id="void"),
        pytest.param({"stripe_synced_at": None}, id="not-in-stripe"),
        pytest.param({"total_minor": 0}, id="nothing-to-pay"),
    ],
)
def test_invoices_nobody_owes_are_not_chased(advance, october_invoice, fields):
    issued_and_pushed(october_invoice, **fields)

    assert advance(ISSUED + 90 * DAY)["overdue"] == 0
    assert not DunningCase.objects.exists() and mail.outbox == []


def test_an_overdue_invoice_already_chased_for_a_failed_payment_gets_no_second_case(
    deliver, advance, october_invoice
):
    fail(deliver, october_invoice)
    issued_and_pushed(october_invoice)

    assert advance(ISSUED + 31 * DAY)["overdue"] == 0
    assert DunningCase.objects.get().failures == 1 and len(mail.outbox) == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_runs_open_one_case_and_send_one_email_per_overdue_invoice(metered_plan, bob_subscription):
    for n in range(3):
        owner = UserFactory(email=f"late{n}@example.com")
        SubscriptionFactory(
            application=ApplicationFactory(owner=owner), plan=metered_plan, created=OCTOBER[0] - DAY
        )
    invoices = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])
    for invoice in invoices:
        issued_and_pushed(invoice)

    results = race(ISSUED + 31 * DAY)

    assert DunningCase.objects.count() == len(invoices) == 4
    assert sum(result["overdue"] for result in results) == 4
    assert sorted(email.to[0] for email in mail.outbox) == sorted(i.account.owner.email for i in invoices)
    assert all(email.subject.startswith("Payment overdue: ") for email in mail.outbox)
