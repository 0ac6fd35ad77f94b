"""The provider's revenue page and the platform admins' billing desk: what each persona may see,
numbers that are the invoice lines' sums, and forms that answer bad input with field errors."""

from __future__ import annotations

import csv
import html
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.db.models import Sum
from django.utils import timezone

from billing.ledger import ledger_close_windows, window_rerun
from billing.models import BillingAccount, Credit, DunningCase, Invoice, InvoiceLine, LedgerEntry
from billing.services import invoice_period_close
from tests.billing.conftest import OCTOBER
from tests.factories import (
    APIFactory,
    ApplicationFactory,
    BusinessPlanFactory,
    SubscriptionFactory,
    UserFactory,
)

SEPTEMBER_15 = datetime(2026, 9, 15, tzinfo=UTC)


@pytest.fixture
def erin(db):
    """Another provider: her API's revenue is none of alice's business."""
    return UserFactory(email="erin@example.com", is_provider=True)


@pytest.fixture
def market(bob, carol, erin, ticker_api, bob_subscription, record_usage):
    """October 2026 invoiced: bob on alice's Ticker "Metered" (usd) and on erin's Weather "Pro"
    (usd), carol on Ticker "Euro" (eur). bob's invoice is paid, carol's open."""
    weather = APIFactory(provider=erin, name="Weather", slug="weather")
    pro = BusinessPlanFactory(api=weather, name="Pro", flat_fee_minor=2500)
    euro = BusinessPlanFactory(api=ticker_api, name="Euro", flat_fee_minor=900, currency="eur")
    bob_weather = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Umbrella alerts"), plan=pro, created=SEPTEMBER_15
    )
    carol_euro = SubscriptionFactory(
        application=ApplicationFactory(owner=carol, name="Carol's board"), plan=euro, created=SEPTEMBER_15
    )
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 15, tzinfo=UTC), 12_345, 2_500_000)
    record_usage(bob_weather, datetime(2026, 10, 4, 9, 15, tzinfo=UTC), 700, 7_000)
    record_usage(carol_euro, datetime(2026, 10, 5, 9, 15, tzinfo=UTC), 50, 500)
    invoices = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])
    bobs = next(invoice for invoice in invoices if invoice.account.owner == bob)
    Invoice.objects.filter(pk=bobs.pk).update(status=Invoice.Status.PAID, paid_at=timezone.now())
    carols = next(invoice for invoice in invoices if invoice.account.owner == carol)
    Invoice.objects.filter(pk=carols.pk).update(status=Invoice.Status.OPEN)
    return {"bob": bobs, "carol": carols, "weather": weather, "euro": euro, "bob_weather": bob_weather}


def lines_sum(**filters) -> int:
    return InvoiceLine.objects.filter(**filters).aggregate(total=Sum("amount_minor"))["total"] or 0


# --- revenue ---------------------------------------------------------------------------------------


def test_revenue_is_the_sum_of_the_providers_invoice_lines_per_currency(client, alice, market):
    client.force_login(alice)
    response = client.get("/billing/revenue/")

    assert response.status_code == 200
    page = response.content.decode()
    usd = lines_sum(subscription__api__provider=alice, invoice__currency="usd")
    eur = lines_sum(subscription__api__provider=alice, invoice__currency="eur")
    assert (usd, eur) == (4900 + 450, 900)
    assert 'data-testid="invoiced-usd">$53.50<' in page
    assert 'data-testid="paid-usd">$53.50<' in page  # bob paid
    assert 'data-testid="invoiced-eur">€9.00<' in page
    assert 'data-testid="paid-eur">€0.00<' in page and 'data-testid="outstanding-eur">€9.00<' in page
    assert 'data-testid="subscribers-usd">1<' in page
    # Per plan and per period, alice's APIs only: erin's Weather is invisible.
    assert "Metered" in page and "Euro" in page and "October 2026" in page
    assert "Weather" not in page and "Umbrella" not in page and "$25.00" not in page
    assert (
        'data-revenue-chart="chart-revenue-usd"' in page and 'data-revenue-chart="chart-revenue-eur"' in page
    )


def test_another_provider_sees_only_her_api_and_admins_see_every_api(client, erin, admin_user, market):
    client.force_login(erin)
    page = client.get("/billing/revenue/").content.decode()
    assert 'data-testid="invoiced-usd">$25.00<' in page
    assert "Weather" in page and "Ticker" not in page and "Metered" not in page
    assert "invoiced-eur" not in page  # carol's euros are alice's

    client.force_login(admin_user)
    page = client.get("/billing/revenue/").content.decode()
    assert 'data-testid="invoiced-usd">$78.50<' in page  # 53.50 + 25.00
    assert "Weather" in page and "Ticker" in page


@pytest.mark.parametrize("who", ["bob", "carol"])
def test_consumers_get_403_for_revenue(client, request, who, market):
    client.force_login(request.getfixturevalue(who))
    response = client.get("/billing/revenue/")
    assert response.status_code == 403
    assert "$53.50" not in response.content.decode()


def test_revenue_filters_by_period_and_api_and_names_a_bad_one(client, alice, market):
    client.force_login(alice)

    page = client.get("/billing/revenue/?period=2026-10&api=ticker").content.decode()
    assert 'data-testid="invoiced-usd">$53.50<' in page
    empty = client.get("/billing/revenue/?period=2026-09").content.decode()
    assert 'data-testid="revenue-empty"' in empty and "September 2026" in empty

    for query, field, text in [
        ("period=abc", "period", "is not a billing period"),
        ("period=2026-13", "period", "is not a billing period"),
        ("api=weather", "api", "is not one of your APIs"),  # erin's: the same as no such API
        ("api=nope", "api", "is not one of your APIs"),
    ]:
        response = client.get(f"/billing/revenue/?{query}")
        assert response.status_code == 400, query
        assert (
            f'data-testid="error-{field}"' in response.content.decode() and text in response.content.decode()
        )


def test_revenue_csv_rows_sum_to_the_lines(client, alice, market):
    client.force_login(alice)
    response = client.get("/billing/revenue/?format=csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert {(row["currency"], row["api"], row["plan"], row["invoiced_minor"]) for row in rows} == {
        ("usd", "ticker", "Metered", "5350"),
        ("eur", "ticker", "Euro", "900"),
    }


# --- the admins' desk: access and lists -------------------------------------------------------------


@pytest.mark.parametrize("who", ["alice", "bob", "carol"])
def test_non_staff_get_403_on_the_billing_desk_and_its_forms(client, request, who, market):
    client.force_login(request.getfixturevalue(who))
    assert client.get("/billing/admin/").status_code == 403
    posted = {"date": "2026-10-03", "hour": "9", "reason": "x"}
    assert client.post("/billing/admin/windows/rerun/", posted).status_code == 403
    credit = {"account": "bob@example.com", "amount": "5", "currency": "usd", "reason": "x"}
    assert client.post("/billing/admin/credit/", credit).status_code == 403
    assert not Credit.objects.exists() and not LedgerEntry.objects.filter(kind="adjustment").exists()


def test_anonymous_is_sent_to_sign_in(client, market):
    for url in ("/billing/admin/", "/billing/revenue/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_admin_lists_every_invoice_with_filters(client, admin_user, market):
    client.force_login(admin_user)
    page = client.get("/billing/admin/").content.decode()
    assert "bob@example.com" in page and "carol@example.com" in page
    assert 'data-testid="invoice-count">2<' in page

    page = client.get("/billing/admin/?status=open").content.decode()
    assert 'data-testid="invoice-count">1<' in page and "carol@example.com" in page
    page = client.get("/billing/admin/?email=BOB").content.decode()
    assert 'data-testid="invoice-count">1<' in page and f'data-invoice="{market["bob"].pk}"' in page
    page = client.get("/billing/admin/?period=2026-09").content.decode()
    assert 'data-testid="invoices-empty"' in page
    page = client.get("/billing/admin/?period=2026-10").content.decode()
    assert 'data-testid="invoice-count">2<' in page

    response = client.get("/billing/admin/?period=October&status=nope")
    assert response.status_code == 400
    assert 'data-testid="error-period"' in response.content.decode()


def test_admin_invoice_list_is_paginated(client, admin_user, market):
    for number in range(30):
        account = BillingAccount.objects.create(owner=UserFactory(email=f"many{number}@example.com"))
        Invoice.objects.create(
            account=account, period_start=OCTOBER[0], period_end=OCTOBER[1], total_minor=100
        )
    client.force_login(admin_user)
    first = client.get("/billing/admin/").content.decode()
    assert "Page 1 of 2" in first and first.count("data-invoice=") == 25
    second = client.get("/billing/admin/?page=2").content.decode()
    assert second.count("data-invoice=") == 7
    assert client.get("/billing/admin/?page=abc").status_code == 200  # the first page


def test_failed_payments_show_their_dunning(client, admin_user, market):
    carols = market["carol"]
    Invoice.objects.filter(pk=carols.pk).update(payment_failed_at=datetime(2026, 11, 2, 8, 0, tzinfo=UTC))
    DunningCase.objects.create(
        invoice=carols,
        suspend_at=datetime(2026, 11, 9, 8, 0, tzinfo=UTC),
        reminders_sent=2,
        last_failure_message="Your card was declined.",
    )
    client.force_login(admin_user)
    page = client.get("/billing/admin/").content.decode()
    table = page.split('data-testid="failed-payments"')[1].split("</table>")[0]
    assert "carol@example.com" in table and "bob@example.com" not in table
    assert "Reminding" in table and "on 2026-11-09 08:00" in table and "Your card was declined." in table
    assert ">2<" in table  # reminders sent


# --- re-running a usage window ---------------------------------------------------------------------


def test_rerun_writes_an_adjustment_when_analytics_changed_after_the_close(
    client, admin_user, bob_subscription, record_usage, market
):
    # October 3, 09:xx was closed with 12,345 events; 55 more arrive late.
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 50, tzinfo=UTC), 55, 550)
    client.force_login(admin_user)

    response = client.post(
        "/billing/admin/windows/rerun/", {"date": "2026-10-03", "hour": "9", "reason": "ticket 7"}
    )

    # Post/Redirect/Get: reloading the page after a re-run does not post it again.
    assert response.status_code == 302 and response["Location"] == "/billing/admin/#rerun"
    page = client.get(response["Location"]).content.decode()
    assert 'role="alert"' in page and "was re-run: 1 adjustment entry written" in page
    assert "1 adjustment entry written" in page and "+55" in page
    # The result is shown once: the next visit is the plain desk.
    assert 'data-testid="rerun-result"' not in client.get("/billing/admin/").content.decode()
    [entry] = LedgerEntry.objects.filter(kind="adjustment")
    assert (entry.subscription, entry.events, entry.bytes, entry.created_by) == (
        bob_subscription,
        55,
        550,
        admin_user,
    )
    assert entry.reason == "Window re-run by admin@example.com: ticket 7"

    again = client.post(
        "/billing/admin/windows/rerun/", {"date": "2026-10-03", "hour": "9", "reason": "again"}, follow=True
    )
    assert "no difference" in again.content.decode()
    assert LedgerEntry.objects.filter(kind="adjustment").count() == 1


@pytest.mark.parametrize(
    ("posted", "field", "text"),
    [
        ({"date": "abc", "hour": "9", "reason": "r"}, "date", "Enter a valid date"),
        ({"date": "2026-10-03", "hour": "24", "reason": "r"}, "hour", "Select a valid choice"),
        ({"date": "2026-10-03", "hour": "9", "reason": ""}, "reason", "This field is required"),
        ({"date": "2099-01-01", "hour": "0", "reason": "r"}, "date", "in the future"),
        ({"date": "1999-12-31", "hour": "0", "reason": "r"}, "date", "the year 2000 or later"),
        # The ledger began with the first subscription (September 15).
        ({"date": "2026-09-01", "hour": "0", "reason": "r"}, "date", "older than the ledger's first window"),
    ],
)
def test_rerun_form_names_the_bad_field(client, admin_user, market, posted, field, text):
    client.force_login(admin_user)
    response = client.post("/billing/admin/windows/rerun/", posted)
    assert response.status_code == 400
    page = html.unescape(response.content.decode())
    assert "is-invalid" in page.split(f'id="rerun_{field}"')[0].rsplit("<", 1)[1], field
    assert text in page
    assert not LedgerEntry.objects.filter(kind="adjustment").exists()


def test_rerun_of_this_hour_is_refused_until_it_has_ended(client, admin_user, market):
    ledger_close_windows(now=timezone.now())
    now = timezone.now().astimezone(UTC)
    client.force_login(admin_user)
    response = client.post(
        "/billing/admin/windows/rerun/", {"date": f"{now:%Y-%m-%d}", "hour": str(now.hour), "reason": "r"}
    )
    assert response.status_code == 400
    assert "has not ended yet" in response.content.decode()


# --- issuing a credit --------------------------------------------------------------------------------


def test_credit_in_major_units_becomes_a_negative_line_on_the_next_invoice(
    client, admin_user, bob, bob_subscription, record_usage
):
    client.force_login(admin_user)
    response = client.post(
        "/billing/admin/credit/",
        {"account": "BOB@example.com", "amount": "12.50", "currency": "USD", "reason": "Outage on Oct 2"},
    )

    assert response.status_code == 302 and response["Location"] == "/billing/admin/#credits"
    [credit] = Credit.objects.all()
    assert (credit.account.owner, credit.amount_minor, credit.currency, credit.created_by) == (
        bob,
        1250,
        "usd",
        admin_user,
    )
    page = client.get("/billing/admin/").content.decode()
    assert "Credit #" in page and "$12.50" in page and "next invoice" in page

    record_usage(bob_subscription, datetime(2026, 10, 3, tzinfo=UTC), 12_345)
    [invoice] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])
    line = invoice.lines.get(kind="credit")
    assert (line.amount_minor, line.subscription, line.credit) == (-1250, None, credit)
    assert invoice.total_minor == 5350 - 1250
    client.force_login(bob)
    page = client.get(f"/billing/invoices/{invoice.pk}/").content.decode()
    assert "-$12.50" in page and "Outage on Oct 2" in page and "$41.00" in page


@pytest.mark.parametrize(
    ("posted", "field", "text"),
    [
        ({"amount": "abc"}, "amount", "Enter an amount in USD"),
        ({"amount": "-5"}, "amount", "A credit is a positive amount in USD"),
        ({"amount": "0"}, "amount", "A credit is a positive amount"),
        ({"amount": "1.005"}, "amount", "USD amounts have at most 2 decimals"),
        ({"amount": "1e3"}, "amount", "Enter an amount in USD"),
        ({"amount": "NaN"}, "amount", "Enter an amount in USD"),
        ({"amount": "12.5", "currency": "jpy"}, "amount", "JPY amounts have no decimals"),
        ({"amount": "99999999999999"}, "amount", "99999999999999 USD is too large"),
        ({"amount": "20000000000"}, "amount", "is too large: a credit is at most $10,000,000,000.00"),
        # A comma is never a thousands separator nor dropped: "1,50" was once $150.00.
        ({"amount": "1,50"}, "amount", "Use a dot for the decimal part, e.g. 1.50"),
        ({"amount": "1,000.00"}, "amount", "Use a dot for the decimal part, e.g. 1.50"),
        ({"amount": "1.500"}, "amount", "USD amounts have at most 2 decimals"),
        ({"amount": "1.2.3"}, "amount", "Enter an amount in USD"),
        ({"amount": "1 000"}, "amount", "Enter an amount in USD"),
        ({"amount": "\u0661\u0662"}, "amount", "Enter an amount in USD"),  # Arabic-Indic digits
        ({"amount": "12.50\n1"}, "amount", "Enter an amount in USD"),
        ({"amount": "500,5", "currency": "jpy"}, "amount", "JPY amounts are whole numbers"),
        ({"account": "nobody@example.com"}, "account", "No user has the email address"),
        ({"account": "999999"}, "account", "No billing account has the id 999999"),
        ({"currency": "dollars"}, "currency", "Ensure this value has at most 3 characters"),
        ({"currency": "u$d"}, "currency", "three-letter ISO 4217 code"),
        ({"reason": "  "}, "reason", "This field is required"),
    ],
)
def test_credit_form_names_the_bad_field(client, admin_user, bob, posted, field, text):
    client.force_login(admin_user)
    data = {"account": "bob@example.com", "amount": "5.00", "currency": "usd", "reason": "Outage", **posted}
    response = client.post("/billing/admin/credit/", data)
    assert response.status_code == 400
    page = html.unescape(response.content.decode())
    widget = page.split(f'id="credit_{field}"')[0].rsplit("<", 1)[1]
    assert "is-invalid" in widget, field
    assert text in page
    assert not Credit.objects.exists()


@pytest.mark.parametrize(("amount", "minor"), [("1.5", 150), ("1.50", 150), ("0.01", 1), ("7", 700)])
def test_a_credit_amount_is_read_exactly(client, admin_user, bob, bob_subscription, amount, minor):
    client.force_login(admin_user)
    data = {"account": "bob@example.com", "amount": amount, "currency": "usd", "reason": "Goodwill"}
    response = client.post("/billing/admin/credit/", data, follow=True)
    assert response.redirect_chain == [("/billing/admin/#credits", 302)]
    assert Credit.objects.get().amount_minor == minor
    assert "issued to bob@example.com" in response.content.decode()


def test_a_credit_in_yen_needs_no_decimals(client, admin_user, bob, ticker_api):
    BusinessPlanFactory(api=ticker_api, name="Yen", flat_fee_minor=500, currency="jpy")  # a credit in use
    client.force_login(admin_user)
    data = {"account": "bob@example.com", "amount": "500", "currency": "jpy", "reason": "Goodwill"}
    assert client.post("/billing/admin/credit/", data).status_code == 302
    assert Credit.objects.get().amount_minor == 500


def test_staff_menu_links_the_desk_and_providers_see_revenue(client, admin_user, alice, bob):
    client.force_login(admin_user)
    page = client.get("/billing/invoices/").content.decode()
    assert 'href="/billing/admin/"' in page
    client.force_login(alice)
    page = client.get("/billing/invoices/").content.decode()
    assert 'href="/billing/revenue/">Revenue<' in page and 'href="/billing/admin/"' not in page
    client.force_login(bob)
    page = client.get("/billing/invoices/").content.decode()
    assert 'href="/billing/revenue/"' not in page and 'href="/billing/admin/"' not in page


def test_yesterday_is_a_window_the_admin_can_rerun(
    client, admin_user, bob_subscription, record_usage, market
):
    """A window of the open month: closed by the rerun itself when beat has not closed it yet."""
    yesterday = (
        (timezone.now() - timedelta(days=1))
        .astimezone(UTC)
        .replace(hour=5, minute=0, second=0, microsecond=0)
    )
    record_usage(bob_subscription, yesterday + timedelta(minutes=3), 10)
    client.force_login(admin_user)
    response = client.post(
        "/billing/admin/windows/rerun/",
        {"date": f"{yesterday:%Y-%m-%d}", "hour": "5", "reason": "check"},
        follow=True,
    )
    assert response.status_code == 200 and response.redirect_chain == [("/billing/admin/#rerun", 302)]
    assert 'data-testid="rerun-result"' in response.content.decode()


def test_django_admin_shows_the_ledger_read_only(client, admin_user, late_history_for_admin):
    client.force_login(admin_user)
    for model in ("usagewindow", "ledgerentry", "credit", "stripeevent", "dunningcase", "invoice"):
        assert client.get(f"/admin/billing/{model}/").status_code == 200, model
    entry = LedgerEntry.objects.filter(kind="adjustment").first()
    page = client.get(f"/admin/billing/ledgerentry/{entry.pk}/change/")
    assert page.status_code == 200 and 'name="events"' not in page.content.decode()  # read-only
    assert client.get("/admin/billing/ledgerentry/add/").status_code == 403
    assert client.get("/admin/billing/ledgerentry/?kind__exact=adjustment").status_code == 200


@pytest.fixture
def late_history_for_admin(admin_user, bob_subscription, record_usage, market):
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 50, tzinfo=UTC), 5)
    window_rerun(start=datetime(2026, 10, 3, 9, tzinfo=UTC), by=admin_user, reason="admin view")
    DunningCase.objects.create(invoice=market["carol"], suspend_at=timezone.now() + timedelta(days=3))


# --- a year as the period ------------------------------------------------------------------------------


def test_a_year_finds_the_monthly_invoices_that_start_in_it(client, admin_user, alice, market, bob):
    """``period=2026`` means every invoice whose period starts in 2026 (UTC), monthly ones too."""
    yearly = BillingAccount.objects.create(owner=UserFactory(email="yearly@example.com"))
    Invoice.objects.create(
        account=yearly,
        period_start=datetime(2026, 1, 1, tzinfo=UTC),
        period_end=datetime(2027, 1, 1, tzinfo=UTC),
        total_minor=100,
    )
    december_2025 = Invoice.objects.create(
        account=BillingAccount.objects.get(owner=bob),
        period_start=datetime(2025, 12, 1, tzinfo=UTC),
        period_end=datetime(2026, 1, 1, tzinfo=UTC),
        total_minor=100,
    )
    client.force_login(admin_user)
    page = client.get("/billing/admin/?period=2026").content.decode()
    assert 'data-testid="invoice-count">3<' in page, "October's two and the yearly one"
    assert f'data-invoice="{market["bob"].pk}"' in page and f'data-invoice="{december_2025.pk}"' not in page
    page = client.get("/billing/admin/?period=2025").content.decode()
    assert 'data-testid="invoice-count">1<' in page and f'data-invoice="{december_2025.pk}"' in page
    page = client.get("/billing/admin/?period=2026-01").content.decode()
    assert 'data-testid="invoice-count">1<' in page and "yearly@example.com" in page

    client.force_login(alice)
    response = client.get("/billing/revenue/?period=2026")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-testid="invoiced-usd">$53.50<' in page and 'data-testid="invoiced-eur">€9.00<' in page
    assert "Year 2026" in page
    assert '<option value="2026" selected>Year 2026</option>' in page  # the picker offers the year
    rows = list(
        csv.DictReader(io.StringIO(client.get("/billing/revenue/?period=2026&format=csv").content.decode()))
    )
    assert {row["period_start"][:7] for row in rows} == {"2026-10"} and len(rows) == 2  # Metered, Euro
    empty = client.get("/billing/revenue/?period=2025").content.decode()
    assert 'data-testid="revenue-empty"' in empty


# --- paying by invoice -------------------------------------------------------------------------------------


def test_the_desk_approves_paying_by_invoice_for_a_consumer_without_a_billing_account(
    client, admin_user, carol
):
    assert not BillingAccount.objects.filter(owner=carol).exists()
    client.force_login(admin_user)

    response = client.post("/billing/admin/", {"email": "CAROL@example.com", "action": "approve"})

    assert response.status_code == 302 and response["Location"] == "/billing/admin/#invoicing"
    account = BillingAccount.objects.get(owner=carol)
    assert account.invoicing_approved and account.invoicing_approved_by == admin_user
    page = client.get(response["Location"]).content.decode()
    assert "carol@example.com may pay by invoice (approved by admin@example.com" in page
    table = page.split('data-testid="invoicing-accounts"')[1].split("</table>")[0]
    assert "carol@example.com" in table and "admin@example.com" in table
    assert f"{account.invoicing_approved_at:%Y-%m-%d %H:%M} UTC" in table

    response = client.post(
        "/billing/admin/", {"email": "carol@example.com", "action": "withdraw"}, follow=True
    )
    assert response.redirect_chain == [("/billing/admin/#invoicing", 302)]
    assert "Paying by invoice withdrawn for carol@example.com" in response.content.decode()
    account.refresh_from_db()
    assert (account.invoicing_approved_at, account.invoicing_approved_by) == (None, None)
    assert 'data-testid="invoicing-accounts"' not in response.content.decode()


@pytest.mark.parametrize(
    ("posted", "field", "text"),
    [
        ({"email": "nobody@example.com", "action": "approve"}, "email", "No user has the email address"),
        ({"email": "", "action": "approve"}, "email", "This field is required"),
        ({"email": "carol@example.com", "action": "withdraw"}, "email", "is not approved to pay by invoice"),
        ({"email": "carol@example.com", "action": "both"}, "action_0", "Select a valid choice"),
    ],
)
def test_the_invoicing_form_names_the_bad_field(client, admin_user, carol, posted, field, text):
    client.force_login(admin_user)
    response = client.post("/billing/admin/", posted)
    assert response.status_code == 400
    page = html.unescape(response.content.decode())
    assert "is-invalid" in page.split(f'id="invoicing_{field}"')[0].rsplit("<", 1)[1], field
    assert text in page
    assert not BillingAccount.objects.filter(invoicing_approved_at__isnull=False).exists()


def test_non_staff_cannot_approve_paying_by_invoice(client, bob):
    client.force_login(bob)
    assert (
        client.post("/billing/admin/", {"email": "bob@example.com", "action": "approve"}).status_code == 403
    )
    assert not BillingAccount.objects.filter(invoicing_approved_at__isnull=False).exists()


# --- the Django admin -----------------------------------------------------------------------------------


def test_django_admin_adds_and_deletes_nothing_of_the_ledger(
    client, admin_user, late_history_for_admin, market, bob
):
    client.force_login(admin_user)
    # The add form of a billing account had a read-only owner: saving it was a 500.
    for model in (
        "billingaccount",
        "invoice",
        "invoiceline",
        "usagewindow",
        "ledgerentry",
        "credit",
        "stripeevent",
        "dunningcase",
    ):
        assert client.get(f"/admin/billing/{model}/add/").status_code == 403, model
    invoice = market["carol"]
    assert client.get(f"/admin/billing/invoice/{invoice.pk}/delete/").status_code == 403
    assert client.post(f"/admin/billing/invoice/{invoice.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Invoice.objects.filter(pk=invoice.pk).exists()
    line = invoice.lines.first()
    assert client.get(f"/admin/billing/invoiceline/{line.pk}/delete/").status_code == 403
    changelist = client.get("/admin/billing/invoice/").content.decode()
    assert 'value="delete_selected"' not in changelist and 'value="send_to_stripe"' in changelist

    account = BillingAccount.objects.get(owner=bob)
    BillingAccount.objects.filter(pk=account.pk).update(
        stripe_customer_id="cus_keep", payment_method_id="pm_keep", payment_method_last4="4242"
    )
    page = client.get(f"/admin/billing/billingaccount/{account.pk}/change/").content.decode()
    for name in ("stripe_customer_id", "stripe_subscription_id", "payment_method_id", "payment_method_last4"):
        assert f'name="{name}"' not in page, name
    assert "cus_keep" in page
    client.post(f"/admin/billing/billingaccount/{account.pk}/change/", {"stripe_customer_id": "cus_evil"})
    account.refresh_from_db()
    assert (account.stripe_customer_id, account.payment_method_id) == ("cus_keep", "pm_keep")


def test_django_admin_action_approves_paying_by_invoice(client, admin_user, bob, carol, market):
    client.force_login(admin_user)
    accounts = BillingAccount.objects.filter(owner__in=[bob, carol])
    response = client.post(
        "/admin/billing/billingaccount/",
        {"action": "approve_invoicing", "_selected_action": [account.pk for account in accounts]},
        follow=True,
    )
    assert response.status_code == 200
    assert "Paying by invoice approved for 2 billing account(s)." in response.content.decode()
    for account in BillingAccount.objects.filter(owner__in=[bob, carol]):
        assert account.invoicing_approved and account.invoicing_approved_by == admin_user
