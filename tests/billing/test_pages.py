"""Invoice pages: a consumer sees their own invoices with lines, the ledger entries behind them,
status, payment failures and credits, and nobody else's."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from billing.ledger import window_rerun
from billing.models import BillingAccount, DunningCase, Invoice
from billing.services import invoice_period_close, issue_credit
from portal.money import format_money
from tests.billing.conftest import NOVEMBER, OCTOBER

OCTOBER_3_9H = datetime(2026, 10, 3, 9, tzinfo=UTC)


@pytest.fixture
def bobs_invoice(bob_subscription, record_usage) -> Invoice:
    record_usage(bob_subscription, datetime(2026, 10, 3, tzinfo=UTC), 12_345, 2_500_000)
    [invoice] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])
    return invoice


@pytest.fixture
def late_history(bob_subscription, record_usage, admin_user) -> tuple[Invoice, Invoice]:
    """October invoiced; 1,200 events of an October window arrive late and an admin re-runs the
    window; a $5.00 credit; November invoiced with the late usage and the credit."""
    record_usage(bob_subscription, OCTOBER_3_9H + timedelta(minutes=15), 10_500, 1_000)
    [october] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])
    record_usage(bob_subscription, OCTOBER_3_9H + timedelta(minutes=20), 1_200, 300)
    window_rerun(start=OCTOBER_3_9H, by=admin_user, reason="ticket 42: delayed flush")
    record_usage(bob_subscription, datetime(2026, 11, 4, 8, 5, tzinfo=UTC), 3_000, 30_000)
    record_usage(bob_subscription, datetime(2026, 11, 6, 17, 30, tzinfo=UTC), 2_000, 20_000)
    account = BillingAccount.objects.get(owner=bob_subscription.application.owner)
    issue_credit(account=account, amount_minor=500, currency="usd", reason="Outage on Nov 2", by=admin_user)
    [november] = invoice_period_close(period_start=NOVEMBER[0], period_end=NOVEMBER[1], allow_open=True)
    return october, november


def test_bob_sees_his_invoices_with_period_total_and_status(client, bob, bobs_invoice):
    client.force_login(bob)
    response = client.get("/billing/invoices/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "October 2026" in page
    assert "$53.50" in page
    assert "Draft" in page
    assert f'href="/billing/invoices/{bobs_invoice.pk}/"' in page


def test_invoice_page_shows_lines_usage_totals_and_stripe_status(client, bob, bobs_invoice):
    bobs_invoice.stripe_invoice_id = "in_test123"
    bobs_invoice.status = Invoice.Status.OPEN
    bobs_invoice.save()
    client.force_login(bob)

    response = client.get(f"/billing/invoices/{bobs_invoice.pk}/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "Base fee" in page and "$49.00" in page
    assert "Events" in page and "$4.50" in page and "$1.50" in page
    # Decimal units, as on the usage page: 2,500,000 bytes.
    assert "12,345" in page and "2.5 MB" in page
    assert "$53.50" in page
    assert "in_test123" in page and "Open" in page
    assert "Ticker" in page and "Metered" in page and "Trading bot" in page
    # Subtotal, tax (none: prices are tax-free) and total.
    assert 'data-testid="subtotal">$53.50<' in page
    assert 'data-testid="tax">$0.00<' in page and "prices are tax-free" in page


def test_the_ledger_behind_each_line_is_on_the_invoice(client, bob, bob_subscription, record_usage):
    """Usage in three hours of October: three usage windows, first and last named."""
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 15, tzinfo=UTC), 5_000, 100)
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 45, tzinfo=UTC), 1_000, 100)
    record_usage(bob_subscription, datetime(2026, 10, 17, 13, 2, tzinfo=UTC), 2_000, 100)
    record_usage(bob_subscription, datetime(2026, 10, 31, 23, 59, tzinfo=UTC), 4_345, 100)
    [invoice] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])
    client.force_login(bob)

    page = client.get(f"/billing/invoices/{invoice.pk}/").content.decode()

    assert 'data-testid="usage-windows">3 usage windows<' in page
    assert "2026-10-03 09:00 – 2026-11-01 00:00 UTC" in page
    assert "12,345 events" in page
    assert f"subscription={bob_subscription.pk}" in page  # the usage page for this subscription


def test_late_usage_and_credit_show_with_reason_author_and_negative_line(
    client, bob, admin_user, late_history
):
    october, november = late_history
    client.force_login(bob)

    page = client.get(f"/billing/invoices/{november.pk}/").content.decode()

    assert "Late usage adjustment" in page
    assert "Adjustment</span> of the 2026-10-03 09:00 UTC window (October 2026, an earlier period)" in page
    assert "+1,200 events, +300 B" in page
    assert f"Window re-run by {admin_user.email}: ticket 42: delayed flush" in page
    assert f"by {admin_user.email}" in page
    # The credit: its own group, no subscription, a negative amount with the admin's reason.
    assert 'data-testid="credit-lines"' in page and "Outage on Nov 2" in page
    assert "-$5.00" in page
    # Base fee $49.00 + 0 blocks (5,000 ≤ 10,000) + late +1 block $1.50 − $5.00.
    assert november.total_minor == 4900 + 150 - 500
    assert f'data-testid="invoice-total">{format_money(november.total_minor)}<' in page
    # October, issued before the late usage arrived, shows none of it.
    october_page = client.get(f"/billing/invoices/{october.pk}/").content.decode()
    assert "Late usage adjustment" not in october_page and "ticket 42" not in october_page


def test_ledger_csv_lists_the_entries_the_invoice_billed(client, bob, carol, admin_user, late_history):
    _, november = late_history
    november.account.owner.applications.update(name='=HYPERLINK("http://evil.example")')
    client.force_login(bob)

    response = client.get(f"/billing/invoices/{november.pk}/?format=csv")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert sorted((row["window_start"], row["kind"], row["events"]) for row in rows) == [
        ("2026-10-03T09:00:00+00:00", "adjustment", "1200"),
        ("2026-11-04T08:00:00+00:00", "usage", "3000"),
        ("2026-11-06T17:00:00+00:00", "usage", "2000"),
    ]
    late = next(row for row in rows if row["kind"] == "adjustment")
    assert late["created_by"] == admin_user.email and "ticket 42" in late["reason"]
    assert {row["application"] for row in rows} == {'\'=HYPERLINK("http://evil.example")'}  # stays text

    client.force_login(carol)
    assert client.get(f"/billing/invoices/{november.pk}/?format=csv").status_code == 404


def test_failed_payment_shows_with_the_suspension_date_and_the_stripe_page(client, bob, bobs_invoice):
    failed_at = timezone.now() - timedelta(days=1)
    Invoice.objects.filter(pk=bobs_invoice.pk).update(
        status=Invoice.Status.OPEN,
        payment_failed_at=failed_at,
        hosted_invoice_url="https://invoice.stripe.com/i/acct_1/test_42",
    )
    DunningCase.objects.create(
        invoice=bobs_invoice,
        suspend_at=datetime(2026, 12, 7, 10, 30, tzinfo=UTC),
        reminders_sent=1,
    )
    client.force_login(bob)

    listing = client.get("/billing/invoices/").content.decode()
    assert 'data-testid="payment-failed">Payment failed<' in listing
    assert "Subscriptions suspended on 2026-12-07 10:30 UTC unless paid" in listing
    assert 'href="https://invoice.stripe.com/i/acct_1/test_42"' in listing  # "Pay"

    page = client.get(f"/billing/invoices/{bobs_invoice.pk}/").content.decode()
    assert "Pay / view in Stripe" in page
    assert 'href="https://invoice.stripe.com/i/acct_1/test_42"' in page
    assert "Your subscriptions will be suspended on <strong>2026-12-07 10:30 UTC</strong>" in page
    assert "1 reminder sent" in page

    # Paid: the failure is history, no more warning.
    Invoice.objects.filter(pk=bobs_invoice.pk).update(status=Invoice.Status.PAID, paid_at=timezone.now())
    page = client.get(f"/billing/invoices/{bobs_invoice.pk}/").content.decode()
    assert "Payment failed" not in page and "suspended on" not in page
    assert 'data-testid="paid-at"' in page


def test_a_hosted_url_that_is_not_http_is_never_a_link(client, bob, bobs_invoice):
    Invoice.objects.filter(pk=bobs_invoice.pk).update(hosted_invoice_url="javascript:alert(1)")
    client.force_login(bob)
    page = client.get(f"/billing/invoices/{bobs_invoice.pk}/").content.decode()
    assert "javascript:" not in page and "Pay / view in Stripe" not in page


@pytest.mark.parametrize("who", ["carol", "admin_user", "alice"])
def test_others_get_404_for_bobs_invoice_and_see_none_in_their_list(client, request, who, bobs_invoice):
    """carol (another consumer), the platform admin and alice (the API's provider) alike: the
    consumer pages show one's own invoices only."""
    client.force_login(request.getfixturevalue(who))

    assert client.get(f"/billing/invoices/{bobs_invoice.pk}/").status_code == 404
    assert client.get(f"/billing/invoices/{bobs_invoice.pk}/?format=csv").status_code == 404
    response = client.get("/billing/invoices/")
    assert response.status_code == 200
    assert "$53.50" not in response.content.decode()
    assert "No invoices yet" in response.content.decode()


def test_invoice_pages_require_login(client, bobs_invoice):
    for url in ("/billing/invoices/", f"/billing/invoices/{bobs_invoice.pk}/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (4900, "usd", "$49.00"),
        (5, "usd", "$0.05"),
        (123_456_789, "eur", "€1,234,567.89"),
        (-150, "gbp", "-£1.50"),
        (500, "jpy", "¥500"),
        (1200, "sek", "12.00 SEK"),
    ],
)
def test_money_is_formatted_from_minor_units(amount, currency, text):
    assert format_money(amount, currency) == text


def test_invoices_page_shows_this_month_so_far_as_the_invoice_would_bill_it(
    client, bob, carol, bob_subscription, record_usage
):
    """The running estimate uses the invoice's own lines and prices on the usage recorded so
    far: $49.00 base fee (10,000 events included) + 3 started thousands over at $1.50."""
    minute = timezone.now().replace(second=0, microsecond=0)
    record_usage(bob_subscription, minute, 12_345, 2_500_000)
    client.force_login(bob)
    page = client.get("/billing/invoices/").content.decode()
    assert "This month so far" in page
    assert 'data-testid="estimate-total">$53.50<' in page
    assert "12,345 events, 10,000 included, 3 × 1,000 events over" in page
    assert not Invoice.objects.exists(), "an estimate stores nothing"

    client.force_login(carol)
    assert "This month so far" not in client.get("/billing/invoices/").content.decode()


def test_the_estimate_takes_off_the_credits_not_spent_yet(client, bob, admin_user, bob_subscription):
    from billing.models import BillingAccount
    from billing.services import issue_credit

    account = BillingAccount.objects.create(owner=bob)
    issue_credit(account=account, amount_minor=150, currency="usd", reason="Sorry", by=admin_user)
    client.force_login(bob)

    page = client.get("/billing/invoices/").content.decode()

    assert 'data-testid="estimate-total">$47.50<' in page  # $49.00 base fee less the $1.50 credit
    credit = page.split('data-testid="estimate-credit">')[1].split("</tr>")[0]
    assert "Credits not spent yet" in credit and "−$1.50" in credit


def test_an_open_invoice_without_a_stripe_page_says_how_it_is_paid(client, bob, admin_user, bobs_invoice):
    """Not a bare "none": approved invoicing, a card on file, or a link to add a payment method."""
    Invoice.objects.filter(pk=bobs_invoice.pk).update(
        status=Invoice.Status.OPEN, stripe_synced_at=timezone.now()
    )
    account = bobs_invoice.account
    client.force_login(bob)
    url = f"/billing/invoices/{bobs_invoice.pk}/"

    def how_to_pay() -> str:
        page = client.get(url).content.decode()
        assert "settled outside Stripe" not in page
        return page.split('data-testid="how-to-pay">')[1].split("</dd>")[0]

    assert (
        how_to_pay()
        == '<a href="/billing/payment-method/">Add a payment method: the invoice is charged to it.</a>'
    )
    BillingAccount.objects.filter(pk=account.pk).update(
        payment_method_id="pm_1", payment_method_brand="visa", payment_method_last4="4242"
    )
    assert how_to_pay() == "It will be charged to your card on file (Visa •••• 4242)."
    BillingAccount.objects.filter(pk=account.pk).update(
        payment_method_id="", invoicing_approved_at=timezone.now(), invoicing_approved_by=admin_user
    )
    assert how_to_pay() == "Paid by invoice: Stripe emails it to bob@example.com."

    # Paid, or with Stripe's page to pay on: no hint.
    Invoice.objects.filter(pk=bobs_invoice.pk).update(hosted_invoice_url="https://invoice.stripe.com/i/x")
    assert 'data-testid="how-to-pay"' not in client.get(url).content.decode()
    Invoice.objects.filter(pk=bobs_invoice.pk).update(
        hosted_invoice_url="", status=Invoice.Status.PAID, paid_at=timezone.now()
    )
    page = client.get(url).content.decode()
    assert 'data-testid="how-to-pay"' not in page and "settled outside Stripe" in page
