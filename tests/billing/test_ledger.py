"""The usage ledger: hourly windows closed exactly once into ledger entries, late usage as audited
adjustments on the next invoice, and invoices issued from the ledger (billing.ledger, billing.services)."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import Count, Sum

from analytics.queries import floor
from billing.ledger import (
    WINDOW,
    frontier,
    ledger_close_windows,
    ledger_reconcile,
    window_floor,
    window_rerun,
)
from billing.models import BillingAccount, Invoice, InvoiceLine, LedgerEntry, UsageWindow
from billing.services import (
    bandwidth_charge,
    events_charge,
    invoice_closed_periods,
    invoice_period_close,
    issue_credit,
    period_estimate,
)
from portal.models import BusinessPlan
from portal.services.subscriptions import subscription_approve, subscription_cancel, subscription_plan_change
from tests.billing.conftest import NOVEMBER, OCTOBER
from tests.factories import ApplicationFactory, BusinessPlanFactory, SubscriptionFactory
from tests.fixtures.servers import amqp_queues_delete, celery_worker_start, server_env

SEPTEMBER_15 = datetime(2026, 9, 15, tzinfo=UTC)
SUCCEEDED = r"ledger_close_task\[[^\]]+\] succeeded in [\d.]+s: (\{.*\})"  # a Celery worker's log line


def entries_per_window(subscription) -> dict[datetime, tuple[int, int]]:
    rows = (
        LedgerEntry.objects.filter(subscription=subscription)
        .values("window_start")
        .annotate(events=Sum("events"), bytes=Sum("bytes"))
        .order_by("window_start")
    )
    return {row["window_start"]: (row["events"], row["bytes"]) for row in rows}


def test_a_closed_window_holds_one_entry_per_subscription_with_the_analytics_numbers(
    bob, bob_subscription, record_usage, ticker_api
):
    inbound = BusinessPlanFactory(api=ticker_api, name="Inbound", counted_directions="in", flat_fee_minor=100)
    other = SubscriptionFactory(application=ApplicationFactory(owner=bob), plan=inbound, created=SEPTEMBER_15)
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 0, tzinfo=UTC), 100, 1_000)
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 59, tzinfo=UTC), 20, 200)
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 30, tzinfo=UTC), 7, 70, direction="in")
    record_usage(other, datetime(2026, 10, 3, 9, 10, tzinfo=UTC), 5, 50)
    record_usage(other, datetime(2026, 10, 3, 9, 11, tzinfo=UTC), 3, 30, direction="in")
    record_usage(other, datetime(2026, 10, 3, 10, 0, tzinfo=UTC), 1, 10)  # the next window

    closed = ledger_close_windows(until=datetime(2026, 10, 3, 11, tzinfo=UTC))

    # From the first subscription's window (Sep 15 00:00) to Oct 3 11:00, every hour.
    assert closed == (datetime(2026, 10, 3, 11, tzinfo=UTC) - SEPTEMBER_15) // WINDOW
    nine = LedgerEntry.objects.filter(window_start=datetime(2026, 10, 3, 9, tzinfo=UTC))
    assert sorted(
        (e.subscription_id, e.revision, e.events, e.bytes, e.counted_events, e.counted_bytes) for e in nine
    ) == sorted(
        [
            # Metered counts both directions (the default); "Inbound" only the client's events.
            (bob_subscription.pk, 0, 120, 1_200, 127, 1_270),
            (other.pk, 0, 5, 50, 3, 30),
        ]
    )
    assert LedgerEntry.objects.filter(window_start=datetime(2026, 10, 3, 10, tzinfo=UTC)).count() == 1
    # Windows without usage are closed without entries.
    assert UsageWindow.objects.get(start=datetime(2026, 10, 3, 8, tzinfo=UTC)).subscriptions == 0
    assert LedgerEntry.objects.count() == 3


def test_closing_again_writes_nothing_and_continues_at_the_frontier(bob_subscription, record_usage):
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 0, tzinfo=UTC), 100)
    ledger_close_windows(until=datetime(2026, 10, 4, tzinfo=UTC))
    windows, entries = UsageWindow.objects.count(), LedgerEntry.objects.count()

    assert ledger_close_windows(until=datetime(2026, 10, 4, tzinfo=UTC)) == 0
    assert (UsageWindow.objects.count(), LedgerEntry.objects.count()) == (windows, entries)
    assert ledger_close_windows(until=datetime(2026, 10, 4, 2, tzinfo=UTC)) == 2
    assert frontier() == datetime(2026, 10, 4, 2, tzinfo=UTC)


def test_windows_close_only_after_the_grace_period(bob_subscription, settings):
    settings.BILLING_GRACE_SECONDS = 3600
    now = datetime(2026, 10, 3, 10, 59, tzinfo=UTC)
    ledger_close_windows(now=now)
    # 09:00–10:00 ended 59 minutes ago: still open for late gateway flushes.
    assert frontier() == datetime(2026, 10, 3, 9, tzinfo=UTC)
    ledger_close_windows(now=now + timedelta(minutes=1))
    assert frontier() == datetime(2026, 10, 3, 10, tzinfo=UTC)


def test_an_event_at_23_59_59_on_the_last_day_is_billed_in_that_month(bob_subscription, record_usage):
    last_moment = datetime(2026, 10, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    # The gateway counts an event in the minute bucket holding its delivery time.
    record_usage(bob_subscription, floor(last_moment, "minute"), 10_001, 1)
    record_usage(
        bob_subscription, datetime(2026, 11, 1, tzinfo=UTC), 50_000, 1
    )  # the first instant of November

    [october] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])
    [november] = invoice_period_close(period_start=NOVEMBER[0], period_end=NOVEMBER[1], allow_open=True)

    assert october.lines.get(kind="events").events == 10_001
    assert october.lines.get(kind="events").amount_minor == 150  # one started block over 10,000
    assert november.lines.get(kind="events").events == 50_000
    entry = LedgerEntry.objects.get(subscription=bob_subscription, events=10_001)
    assert (entry.window_start, entry.window_end, entry.invoice) == (
        datetime(2026, 10, 31, 23, tzinfo=UTC),
        OCTOBER[1],
        october,
    )


def test_late_usage_becomes_an_audited_adjustment_on_the_next_invoice(bob_subscription, record_usage):
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 15, tzinfo=UTC), 10_500)
    [october] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])
    assert october.total_minor == 4900 + 150

    # A gateway flush arrives after October was invoiced, for a window of October.
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 20, tzinfo=UTC), 1_200, 300)
    [adjustment] = ledger_reconcile(start=OCTOBER[0], end=NOVEMBER[1])
    assert ledger_reconcile(start=OCTOBER[0], end=NOVEMBER[1]) == []  # found once

    assert (adjustment.kind, adjustment.revision, adjustment.events, adjustment.bytes) == (
        "adjustment",
        1,
        1_200,
        300,
    )
    assert adjustment.window_start == datetime(2026, 10, 3, 9, tzinfo=UTC)
    assert "after the window closed" in adjustment.reason
    october.refresh_from_db()
    assert october.total_minor == 5050  # issued invoices never change

    [november] = invoice_period_close(period_start=NOVEMBER[0], period_end=NOVEMBER[1], allow_open=True)
    late = november.lines.get(kind="adjustment")
    # October billed 10,500 events (1 block over 10,000); with 11,700 it is 2 blocks: +1 block.
    assert (late.events, late.amount_minor) == (1_200, 150)
    assert "October 2026: +1,200 events" in late.description
    assert november.total_minor == 4900 + 150
    adjustment.refresh_from_db()
    assert adjustment.invoice == november


def test_late_usage_of_a_period_not_invoiced_yet_is_billed_in_its_own_period(bob_subscription, record_usage):
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 15, tzinfo=UTC), 10_500)
    ledger_close_windows(until=OCTOBER[1])
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 20, tzinfo=UTC), 1_200)
    ledger_reconcile(start=OCTOBER[0], end=OCTOBER[1])

    [october] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])

    assert october.lines.get(kind="events").events == 11_700
    assert not october.lines.filter(kind="adjustment").exists()


def test_a_window_rerun_by_an_admin_records_who_and_why(admin_user, bob_subscription, record_usage):
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 15, tzinfo=UTC), 100)
    ledger_close_windows(until=OCTOBER[1])
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 40, tzinfo=UTC), 25)

    [adjustment] = window_rerun(start=datetime(2026, 10, 3, 9, tzinfo=UTC), by=admin_user, reason="ticket 42")
    assert window_rerun(start=datetime(2026, 10, 3, 9, tzinfo=UTC), by=admin_user) == []

    assert (adjustment.events, adjustment.created_by, adjustment.revision) == (25, admin_user, 1)
    assert adjustment.reason == f"Window re-run by {admin_user.email}: ticket 42"


@pytest.mark.parametrize(
    ("start", "message"),
    [
        (datetime(2026, 10, 3, 9, 30, tzinfo=UTC), "starts on the hour (UTC); 2026-10-03 09:30:00 does not"),
        (datetime(2099, 1, 1, tzinfo=UTC), "is in the future: only past windows can be re-run"),
        (datetime(9999, 12, 31, 23, tzinfo=UTC), "is in the future"),
        (datetime.now(UTC).replace(minute=0, second=0, microsecond=0), "is still open for late usage until"),
        (datetime(2026, 9, 1, tzinfo=UTC), "older than the ledger's first window"),
    ],
)
def test_a_window_rerun_refuses_what_it_cannot_do(admin_user, bob_subscription, settings, start, message):
    settings.BILLING_GRACE_SECONDS = 3600
    ledger_close_windows(until=OCTOBER[1])
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        window_rerun(start=start, by=admin_user)


def test_tiered_and_bandwidth_prices_on_the_invoice(bob, ticker_api, record_usage):
    plan = BusinessPlanFactory(
        api=ticker_api,
        name="Tiered",
        flat_fee_minor=1000,
        included_events=1_000,
        price_tiers=[
            {"up_to": 10_000, "price_per_1000_events_minor": 200},
            {"up_to": None, "price_per_1000_events_minor": 100},
        ],
        included_bytes=10**9,
        price_per_gb_minor=50,
    )
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob), plan=plan, created=SEPTEMBER_15
    )
    # 26,001 events: 25,001 billable = 10,000 at $2.00/1,000 (10 blocks) + 15,001 at $1.00 (16 blocks).
    record_usage(subscription, datetime(2026, 10, 5, tzinfo=UTC), 26_001, 3_500_000_001)

    [invoice] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])

    events = invoice.lines.get(kind="events")
    assert (events.quantity, events.amount_minor) == (26, 10 * 200 + 16 * 100)
    assert "10 at $2.00, 16 at $1.00" in events.description
    bandwidth = invoice.lines.get(kind="bandwidth")
    # 2,500,000,001 bytes over 1 GB at $0.50 per GB = 125.00000005 cents → 126 (rounded up).
    assert (bandwidth.quantity, bandwidth.unit_amount_minor, bandwidth.amount_minor) == (
        2_500_000_001,
        50,
        126,
    )
    assert invoice.total_minor == invoice.subtotal_minor == 1000 + 3600 + 126
    assert invoice.tax_minor == 0


@pytest.mark.parametrize(
    ("events", "blocks", "amount"),
    [(0, 0, 0), (1_000, 0, 0), (1_001, 1, 200), (11_000, 10, 2000), (11_001, 11, 2100), (12_000, 11, 2100)],
)
def test_tier_boundaries(ticker_api, events, blocks, amount):
    plan = BusinessPlan(
        included_events=1_000,
        price_tiers=[
            {"up_to": 10_000, "price_per_1000_events_minor": 200},
            {"up_to": None, "price_per_1000_events_minor": 100},
        ],
    )
    charge = events_charge(plan=plan, events=events)
    assert (charge.blocks, charge.amount_minor) == (blocks, amount)


def test_bandwidth_rounds_up_to_the_next_minor_unit():
    plan = BusinessPlan(included_bytes=0, price_per_gb_minor=20)
    assert bandwidth_charge(plan=plan, size=1).amount_minor == 1
    assert bandwidth_charge(plan=plan, size=10**9).amount_minor == 20
    assert bandwidth_charge(plan=plan, size=0).amount_minor == 0


def test_a_yearly_plan_is_invoiced_for_the_calendar_year(bob, ticker_api, record_usage):
    plan = BusinessPlanFactory(
        api=ticker_api,
        name="Yearly",
        flat_fee_minor=50_000,
        included_events=100_000,
        price_per_1000_events_minor=10,
        billing_period="year",
    )
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob), plan=plan, created=datetime(2025, 1, 10, tzinfo=UTC)
    )
    record_usage(subscription, datetime(2025, 3, 1, tzinfo=UTC), 60_000)
    record_usage(subscription, datetime(2025, 11, 1, tzinfo=UTC), 60_000)
    record_usage(subscription, datetime(2026, 1, 1, tzinfo=UTC), 1)  # the next year

    assert invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1]) == []  # not a monthly plan
    [invoice] = invoice_period_close(
        period_start=datetime(2025, 1, 1, tzinfo=UTC), period_end=datetime(2026, 1, 1, tzinfo=UTC)
    )
    assert invoice.period_label == "2025-01-01 – 2025-12-31"
    # 120,000 events in the year, 100,000 included: 20 blocks at $0.10.
    assert [(line.kind, line.amount_minor) for line in invoice.lines.order_by("kind")] == [
        ("base_fee", 50_000),
        ("events", 200),
    ]


# --- Exactly once under concurrency and crashes ---------------------------------------------------------


def _usage_history(subscriptions, record_usage, *, hours: int) -> dict[int, int]:
    """Usage in many windows of October: one row per subscription per 7th hour."""
    expected: dict[int, int] = {}
    for index, subscription in enumerate(subscriptions):
        for hour in range(0, hours, 7):
            events = 10 + index + hour
            record_usage(subscription, OCTOBER[0] + timedelta(hours=hour, minutes=index), events, events * 10)
            expected[subscription.pk] = expected.get(subscription.pk, 0) + events
    return expected


def _assert_ledger_matches_analytics(expected: dict[int, int]) -> None:
    duplicates = (
        LedgerEntry.objects.values("subscription_id", "window_start")
        .annotate(n=Count("pk"))
        .filter(n__gt=1)
        .count()
    )
    assert duplicates == 0
    for subscription_id, events in expected.items():
        assert (
            LedgerEntry.objects.filter(subscription_id=subscription_id).aggregate(e=Sum("events"))["e"]
            == events
        )
    starts = list(UsageWindow.objects.order_by("start").values_list("start", flat=True))
    assert starts == [starts[0] + i * WINDOW for i in range(len(starts))]  # contiguous, each once


@pytest.mark.django_db(transaction=True)
def test_two_celery_workers_closing_at_once_write_every_window_once(bob, ticker_api, record_usage, tmp_path):
    plan = BusinessPlanFactory(
        api=ticker_api, name="Pro", flat_fee_minor=1000, price_per_1000_events_minor=10
    )
    subscriptions = [
        SubscriptionFactory(application=ApplicationFactory(owner=bob), plan=plan, created=OCTOBER[0])
        for _ in range(3)
    ]
    expected = _usage_history(subscriptions, record_usage, hours=24 * 20)
    queue = f"ledger-{os.getpid()}"
    workers = []
    try:
        for i in range(2):  # started inside try: a second worker that fails to start stops the first
            workers.append(celery_worker_start(tmp_path / f"worker-{i}.log", queue=queue, node=str(i)))
        from billing.tasks import ledger_close_task

        for _ in range(6):
            ledger_close_task.apply_async(queue=queue)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            outcomes = [
                ast.literal_eval(match)
                for worker in workers
                for match in re.findall(
                    r"ledger_close_task\[[^\]]+\] succeeded in [\d.]+s: (\{.*\})", worker.log()
                )
            ]
            if len(outcomes) == 6:
                break
            time.sleep(0.2)
    finally:
        for worker in workers:
            worker.stop()
        amqp_queues_delete(queue)
    assert len(outcomes) == 6, [worker.log() for worker in workers]
    # Every window was closed by exactly one of the six runs (each run closes at most a month of
    # windows; one more catches up to an hour ago).
    closed = sum(outcome["windows_closed"] for outcome in outcomes) + ledger_close_windows()
    assert closed == UsageWindow.objects.count()
    assert frontier() == window_floor(datetime.now(UTC) - timedelta(hours=1))
    _assert_ledger_matches_analytics(expected)
    for worker in workers:
        assert "Traceback" not in worker.log()


@pytest.mark.django_db(transaction=True)
def test_a_close_killed_mid_run_is_completed_by_the_next_run_without_duplicates(
    bob, ticker_api, record_usage, tmp_path
):
    plan = BusinessPlanFactory(
        api=ticker_api, name="Pro", flat_fee_minor=1000, price_per_1000_events_minor=10
    )
    subscriptions = [
        SubscriptionFactory(application=ApplicationFactory(owner=bob), plan=plan, created=OCTOBER[0])
        for _ in range(3)
    ]
    expected = _usage_history(subscriptions, record_usage, hours=24 * 31)
    until = OCTOBER[1].isoformat()
    script = (
        "import django; django.setup()\n"
        "from datetime import datetime\n"
        "from billing.ledger import ledger_close_windows\n"
        f"ledger_close_windows(until=datetime.fromisoformat({until!r}))\n"
    )
    log = (tmp_path / "close.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", script], cwd=settings.BASE_DIR, env=server_env(), stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 30
        while UsageWindow.objects.count() < 20 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)  # a crash at an arbitrary point of the run
    finally:
        process.wait(10)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    closed_before = UsageWindow.objects.count()
    assert 20 <= closed_before < 24 * 31

    ledger_close_windows(until=OCTOBER[1])
    ledger_close_windows(until=OCTOBER[1])

    assert UsageWindow.objects.count() == 24 * 31
    _assert_ledger_matches_analytics(expected)
    [invoice] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])
    events = InvoiceLine.objects.filter(invoice=invoice, kind="events")
    assert sorted(line.events for line in events) == sorted(expected.values())


def test_a_stopped_beat_catches_up_every_month_it_missed(bob, metered_plan, record_usage):
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob),
        plan=metered_plan,
        created=datetime(2026, 6, 20, tzinfo=UTC),
    )
    for month in (7, 8, 9, 10):
        record_usage(subscription, datetime(2026, month, 10, tzinfo=UTC), 10_000 + month * 1_000)
    [july] = invoice_period_close(
        period_start=datetime(2026, 7, 1, tzinfo=UTC), period_end=datetime(2026, 8, 1, tzinfo=UTC)
    )

    # Beat was stopped from August to November 20: one run closes August, September and October.
    created = invoice_closed_periods(now=datetime(2026, 11, 20, tzinfo=UTC))

    assert [invoice.period_label for invoice in created] == ["August 2026", "September 2026", "October 2026"]
    assert [invoice.lines.get(kind="events").events for invoice in created] == [18_000, 19_000, 20_000]
    assert invoice_closed_periods(now=datetime(2026, 11, 20, tzinfo=UTC)) == []
    assert Invoice.objects.count() == 4 and july.lines.get(kind="events").events == 17_000


# --- Plan and status changes: usage is billed at the plan it was recorded at -----------------------


def test_a_move_to_a_free_plan_before_the_close_still_bills_the_months_usage(
    bob, bob_subscription, record_usage
):
    record_usage(bob_subscription, datetime(2026, 10, 3, tzinfo=UTC), 50_000)
    ledger_close_windows(until=datetime(2026, 10, 31, tzinfo=UTC))  # beat closed the windows hourly
    free = bob_subscription.api.plans.get(name="Free")
    subscription_plan_change(subscription=bob_subscription, plan=free, by=bob)

    [invoice] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])

    # $49.00 fee of the plan used in October + 40,000 events over 10,000 included at $1.50.
    assert [(line.kind, line.plan.name, line.amount_minor) for line in invoice.lines.order_by("kind")] == [
        ("base_fee", "Metered", 4900),
        ("events", "Metered", 40 * 150),
    ]
    assert not LedgerEntry.objects.filter(subscription=bob_subscription, invoice__isnull=True).exists()


def test_a_move_to_a_paid_plan_bills_its_fee_and_only_the_usage_after_the_move_at_its_prices(
    bob, ticker_api, record_usage
):
    free = ticker_api.plans.get(name="Free")
    metered = BusinessPlanFactory(
        api=ticker_api,
        name="Paid",
        flat_fee_minor=4900,
        included_events=10_000,
        price_per_1000_events_minor=150,
    )
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob), plan=free, created=SEPTEMBER_15
    )
    record_usage(subscription, datetime(2026, 10, 3, tzinfo=UTC), 50_000)  # on the free plan
    ledger_close_windows(until=datetime(2026, 10, 31, tzinfo=UTC))
    subscription_plan_change(subscription=subscription, plan=metered, by=bob)
    record_usage(subscription, datetime(2026, 10, 31, 12, tzinfo=UTC), 11_000)

    [invoice] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])

    assert [
        (line.kind, line.plan.name, line.events, line.amount_minor) for line in invoice.lines.order_by("kind")
    ] == [
        ("base_fee", "Paid", 11_000, 4900),
        ("events", "Paid", 11_000, 150),
    ]


def test_the_fee_follows_when_the_subscription_was_live_not_its_status_at_the_close(
    bob, admin_user, metered_plan
):
    cancelled_after = SubscriptionFactory(
        application=ApplicationFactory(owner=bob), plan=metered_plan, created=SEPTEMBER_15
    )
    subscription_cancel(subscription=cancelled_after, actor=bob)  # after October: it was live all month
    approved_after = SubscriptionFactory(
        application=ApplicationFactory(owner=bob),
        plan=metered_plan,
        status="pending",
        created=datetime(2026, 10, 30, tzinfo=UTC),
    )
    approved_after = subscription_approve(
        subscription=approved_after, approver=admin_user
    )  # live after October
    assert approved_after.activated_at > OCTOBER[1] and cancelled_after.ended_at > OCTOBER[1]

    [invoice] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])

    assert list(invoice.lines.values_list("subscription_id", "kind")) == [
        (cancelled_after.pk, "base_fee"),
        (cancelled_after.pk, "events"),
    ]


def test_a_plan_change_is_not_mistaken_for_late_usage(bob, ticker_api, record_usage):
    both = BusinessPlanFactory(api=ticker_api, name="Both", counted_directions="both", flat_fee_minor=100)
    out = BusinessPlanFactory(api=ticker_api, name="Out", counted_directions="out", flat_fee_minor=100)
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob), plan=both, created=SEPTEMBER_15
    )
    record_usage(subscription, datetime(2026, 10, 3, tzinfo=UTC), 100, 1_000)
    record_usage(subscription, datetime(2026, 10, 3, tzinfo=UTC), 500, 5_000, direction="in")
    ledger_close_windows(until=OCTOBER[1])
    subscription_plan_change(subscription=subscription, plan=out, by=bob)

    assert ledger_reconcile(start=OCTOBER[0], end=OCTOBER[1]) == []
    entry = LedgerEntry.objects.get(subscription=subscription)
    assert (entry.plan, entry.counted_events, entry.in_events) == (both, 600, 500)


def test_a_usage_priced_plan_without_usage_issues_no_zero_invoice(bob, ticker_api):
    per_event = BusinessPlanFactory(api=ticker_api, name="Per event", price_per_1000_events_minor=150)
    SubscriptionFactory(application=ApplicationFactory(owner=bob), plan=per_event, created=SEPTEMBER_15)

    assert invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1]) == []
    assert Invoice.objects.count() == 0


def test_a_credit_in_a_currency_no_plan_uses_is_refused(bob, admin_user, metered_plan):

    from billing.models import BillingAccount
    from billing.services import issue_credit

    account = BillingAccount.objects.create(owner=bob)
    with pytest.raises(ValidationError) as refused:
        issue_credit(account=account, amount_minor=500, currency="xyz", reason="goodwill", by=admin_user)
    assert refused.value.message_dict["currency"] == [
        "No business plan is priced in XYZ, so a credit in it could never be spent. Currencies in use: USD."
    ]
    assert (
        issue_credit(
            account=account, amount_minor=500, currency="USD", reason="goodwill", by=admin_user
        ).currency
        == "usd"
    )


def test_the_running_estimate_takes_unspent_credits_off(bob, admin_user, bob_subscription):
    issue_credit(
        account=BillingAccount.objects.create(owner=bob),
        amount_minor=1_000,
        currency="usd",
        reason="sorry",
        by=admin_user,
    )
    estimate = period_estimate(user=bob, now=datetime.now(UTC))
    assert estimate.totals == {"usd": 4900} and estimate.credits == {"usd": 1_000}
    assert estimate.due == {"usd": 3900}


@pytest.mark.django_db(transaction=True)
def test_concurrent_reconciles_record_late_usage_once(bob, metered_plan, record_usage):
    import threading

    from django.db import connection

    subscriptions = [
        SubscriptionFactory(application=ApplicationFactory(owner=bob), plan=metered_plan, created=OCTOBER[0])
        for _ in range(3)
    ]
    ledger_close_windows(until=datetime(2026, 10, 2, tzinfo=UTC))
    for hour in range(24):  # late usage in every window of the day, for every subscription
        for subscription in subscriptions:
            record_usage(subscription, OCTOBER[0] + timedelta(hours=hour, minutes=5), 100, 10)
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            for hour in range(24):  # many short runs, as beat's and admins' re-runs of one window
                window = OCTOBER[0] + timedelta(hours=hour)
                ledger_reconcile(start=window, end=window + WINDOW)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    adjustments = LedgerEntry.objects.filter(kind="adjustment")
    assert adjustments.count() == 24 * 3
    assert set(adjustments.values_list("revision", flat=True)) == {1}
    assert adjustments.aggregate(e=Sum("events"))["e"] == 24 * 3 * 100


def test_usage_invoiced_before_the_ledger_existed_is_never_reconciled(bob_subscription, record_usage):
    record_usage(bob_subscription, datetime(2026, 10, 28, tzinfo=UTC), 50_000)  # invoiced without a ledger
    ledger_close_windows(until=datetime(2026, 11, 2, tzinfo=UTC), begin=NOVEMBER[0])
    UsageWindow.objects.filter(start__lt=NOVEMBER[0]).delete()  # a ledger that began on November 1
    LedgerEntry.objects.filter(window_start__lt=NOVEMBER[0]).delete()

    assert ledger_reconcile(start=OCTOBER[0], end=NOVEMBER[1]) == []


def test_an_admin_cannot_credit_their_own_account(admin_user, metered_plan):
    from django.core.exceptions import PermissionDenied

    account = BillingAccount.objects.create(owner=admin_user)
    with pytest.raises(PermissionDenied, match="cannot credit their own billing account"):
        issue_credit(account=account, amount_minor=500, currency="usd", reason="mine", by=admin_user)


def test_the_running_estimate_marks_yearly_plans_lines(bob, ticker_api):
    yearly = BusinessPlanFactory(api=ticker_api, name="Yearly", flat_fee_minor=50_000, billing_period="year")
    SubscriptionFactory(application=ApplicationFactory(owner=bob), plan=yearly, created=SEPTEMBER_15)

    [line] = period_estimate(user=bob, now=datetime.now(UTC)).lines

    assert line.description.endswith(f"· yearly plan, {datetime.now(UTC):%Y} so far")
