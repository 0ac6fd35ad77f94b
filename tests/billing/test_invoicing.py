"""Closing billing periods: usage from analytics × plan prices → one invoice per account and period."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from billing.models import BillingAccount, Invoice, InvoiceLine
from billing.services import events_charge, invoice_closed_periods, invoice_period_close, last_closed_period
from portal.models import Subscription
from tests.billing.conftest import NOVEMBER, OCTOBER
from tests.factories import ApplicationFactory, BusinessPlanFactory, SubscriptionFactory, UserFactory


def close_october() -> list[Invoice]:
    return invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])


def test_events_over_included_amount_are_billed_per_started_block_of_1000(
    bob, bob_subscription, record_usage
):
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 15, tzinfo=UTC), 12_000, 1_200_000)
    record_usage(bob_subscription, datetime(2026, 10, 31, 23, 59, tzinfo=UTC), 345, 34_500)  # last minute
    record_usage(bob_subscription, datetime(2026, 9, 30, 23, 59, tzinfo=UTC), 50_000, 1)  # September
    record_usage(bob_subscription, datetime(2026, 11, 1, 0, 0, tzinfo=UTC), 50_000, 1)  # November
    record_usage(
        bob_subscription, datetime(2026, 10, 5, tzinfo=UTC), 99_000, 1, direction="in"
    )  # sent by bob

    [invoice] = close_october()

    assert invoice.account.owner == bob
    assert (invoice.period_start, invoice.period_end, invoice.currency) == (*OCTOBER, "usd")
    base, events = invoice.lines.order_by("kind")
    assert (base.kind, base.quantity, base.unit_amount_minor, base.amount_minor) == (
        "base_fee",
        1,
        4900,
        4900,
    )
    # 12,345 events − 10,000 included = 2,345 → 3 started blocks of 1,000 at $1.50.
    assert (events.kind, events.quantity, events.unit_amount_minor, events.amount_minor) == (
        "events",
        3,
        150,
        450,
    )
    assert (events.events, events.bytes) == (12_345, 1_234_500)
    assert (base.events, base.bytes) == (12_345, 1_234_500)
    assert invoice.total_minor == 5350
    assert invoice.status == Invoice.Status.DRAFT
    assert "12,345 events" in events.description


def test_usage_within_included_events_costs_only_the_base_fee(bob_subscription, record_usage):
    record_usage(bob_subscription, datetime(2026, 10, 3, tzinfo=UTC), 10_000, 100)

    [invoice] = close_october()

    assert invoice.total_minor == 4900
    assert invoice.lines.get(kind="events").amount_minor == 0


@pytest.mark.parametrize(
    ("events", "blocks"), [(0, 0), (10_000, 0), (10_001, 1), (11_000, 1), (11_001, 2), (1_010_000, 1000)]
)
def test_events_charge_counts_started_blocks(metered_plan, events, blocks):
    charge = events_charge(plan=metered_plan, events=events)
    assert (charge.blocks, charge.amount_minor) == (blocks, blocks * 150)


def test_closing_a_period_twice_creates_one_invoice(bob_subscription, record_usage):
    record_usage(bob_subscription, datetime(2026, 10, 3, tzinfo=UTC), 12_345)

    first = close_october()
    record_usage(bob_subscription, datetime(2026, 10, 4, tzinfo=UTC), 5_000)  # a late flush after the close
    second = close_october()

    assert len(first) == 1 and second == []
    assert Invoice.objects.count() == 1
    invoice = Invoice.objects.get()
    assert invoice.lines.count() == 2
    assert invoice.total_minor == 5350  # issued invoices are not recomputed


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (datetime(2026, 10, 15, tzinfo=UTC), OCTOBER[1]),  # the tester's second half of October
        (datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 10, 2, tzinfo=UTC)),
        (datetime(2026, 10, 10, tzinfo=UTC), datetime(2026, 10, 20, tzinfo=UTC)),
        (datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
    ],
)
def test_a_period_overlapping_an_invoiced_one_is_refused(bob_subscription, record_usage, start, end):
    record_usage(bob_subscription, datetime(2026, 10, 20, tzinfo=UTC), 12_345)
    [invoice] = close_october()

    with pytest.raises(ValueError) as caught:
        invoice_period_close(period_start=start, period_end=end, allow_open=True)

    assert "overlaps the period 2026-10-01 00:00 – 2026-11-01 00:00 UTC already invoiced" in str(caught.value)
    assert f"(invoice {invoice.pk})" in str(caught.value)
    assert Invoice.objects.count() == 1
    assert InvoiceLine.objects.count() == 2


def test_periods_next_to_an_invoiced_one_are_closed(bob_subscription, record_usage):
    record_usage(bob_subscription, datetime(2026, 11, 3, tzinfo=UTC), 12_345)
    close_october()
    [november] = invoice_period_close(period_start=NOVEMBER[0], period_end=NOVEMBER[1], allow_open=True)
    [september] = invoice_period_close(period_start=datetime(2026, 9, 1, tzinfo=UTC), period_end=OCTOBER[0])
    assert november.total_minor == 5350
    assert september.total_minor == 4900
    assert close_october() == []  # the same period again is still fine


def test_invoice_period_command_refuses_an_overlapping_period(bob_subscription):
    call_command("invoice_period", "--start", "2026-10-01", "--end", "2026-11-01", stdout=StringIO())
    with pytest.raises(CommandError, match="overlaps the period 2026-10-01 00:00 – 2026-11-01 00:00 UTC"):
        call_command("invoice_period", "--start", "2026-10-15", "--end", "2026-11-01", stdout=StringIO())
    assert Invoice.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_closes_create_one_invoice(ticker_api, bob):
    plan = BusinessPlanFactory(
        api=ticker_api, name="Pro", flat_fee_minor=1000, price_per_1000_events_minor=10
    )
    for _ in range(5):
        SubscriptionFactory(application=ApplicationFactory(owner=bob), plan=plan, created=OCTOBER[0])
    barrier = threading.Barrier(2)
    results: list[list[Invoice]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            results.append(close_october())
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(len(created) for created in results) == [0, 1]
    assert Invoice.objects.count() == 1
    assert InvoiceLine.objects.count() == 5 * 2
    assert Invoice.objects.get().total_minor == 5 * 1000


def test_free_plan_subscriptions_are_not_billed(bob, free_plan, record_usage):
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob), plan=free_plan, created=OCTOBER[0]
    )
    record_usage(subscription, datetime(2026, 10, 3, tzinfo=UTC), 1_000_000)

    assert close_october() == []
    assert not Invoice.objects.exists()
    assert not BillingAccount.objects.filter(owner=bob).exists()


def test_one_invoice_per_account_with_lines_for_each_paid_subscription(
    bob, carol, ticker_api, metered_plan, free_plan
):
    created = datetime(2026, 9, 1, tzinfo=UTC)
    events_only = BusinessPlanFactory(api=ticker_api, name="Pay as you go", price_per_1000_events_minor=20)
    for plan in (metered_plan, events_only, free_plan):
        SubscriptionFactory(application=ApplicationFactory(owner=bob), plan=plan, created=created)
    SubscriptionFactory(application=ApplicationFactory(owner=carol), plan=metered_plan, created=created)

    invoices = close_october()

    assert sorted(invoice.account.owner.email for invoice in invoices) == [
        "bob@example.com",
        "carol@example.com",
    ]
    bobs = Invoice.objects.get(account__owner=bob)
    assert sorted(bobs.lines.values_list("kind", flat=True)) == ["base_fee", "events", "events"]
    assert bobs.total_minor == 4900


def test_subscriptions_that_were_not_live_in_the_period_are_not_billed(bob, metered_plan, record_usage):
    app = ApplicationFactory(owner=bob)
    SubscriptionFactory(
        application=app, plan=metered_plan, status=Subscription.Status.PENDING, created=OCTOBER[0]
    )
    rejected = SubscriptionFactory(
        application=ApplicationFactory(owner=bob),
        plan=metered_plan,
        status=Subscription.Status.REJECTED,
        created=OCTOBER[0],
    )
    record_usage(rejected, datetime(2026, 10, 3, tzinfo=UTC), 50_000)
    SubscriptionFactory(application=ApplicationFactory(owner=bob), plan=metered_plan, created=NOVEMBER[0])
    SubscriptionFactory(
        application=ApplicationFactory(owner=bob),
        plan=metered_plan,
        status=Subscription.Status.CANCELLED,
        created=OCTOBER[0] - timedelta(days=90),
    )

    assert close_october() == []


def test_cancelled_subscription_with_usage_in_the_period_is_billed(bob, metered_plan, record_usage):
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob),
        plan=metered_plan,
        status=Subscription.Status.CANCELLED,
        created=OCTOBER[0] - timedelta(days=90),
    )
    record_usage(subscription, datetime(2026, 10, 2, tzinfo=UTC), 11_500)

    [invoice] = close_october()

    assert invoice.total_minor == 4900 + 2 * 150


def test_plans_in_two_currencies_give_two_invoices(bob, ticker_api, metered_plan):
    euro_plan = BusinessPlanFactory(api=ticker_api, name="Euro", currency="eur", flat_fee_minor=3900)
    SubscriptionFactory(application=ApplicationFactory(owner=bob), plan=metered_plan, created=OCTOBER[0])
    SubscriptionFactory(application=ApplicationFactory(owner=bob), plan=euro_plan, created=OCTOBER[0])

    invoices = close_october()

    assert sorted((invoice.currency, invoice.total_minor) for invoice in invoices) == [
        ("eur", 3900),
        ("usd", 4900),
    ]


def test_a_month_is_closed_only_after_the_grace_period(bob_subscription):
    assert last_closed_period(now=datetime(2026, 11, 1, 0, 30, tzinfo=UTC)) == (
        datetime(2026, 9, 1, tzinfo=UTC),
        datetime(2026, 10, 1, tzinfo=UTC),
    )
    assert last_closed_period(now=datetime(2026, 11, 1, 1, 0, tzinfo=UTC)) == OCTOBER
    assert last_closed_period(now=datetime(2027, 1, 15, tzinfo=UTC)) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )

    [invoice] = invoice_closed_periods(now=datetime(2026, 11, 1, 1, 0, tzinfo=UTC))
    assert (invoice.period_start, invoice.period_end) == OCTOBER
    assert invoice.period_label == "October 2026"
    assert invoice_closed_periods(now=datetime(2026, 11, 20, tzinfo=UTC)) == []


def test_naive_or_empty_periods_are_refused(db):
    with pytest.raises(ValueError):
        invoice_period_close(period_start=datetime(2026, 10, 1), period_end=datetime(2026, 11, 1))
    with pytest.raises(ValueError):
        invoice_period_close(period_start=OCTOBER[1], period_end=OCTOBER[0])


def test_users_without_subscriptions_get_no_billing_account(db):
    UserFactory()
    assert close_october() == []
    assert not BillingAccount.objects.exists()


def test_a_period_that_has_not_ended_is_refused_unless_closed_early_on_purpose(
    bob_subscription, record_usage
):
    now = timezone.now()
    start, end = now - timedelta(days=1), now + timedelta(days=1)
    with pytest.raises(ValueError, match="still open"):
        invoice_period_close(period_start=start, period_end=end)
    assert not Invoice.objects.exists()
    assert len(invoice_period_close(period_start=start, period_end=end, allow_open=True)) == 1
