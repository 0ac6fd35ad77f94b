"""Overage: plans whose quota_action is "overage" bill the events and bytes over their quotas.

Usage goes in through the gateway's flush path (``usage_record_batch``, ``throttled_record_batch``);
invoices come out of ``invoice_period_close`` and are read back from a real localstripe.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from analytics.services import throttled_record_batch, usage_record_batch
from billing.models import Invoice
from billing.services import bytes_overage_charge, events_overage_charge, invoice_period_close
from billing.stripe_sync import invoice_sync_stripe
from portal.models import BusinessPlan, Subscription
from tests.billing.conftest import OCTOBER
from tests.factories import ApplicationFactory, BusinessPlanFactory, SubscriptionFactory

GB = 10**9
DAY = datetime(2026, 10, 3, 9, 15, tzinfo=UTC)
LABEL = "Ticker — Overage (Trading bot)"


@pytest.fixture
def overage_plan(ticker_api) -> BusinessPlan:
    """$29.00 a month; 10,000 events and 5 GB a month counting both directions, then $0.50 per
    started 1,000 events and $2.00 per GB (pro rata) over the quotas."""
    return BusinessPlanFactory(
        api=ticker_api,
        name="Overage",
        flat_fee_minor=2900,
        quota_events=10_000,
        quota_bytes=5 * GB,
        counted_directions=BusinessPlan.CountedDirections.BOTH,
        quota_action=BusinessPlan.QuotaAction.OVERAGE,
        overage_price_per_1000_events_minor=50,
        overage_price_per_gb_minor=200,
    )


def subscribe(bob, plan: BusinessPlan) -> Subscription:
    application = ApplicationFactory(owner=bob, name="Trading bot")
    return SubscriptionFactory(application=application, plan=plan, created=datetime(2026, 9, 15, tzinfo=UTC))


def record(subscription: Subscription, *, events: int, size: int = 0, direction: str = "out", minute=DAY):
    usage_record_batch(rows=[(subscription.pk, minute, "prices/{symbol}", direction, events, size)])


def throttle(subscription: Subscription, *, events: int, size: int = 0, direction: str = "out", minute=DAY):
    throttled_record_batch(rows=[(subscription.pk, minute, "prices/{symbol}", direction, events, size)])


def close_october() -> list[Invoice]:
    return invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])


def line_figures(invoice: Invoice) -> list[tuple]:
    return list(
        invoice.lines.order_by("kind").values_list(
            "kind", "quantity", "unit_amount_minor", "amount_minor", "events", "bytes"
        )
    )


def test_events_and_bytes_over_the_quotas_are_billed_as_overage_lines(bob, overage_plan):
    subscription = subscribe(bob, overage_plan)
    record(subscription, events=12_000, size=4 * GB + 123_456_789)
    record(subscription, events=345, size=1 * GB, direction="in")  # counted: both directions
    record(subscription, events=90_000, size=90 * GB, minute=datetime(2026, 11, 1, tzinfo=UTC))  # November

    [invoice] = close_october()

    # Events: 12,345 counted − 10,000 quota = 2,345 over → 3 started blocks × $0.50 = $1.50.
    # Bytes: 5,123,456,789 counted − 5 GB = 123,456,789 over × $2.00/GB = 24.69… → 25 (rounded up).
    assert line_figures(invoice) == [
        ("base_fee", 1, 2900, 2900, 12_000, 4 * GB + 123_456_789),
        ("bytes_overage", 123_456_789, 200, 25, 12_345, 5 * GB + 123_456_789),
        ("events_overage", 3, 50, 150, 12_345, 5 * GB + 123_456_789),
    ]
    assert invoice.total_minor == 2900 + 150 + 25
    events_line = invoice.lines.get(kind="events_overage")
    assert events_line.description == (
        f"{LABEL}: events over the 10,000-event quota: 2,345 (12,345 counted, both directions), "
        "3 × 1,000 at $0.50 per 1,000"
    )
    assert events_line.detail.startswith("events over the 10,000-event quota: 2,345")
    assert invoice.lines.get(kind="bytes_overage").description == (
        f"{LABEL}: bytes over the 5.0 GB quota: 123,456,789 bytes (5,123,456,789 counted, both "
        "directions) at $2.00 per GB, pro rata"
    )


def test_usage_within_the_quotas_gives_no_overage_line(bob, overage_plan):
    subscription = subscribe(bob, overage_plan)
    record(subscription, events=10_000, size=5 * GB)  # exactly the quotas

    [invoice] = close_october()

    assert [line[0] for line in line_figures(invoice)] == ["base_fee"]
    assert invoice.total_minor == 2900


def test_stop_plans_get_no_overage_line(bob, overage_plan):
    overage_plan.quota_action = BusinessPlan.QuotaAction.STOP
    overage_plan.save()
    subscription = subscribe(bob, overage_plan)
    # More than the quota got through (e.g. while Redis was down with GATEWAY_THROTTLE_REDIS_DOWN=open).
    record(subscription, events=12_345, size=7 * GB)

    [invoice] = close_october()

    assert line_figures(invoice) == [("base_fee", 1, 2900, 2900, 12_345, 7 * GB)]
    assert invoice.total_minor == 2900


def test_throttled_events_are_never_billed(bob, overage_plan):
    overage_plan.price_per_1000_events_minor = 150  # the per-1,000 price reads delivered events too
    overage_plan.included_events = 10_000
    overage_plan.save()
    subscription = subscribe(bob, overage_plan)
    record(subscription, events=12_345, size=5 * GB)
    throttle(subscription, events=40_000, size=20 * GB)  # same minute, same row as delivered usage
    throttle(
        subscription, events=7_000, size=3 * GB, direction="in", minute=datetime(2026, 10, 9, tzinfo=UTC)
    )

    [invoice] = close_october()

    assert line_figures(invoice) == [
        ("base_fee", 1, 2900, 2900, 12_345, 5 * GB),
        ("events", 3, 150, 450, 12_345, 5 * GB),
        ("events_overage", 3, 50, 150, 12_345, 5 * GB),
    ]
    assert invoice.total_minor == 2900 + 450 + 150


@pytest.mark.parametrize(
    ("directions", "counted_events", "counted_bytes", "overage"),
    [
        # out: 11,000 events → 1,000 over → 1 block; 4.5 GB → no bytes overage.
        ("out", 11_000, 4_500_000_000, [("events_overage", 1, 50, 50)]),
        # in: 2,500 events, 1 GB → within both quotas.
        ("in", 2_500, 1_000_000_000, []),
        # both: 13,500 events → 3,500 over → 4 blocks; 5.5 GB → 0.5 GB over × $2.00 = $1.00.
        (
            "both",
            13_500,
            5_500_000_000,
            [("bytes_overage", 500_000_000, 200, 100), ("events_overage", 4, 50, 200)],
        ),
    ],
)
def test_only_the_counted_directions_count_toward_the_quotas(
    bob, overage_plan, directions, counted_events, counted_bytes, overage
):
    overage_plan.counted_directions = directions
    overage_plan.save()
    subscription = subscribe(bob, overage_plan)
    record(subscription, events=11_000, size=4_500_000_000)
    record(subscription, events=2_500, size=1_000_000_000, direction="in")

    [invoice] = close_october()

    figures = line_figures(invoice)
    assert figures[0] == ("base_fee", 1, 2900, 2900, 11_000, 4_500_000_000)  # base fee: "out", as before
    assert [line[:4] for line in figures[1:]] == overage
    assert all(line[4:] == (counted_events, counted_bytes) for line in figures[1:])
    assert invoice.total_minor == 2900 + sum(line[3] for line in overage)


def test_per_1000_price_and_overage_price_apply_independently(bob, overage_plan):
    overage_plan.included_events = 10_000
    overage_plan.price_per_1000_events_minor = 150
    overage_plan.save()
    subscription = subscribe(bob, overage_plan)
    record(subscription, events=12_345)

    [invoice] = close_october()

    assert [line[:4] for line in line_figures(invoice)] == [
        ("base_fee", 1, 2900, 2900),
        ("events", 3, 150, 450),  # delivered ("out") events over the included 10,000
        ("events_overage", 3, 50, 150),  # counted events over the 10,000-event quota
    ]


def test_a_plan_with_only_overage_prices_is_billed_when_over_the_quota(bob, carol, overage_plan):
    overage_plan.flat_fee_minor = 0
    overage_plan.save()
    over = subscribe(bob, overage_plan)
    within = SubscriptionFactory(
        application=ApplicationFactory(owner=carol), plan=overage_plan, created=OCTOBER[0]
    )
    record(over, events=10_001)
    record(within, events=10_000)

    [invoice] = close_october()

    assert invoice.account.owner == bob
    assert [line[:4] for line in line_figures(invoice)] == [("events_overage", 1, 50, 50)]
    assert not Invoice.objects.filter(account__owner=carol).exists()  # no zero invoice


def test_overage_at_a_zero_price_adds_no_line(bob, overage_plan):
    overage_plan.overage_price_per_1000_events_minor = 0
    overage_plan.overage_price_per_gb_minor = 0
    overage_plan.save()
    subscription = subscribe(bob, overage_plan)
    record(subscription, events=50_000, size=50 * GB)

    [invoice] = close_october()

    assert [line[0] for line in line_figures(invoice)] == ["base_fee"]


def test_cancelled_subscription_with_only_counted_client_events_is_billed(bob, overage_plan):
    overage_plan.counted_directions = BusinessPlan.CountedDirections.IN
    overage_plan.save()
    subscription = subscribe(bob, overage_plan)
    Subscription.objects.filter(pk=subscription.pk).update(status=Subscription.Status.CANCELLED)
    record(subscription, events=12_000, direction="in")

    [invoice] = close_october()

    assert [line[:4] for line in line_figures(invoice)] == [
        ("base_fee", 1, 2900, 2900),
        ("events_overage", 2, 50, 100),
    ]


@pytest.mark.parametrize(
    ("events", "blocks"), [(0, 0), (10_000, 0), (10_001, 1), (11_000, 1), (11_001, 2), (12_345, 3)]
)
def test_events_overage_counts_started_blocks_of_1000(overage_plan, events, blocks):
    charge = events_overage_charge(plan=overage_plan, events=events)
    assert charge is not None
    assert (charge.over, charge.quantity, charge.amount_minor) == (
        max(0, events - 10_000),
        blocks,
        blocks * 50,
    )


@pytest.mark.parametrize(
    ("size", "amount"),
    [
        (5 * GB, 0),
        (5 * GB + 1, 1),  # a byte over costs the smallest coin, never a fraction
        (5 * GB + 5_000_000, 1),  # 0.005 GB × 200 = 1 exactly
        (5 * GB + 5_000_001, 2),
        (6 * GB, 200),
        (5 * GB + 123_456_789, 25),
        (1_005 * GB, 200_000),
    ],
)
def test_bytes_overage_is_pro_rata_rounded_up_to_the_minor_unit(overage_plan, size, amount):
    charge = bytes_overage_charge(plan=overage_plan, size=size)
    assert charge is not None
    assert (charge.over, charge.quantity, charge.amount_minor) == (size - 5 * GB, size - 5 * GB, amount)


def test_stop_plans_and_plans_without_quota_have_no_overage_charge(overage_plan):
    overage_plan.quota_action = BusinessPlan.QuotaAction.STOP
    assert events_overage_charge(plan=overage_plan, events=99_999) is None
    assert bytes_overage_charge(plan=overage_plan, size=99 * GB) is None
    overage_plan.quota_action = BusinessPlan.QuotaAction.OVERAGE
    overage_plan.quota_events = overage_plan.quota_bytes = None
    assert events_overage_charge(plan=overage_plan, events=99_999) is None
    assert bytes_overage_charge(plan=overage_plan, size=99 * GB) is None


def test_overage_lines_sync_to_stripe_as_invoice_items(stripe_settings, stripe_client, bob, overage_plan):
    subscription = subscribe(bob, overage_plan)
    record(subscription, events=12_345, size=5 * GB + 123_456_789)
    [invoice] = close_october()

    invoice = invoice_sync_stripe(invoice=invoice)

    stripe_invoice = stripe_client.v1.invoices.retrieve(invoice.stripe_invoice_id)
    assert (stripe_invoice.subtotal, stripe_invoice.currency) == (2900 + 150 + 25, "usd")
    items = {}
    for line in invoice.lines.all():
        item = stripe_client.v1.invoice_items.retrieve(line.stripe_invoice_item_id)
        assert item.invoice == invoice.stripe_invoice_id
        assert item.description == line.description
        items[item.metadata["eventgate_line_kind"]] = (
            item.amount,
            item.metadata["events"],
            item.metadata["bytes"],
        )
    assert items == {
        "base_fee": (2900, "12345", str(5 * GB + 123_456_789)),
        "events_overage": (150, "12345", str(5 * GB + 123_456_789)),
        "bytes_overage": (25, "12345", str(5 * GB + 123_456_789)),
    }
    assert invoice.stripe_error == ""  # Stripe's subtotal matches the ledger total


def test_invoice_page_shows_overage_lines(client, bob, overage_plan):
    subscription = subscribe(bob, overage_plan)
    record(subscription, events=12_000, size=4 * GB + 123_456_789)
    record(subscription, events=345, size=1 * GB, direction="in")
    [invoice] = close_october()
    client.force_login(bob)

    page = client.get(f"/billing/invoices/{invoice.pk}/").content.decode()

    assert page.index("Base fee") < page.index("Events overage") < page.index("Bytes overage")
    assert "events over the 10,000-event quota: 2,345 (12,345 counted, both directions)" in page
    assert "3 × 1,000" in page and "$0.50" in page and "$1.50" in page
    assert "bytes over the 5.0 GB quota: 123,456,789 bytes" in page
    assert "123.5 MB" in page and "$2.00 / GB" in page and "$0.25" in page
    assert "$30.75" in page  # 2,900 + 150 + 25
    assert "Throttled events are never billed." in page
