"""The billing pages in headless Chromium at a laptop's and a phone's width: invoices, an invoice
with late usage and a credit, the provider's revenue chart, the admins' desk. Screenshots:
/tmp/pages-<page>-<width>.png (and -1, -2, ... parts at phone width)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from analytics.services import usage_record_batch
from billing.ledger import window_rerun
from billing.models import BillingAccount, DunningCase, Invoice
from billing.services import billing_period_containing, invoice_period_close, issue_credit
from tests.analytics.test_dashboards_browser import OVERFLOW
from tests.factories import (
    APIFactory,
    ApplicationFactory,
    BusinessPlanFactory,
    SubscriptionFactory,
    UserFactory,
)
from tests.test_browser import (  # noqa: F401 - fixtures
    _sign_in,
    allow_orm_beside_playwright,
    browser,
    browser_context_args,
    browser_type,
    browser_type_launch_args,
    playwright,
)

pytestmark = pytest.mark.browser

MAY = datetime(2026, 5, 1, tzinfo=UTC)
NOVEMBER = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
CHANNEL = "prices/{symbol}"


def _usage(subscription, moment: datetime, events: int) -> None:
    usage_record_batch(rows=[(subscription.pk, moment, CHANNEL, "out", events, events * 120)])


@pytest.fixture
def history(transactional_db, ticker_api, alice, bob, admin_user):
    """Six months of invoices on alice's Ticker (bob on "Metered", dave on "Gold"), erin's
    Weather beside it; October's payment failed (dunning open); an October window re-run with
    late usage and a credit, both billed on November's invoice."""
    metered = BusinessPlanFactory(
        api=ticker_api,
        name="Metered",
        flat_fee_minor=4900,
        included_events=10_000,
        price_per_1000_events_minor=150,
    )
    gold = ticker_api.plans.get(name="Gold")
    weather = APIFactory(provider=UserFactory(email="erin@example.com", is_provider=True), name="Weather")
    bots = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Trading bot"), plan=metered, created=MAY
    )
    board = SubscriptionFactory(
        application=ApplicationFactory(owner=UserFactory(email="dave@example.com"), name="Risk board"),
        plan=gold,
        created=MAY,
    )
    SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Umbrella alerts"),
        plan=BusinessPlanFactory(api=weather, name="Pro", flat_fee_minor=2500),
        created=MAY,
    )
    month = MAY
    for index in range(6):  # May … October
        _usage(bots, month + timedelta(days=3, hours=9), 14_000 + 9_000 * index)
        _usage(board, month + timedelta(days=5, hours=14), 40_000)
        end = billing_period_containing(month)[1]
        invoice_period_close(period_start=month, period_end=end)
        month = end
    Invoice.objects.filter(period_start__lt=datetime(2026, 10, 1, tzinfo=UTC)).update(
        status=Invoice.Status.PAID, paid_at=timezone.now() - timedelta(days=40)
    )
    october = Invoice.objects.get(account__owner=bob, period_start=datetime(2026, 10, 1, tzinfo=UTC))
    Invoice.objects.filter(period_start=datetime(2026, 10, 1, tzinfo=UTC)).update(
        status=Invoice.Status.OPEN, hosted_invoice_url="https://invoice.stripe.com/i/acct_demo/test_oct"
    )
    Invoice.objects.filter(pk=october.pk).update(payment_failed_at=timezone.now() - timedelta(days=2))
    DunningCase.objects.create(
        invoice=october,
        suspend_at=timezone.now() + timedelta(days=5),
        reminders_sent=1,
        last_failure_message="Your card was declined.",
    )
    window = datetime(2026, 10, 4, 9, tzinfo=UTC)
    _usage(bots, window + timedelta(minutes=40), 1_200)
    window_rerun(start=window, by=admin_user, reason="ticket 42: gateway flush delayed by a restart")
    account = BillingAccount.objects.get(owner=bob)
    issue_credit(account=account, amount_minor=500, currency="usd", reason="Outage on Nov 2", by=admin_user)
    _usage(bots, datetime(2026, 11, 4, 8, 5, tzinfo=UTC), 23_000)
    [november] = [
        invoice
        for invoice in invoice_period_close(period_start=NOVEMBER[0], period_end=NOVEMBER[1], allow_open=True)
        if invoice.account.owner == bob
    ]
    return {"october": october, "november": november}


def _shoot(page: Page, name: str, width: int) -> list[str]:
    """Full-page screenshot (and 1,000-px parts at phone width); the elements that stick out."""
    page.wait_for_timeout(300)
    page.screenshot(path=f"/tmp/pages-{name}-{width}.png", full_page=True)
    height = page.evaluate("document.documentElement.scrollHeight")
    for part, top in enumerate(range(0, height, 1_000) if width < 576 else (), start=1):
        clip = {"x": 0, "y": top, "width": width, "height": min(1_000, height - top)}
        page.screenshot(path=f"/tmp/pages-{name}-{width}-{part}.png", full_page=True, clip=clip)
    return page.evaluate(OVERFLOW, width < 576)


@pytest.mark.parametrize("width", [1280, 390])
def test_billing_pages_fit_and_show_their_data(
    page: Page, live_server, alice, bob, admin_user, history, width
):
    page.set_viewport_size({"width": width, "height": 900})
    problems = {}

    _sign_in(page, live_server, bob.email)
    page.goto(f"{live_server.url}/billing/invoices/")
    expect(page.get_by_role("heading", name="My invoices")).to_be_visible()
    expect(page.get_by_test_id("payment-failed")).to_have_count(1)
    problems["invoices"] = _shoot(page, "invoices", width)

    page.goto(f"{live_server.url}/billing/invoices/{history['november'].pk}/")
    lines = page.get_by_test_id("invoice-lines")
    expect(lines).to_contain_text("Late usage adjustment")
    expect(lines).to_contain_text("ticket 42: gateway flush delayed by a restart")
    expect(page.get_by_test_id("credit-lines")).to_contain_text("-$5.00")
    problems["invoice"] = _shoot(page, "invoice", width)

    page.goto(f"{live_server.url}/billing/invoices/{history['october'].pk}/")
    expect(page.get_by_test_id("payment-failed-alert")).to_contain_text("will be suspended on")
    expect(page.get_by_test_id("hosted-invoice")).to_have_attribute(
        "href", "https://invoice.stripe.com/i/acct_demo/test_oct"
    )
    problems["invoice-failed"] = _shoot(page, "invoice-failed", width)

    _sign_in(page, live_server, alice.email)
    page.goto(f"{live_server.url}/billing/revenue/")
    expect(page.get_by_role("heading", name="Revenue")).to_be_visible()
    expect(page.get_by_test_id("revenue-apis")).to_contain_text("Ticker")
    expect(page.get_by_test_id("revenue-apis")).not_to_contain_text("Weather")
    bars = page.evaluate(
        """() => {
            const canvas = document.querySelector('canvas[data-revenue-chart="chart-revenue-usd"]');
            const chart = Chart.getChart(canvas);
            const bars = (set) => [set.label, set.data.filter((v) => v > 0).length];
            return chart && chart.data.datasets.map(bars);
        }"""
    )
    assert bars == [["Ticker", 6]]  # one bar per invoiced month, May to October
    problems["revenue"] = _shoot(page, "revenue", width)

    _sign_in(page, live_server, admin_user.email)
    page.goto(f"{live_server.url}/billing/admin/")
    expect(page.get_by_test_id("failed-payments")).to_contain_text("bob@example.com")
    expect(page.get_by_test_id("admin-invoices")).to_be_visible()
    problems["admin"] = _shoot(page, "admin", width)

    assert problems == {name: [] for name in problems}


def test_admin_issues_a_credit_after_fixing_the_amount(page: Page, live_server, admin_user, bob, history):
    _sign_in(page, live_server, admin_user.email)
    page.get_by_role("navigation").get_by_role("button", name="Staff").click()
    page.get_by_role("link", name="Billing: invoices, credits").click()
    expect(page.get_by_role("heading", name="Billing", exact=True)).to_be_visible()

    form = page.get_by_test_id("credit-form")
    form.get_by_label("Account email").fill("bob@example.com")
    form.get_by_label("Amount").fill("1.005")
    form.get_by_label("Reason").fill("Goodwill")
    form.get_by_role("button", name="Issue the credit").click()
    expect(page.get_by_test_id("credit-form")).to_contain_text("USD amounts have at most 2 decimals")
    page.get_by_test_id("credit-form").screenshot(path="/tmp/pages-credit-error.png")

    page.get_by_test_id("credit-form").get_by_label("Amount").fill("12.50")
    page.get_by_test_id("credit-form").get_by_role("button", name="Issue the credit").click()
    expect(page.get_by_role("alert")).to_contain_text("of $12.50 issued to bob@example.com")
    expect(page.get_by_test_id("credits")).to_contain_text("Goodwill")

    rerun = page.get_by_test_id("rerun-form")
    rerun.get_by_label("Day (UTC)").fill("2026-10-04")
    rerun.get_by_label("Hour (UTC)").select_option("09:00")
    rerun.get_by_label("Reason").fill("check again")
    rerun.get_by_role("button", name="Re-run the window").click()
    expect(page.get_by_test_id("rerun-result")).to_contain_text("no difference")
    page.locator("#rerun").screenshot(path="/tmp/pages-rerun.png")
