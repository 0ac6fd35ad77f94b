"""REST API of billing (/api/v1/billing/): the pages' data as JSON, the same persona isolation,
and 400s naming the field for bad input."""

# The fixtures imported from the page tests are parameters here (F811 would call them redefined).
# ruff: noqa: F811

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db.models import Sum
from django.utils import timezone

from billing.ledger import window_rerun
from billing.models import BillingAccount, Credit, DunningCase, Invoice, InvoiceLine, LedgerEntry
from billing.services import invoice_period_close, issue_credit
from tests.billing.conftest import NOVEMBER, OCTOBER
from tests.billing.test_pages_provider_admin import erin, market  # noqa: F401 - fixtures

BASE = "/api/v1/billing"


@pytest.fixture
def api(client):
    """``api(user)``: the test client signed in as ``user`` (session authentication)."""

    def signed_in(user):
        client.force_login(user)
        return client

    return signed_in


def test_consumer_lists_own_invoices_and_reads_lines_with_the_ledger_behind_them(api, bob, market):
    response = api(bob).get(f"{BASE}/invoices/")

    assert response.status_code == 200
    [invoice] = response.json()
    assert response["X-Total-Count"] == "1"
    assert (invoice["id"], invoice["currency"], invoice["status"]) == (market["bob"].pk, "usd", "paid")
    assert (invoice["subtotal_minor"], invoice["tax_minor"], invoice["total_minor"]) == (7850, 0, 7850)
    assert invoice["account"]["email"] == "bob@example.com" and invoice["period_label"] == "October 2026"

    detail = api(bob).get(f"{BASE}/invoices/{invoice['id']}/").json()
    kinds = [(line["subscription"]["api"], line["kind"], line["amount_minor"]) for line in detail["lines"]]
    assert sorted(kinds) == [
        ("ticker", "base_fee", 4900),
        ("ticker", "events", 450),
        ("weather", "base_fee", 2500),
    ]
    events = next(line for line in detail["lines"] if line["kind"] == "events")
    assert events["ledger"]["usage_windows"] == 1
    assert events["ledger"]["events"] == 12_345 and events["ledger"]["late"] is False
    assert events["ledger"]["first_window_start"] == "2026-10-03T09:00:00Z"


@pytest.mark.parametrize("who", ["carol", "alice", "admin_user"])
def test_another_users_invoice_is_404_and_not_listed(api, request, who, market):
    client = api(request.getfixturevalue(who))
    assert client.get(f"{BASE}/invoices/{market['bob'].pk}/").status_code == 404
    assert market["bob"].pk not in [invoice["id"] for invoice in client.get(f"{BASE}/invoices/").json()]


def test_late_adjustments_and_credits_on_the_invoice(api, bob, admin_user, bob_subscription, record_usage):
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 15, tzinfo=UTC), 10_500)
    invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 20, tzinfo=UTC), 1_200, 300)
    window_rerun(start=datetime(2026, 10, 3, 9, tzinfo=UTC), by=admin_user, reason="ticket 42")
    account = BillingAccount.objects.get(owner=bob)
    issue_credit(account=account, amount_minor=500, currency="usd", reason="Outage", by=admin_user)
    [november] = invoice_period_close(period_start=NOVEMBER[0], period_end=NOVEMBER[1], allow_open=True)

    detail = api(bob).get(f"{BASE}/invoices/{november.pk}/").json()

    late = next(line for line in detail["lines"] if line["kind"] == "adjustment")
    assert late["ledger"]["late"] is True
    [adjustment] = late["ledger"]["adjustments"]
    assert (adjustment["events"], adjustment["created_by"]) == (1_200, admin_user.email)
    assert adjustment["reason"].endswith("ticket 42")
    credit = next(line for line in detail["lines"] if line["kind"] == "credit")
    assert (credit["amount_minor"], credit["subscription"], credit["ledger"]) == (-500, None, None)
    assert detail["total_minor"] == sum(line["amount_minor"] for line in detail["lines"]) == 4900 + 150 - 500


def test_estimate_is_this_month_so_far(api, bob, carol, bob_subscription, record_usage):
    record_usage(bob_subscription, timezone.now().replace(second=0, microsecond=0), 12_345, 2_500_000)
    data = api(bob).get(f"{BASE}/estimate/").json()
    assert data["totals"] == [{"currency": "usd", "total_minor": 5350}]
    assert {line["kind"] for line in data["lines"]} == {"base_fee", "events"}
    assert api(carol).get(f"{BASE}/estimate/").json()["totals"] == []


def test_revenue_is_the_providers_lines_and_nobody_elses(api, alice, erin, admin_user, bob, market):
    data = api(alice).get(f"{BASE}/revenue/").json()

    usd = InvoiceLine.objects.filter(subscription__api__provider=alice, invoice__currency="usd")
    assert data["currencies"] == [
        {
            "currency": "eur",
            "invoiced_minor": 900,
            "paid_minor": 0,
            "outstanding_minor": 900,
            "subscribers": 1,
            "invoices": 1,
        },
        {
            "currency": "usd",
            "invoiced_minor": usd.aggregate(total=Sum("amount_minor"))["total"],
            "paid_minor": 5350,
            "outstanding_minor": 0,
            "subscribers": 1,
            "invoices": 1,
        },
    ]
    assert {row["api"]["slug"] for row in data["rows"]} == {"ticker"}
    assert {(row["plan"]["name"], row["period"]) for row in data["rows"]} == {
        ("Metered", "2026-10"),
        ("Euro", "2026-10"),
    }
    assert sum(row["invoiced_minor"] for row in data["rows"]) == 5350 + 900

    assert {row["api"]["slug"] for row in api(erin).get(f"{BASE}/revenue/").json()["apis"]} == {"weather"}
    assert {row["api"]["slug"] for row in api(admin_user).get(f"{BASE}/revenue/").json()["apis"]} == {
        "ticker",
        "weather",
    }
    assert api(bob).get(f"{BASE}/revenue/").status_code == 403


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("period=abc", "period"),
        ("period=2026-00", "period"),
        ("period=1999", "period"),
        ("api=weather", "api"),
    ],
)
def test_revenue_bad_filter_is_400_naming_it(api, alice, market, query, field):
    response = api(alice).get(f"{BASE}/revenue/?{query}")
    assert response.status_code == 400
    assert list(response.json()) == [field]


def test_admin_endpoints_are_403_for_everyone_else(api, alice, bob, carol, market):
    for user in (alice, bob, carol):
        client = api(user)
        assert client.get(f"{BASE}/admin/invoices/").status_code == 403
        assert client.get(f"{BASE}/admin/failed-payments/").status_code == 403
        assert client.get(f"{BASE}/admin/credits/").status_code == 403
        rerun = {"start": "2026-10-03T09:00:00Z", "reason": "x"}
        assert (
            client.post(f"{BASE}/admin/windows/rerun/", rerun, content_type="application/json").status_code
            == 403
        )
        credit = {"account": "bob@example.com", "amount_minor": 500, "currency": "usd", "reason": "x"}
        assert (
            client.post(f"{BASE}/admin/credits/", credit, content_type="application/json").status_code == 403
        )
    assert not Credit.objects.exists()


def test_anonymous_gets_401(client, market):
    assert client.get(f"{BASE}/invoices/").status_code == 401
    assert client.get(f"{BASE}/admin/invoices/").status_code == 401


def test_admin_lists_and_filters_every_invoice(api, admin_user, market):
    client = api(admin_user)
    assert {invoice["account"]["email"] for invoice in client.get(f"{BASE}/admin/invoices/").json()} == {
        "bob@example.com",
        "carol@example.com",
    }
    assert [i["account"]["email"] for i in client.get(f"{BASE}/admin/invoices/?status=open").json()] == [
        "carol@example.com"
    ]
    assert len(client.get(f"{BASE}/admin/invoices/?email=CAROL&period=2026-10").json()) == 1
    assert client.get(f"{BASE}/admin/invoices/?period=2026-09").json() == []
    response = client.get(f"{BASE}/admin/invoices/?status=lost&period=x")
    assert response.status_code == 400 and set(response.json()) == {"status", "period"}


def test_failed_payments_with_their_dunning_case(api, admin_user, market):
    carols = market["carol"]
    Invoice.objects.filter(pk=carols.pk).update(payment_failed_at=datetime(2026, 11, 2, 8, tzinfo=UTC))
    DunningCase.objects.create(
        invoice=carols, suspend_at=datetime(2026, 11, 9, 8, tzinfo=UTC), reminders_sent=2
    )

    [failed] = api(admin_user).get(f"{BASE}/admin/failed-payments/").json()

    assert (failed["id"], failed["payment_failed"]) == (carols.pk, True)
    assert failed["dunning"]["state"] == "open" and failed["dunning"]["reminders_sent"] == 2
    assert failed["dunning"]["suspend_at"] == "2026-11-09T08:00:00Z"


def test_rerun_writes_the_late_usage_once(api, admin_user, bob_subscription, record_usage, market):
    record_usage(bob_subscription, datetime(2026, 10, 3, 9, 50, tzinfo=UTC), 55, 550)
    client = api(admin_user)
    body = {"start": "2026-10-03T09:00:00Z", "reason": "ticket 7"}

    first = client.post(f"{BASE}/admin/windows/rerun/", body, content_type="application/json")

    assert first.status_code == 200
    data = first.json()
    assert (data["window_start"], data["window_end"], data["difference"]) == (
        "2026-10-03T09:00:00Z",
        "2026-10-03T10:00:00Z",
        True,
    )
    [entry] = data["adjustments"]
    assert (entry["subscription"], entry["events"], entry["bytes"], entry["revision"]) == (
        bob_subscription.pk,
        55,
        550,
        1,
    )
    assert entry["created_by"] == "admin@example.com"
    again = client.post(f"{BASE}/admin/windows/rerun/", body, content_type="application/json").json()
    assert (again["difference"], again["adjustments"]) == (False, [])
    assert LedgerEntry.objects.filter(kind="adjustment").count() == 1


@pytest.mark.parametrize(
    ("body", "field", "text"),
    [
        ({"start": "2026-10-03T09:30:00Z"}, "start", "starts on the hour"),
        ({"start": "2099-01-01T00:00:00Z"}, "start", "has not ended yet"),
        ({"start": "0001-01-01T00:00:00Z"}, "start", "the year 2000 or later"),
        ({"start": "2026-09-01T00:00:00Z"}, "start", "older than the ledger's first window"),
        ({"start": "yesterday"}, "start", "Datetime has wrong format"),
        ({"start": "2026-10-03T09:00:00+05:30"}, "start", "starts on the hour"),
        ({"reason": ""}, "reason", "may not be blank"),
    ],
)
def test_rerun_bad_input_is_400_naming_the_field(api, admin_user, market, body, field, text):
    payload = {"start": "2026-10-03T09:00:00Z", "reason": "r", **body}
    response = api(admin_user).post(f"{BASE}/admin/windows/rerun/", payload, content_type="application/json")
    assert response.status_code == 400
    assert list(response.json()) == [field] and text in response.json()[field][0]


def test_rerun_of_the_current_hour_is_400(api, admin_user, market):
    start = timezone.now().astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    body = {"start": start.isoformat(), "reason": "r"}
    response = api(admin_user).post(f"{BASE}/admin/windows/rerun/", body, content_type="application/json")
    assert response.status_code == 400 and "has not ended yet" in response.json()["start"][0]
    yesterday = start - timedelta(days=1)
    body = {"start": yesterday.isoformat(), "reason": "r"}
    assert (
        api(admin_user)
        .post(f"{BASE}/admin/windows/rerun/", body, content_type="application/json")
        .status_code
        == 200
    )


def test_credit_by_email_or_account_id_lands_on_the_next_invoice(
    api, admin_user, bob, bob_subscription, record_usage
):
    client = api(admin_user)
    body = {"account": "Bob@Example.com", "amount_minor": 1250, "currency": "USD", "reason": "Outage"}

    response = client.post(f"{BASE}/admin/credits/", body, content_type="application/json")

    assert response.status_code == 201
    created = response.json()
    assert (created["amount_minor"], created["currency"], created["invoice"]) == (1250, "usd", None)
    assert created["account"]["email"] == "bob@example.com" and created["created_by"] == admin_user.email
    by_id = {**body, "account": str(created["account"]["id"]), "amount_minor": 1}
    assert client.post(f"{BASE}/admin/credits/", by_id, content_type="application/json").status_code == 201
    assert [credit["amount_minor"] for credit in client.get(f"{BASE}/admin/credits/").json()] == [1, 1250]

    record_usage(bob_subscription, datetime(2026, 10, 3, tzinfo=UTC), 12_345)
    [invoice] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])
    assert sorted(invoice.lines.filter(kind="credit").values_list("amount_minor", flat=True)) == [-1250, -1]
    assert invoice.total_minor == 5350 - 1251
    assert all(credit["invoice"] == invoice.pk for credit in client.get(f"{BASE}/admin/credits/").json())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount_minor": "abc"}, "amount_minor"),
        ({"amount_minor": -5}, "amount_minor"),
        ({"amount_minor": 0}, "amount_minor"),
        ({"amount_minor": 1.005}, "amount_minor"),
        ({"amount_minor": 10**13}, "amount_minor"),
        ({"account": "nobody@example.com"}, "account"),
        ({"account": "99999999999999999999999"}, "account"),
        ({"account": "a\x00b"}, "account"),
        ({"currency": "us"}, "currency"),
        ({"currency": "€€€"}, "currency"),
        ({"reason": ""}, "reason"),
    ],
)
def test_credit_bad_input_is_400_naming_the_field(api, admin_user, bob, body, field):
    payload = {"account": "bob@example.com", "amount_minor": 500, "currency": "usd", "reason": "r", **body}
    response = api(admin_user).post(f"{BASE}/admin/credits/", payload, content_type="application/json")
    assert response.status_code == 400
    assert list(response.json()) == [field]
    assert not Credit.objects.exists()
