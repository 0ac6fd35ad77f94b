"""Invoice pages: a consumer sees their own invoices with lines, usage and status, and nobody else's."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from billing.models import Invoice
from billing.services import invoice_period_close
from portal.money import format_money
from tests.billing.conftest import OCTOBER


@pytest.fixture
def bobs_invoice(bob_subscription, record_usage) -> Invoice:
    record_usage(bob_subscription, datetime(2026, 10, 3, tzinfo=UTC), 12_345, 2_500_000)
    [invoice] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])
    return invoice


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


def test_carol_gets_404_for_bobs_invoice_and_sees_none_in_her_list(client, carol, bobs_invoice):
    client.force_login(carol)

    assert client.get(f"/billing/invoices/{bobs_invoice.pk}/").status_code == 404
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
    from django.utils import timezone

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
