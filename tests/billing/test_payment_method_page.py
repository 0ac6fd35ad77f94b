"""The payment method page around subscribing: back to the subscribe form once the card is saved
(``?next=``), the refusal's link carrying it, paid plans saying up front that they need a card, and
how the page loads Stripe.js (real one as an ordinary script, a stand-in isolated)."""

from __future__ import annotations

import re

import pytest

from billing.payments import billing_account_get, payment_method_attach
from tests.factories import ApplicationFactory

PAGE = "/billing/payment-method/"


@pytest.fixture
def require_card(settings):
    """The production rule, which tests/conftest.py turns off for the rest of the suite."""
    settings.BILLING_REQUIRE_PAYMENT_METHOD = True
    return settings


def text(response) -> str:
    return response.content.decode()


def test_a_saved_card_goes_back_to_the_subscribe_form(stripe_settings, client, bob):
    client.force_login(bob)

    response = client.post(f"{PAGE}?next=/apis/ticker/%23subscribe", {"payment_method": "pm_card_visa"})

    assert response.status_code == 302
    assert response["Location"] == "/apis/ticker/#subscribe"
    page = text(client.get(response["Location"]))
    assert "Card saved — you can subscribe now (Visa •••• 4242)" in page


def test_the_page_says_where_the_consumer_goes_back_to(client, bob):
    client.force_login(bob)

    page = text(client.get(f"{PAGE}?next=/apis/ticker/"))

    assert 'data-testid="payment-method-next"' in page
    assert '<a href="/apis/ticker/">where you were subscribing</a>' in page


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/apis/", "/\\evil.example/", "javascript:alert(1)", "apis/"],
)
def test_next_off_this_site_is_ignored(stripe_settings, client, bob, target):
    client.force_login(bob)

    response = client.post(PAGE, {"payment_method": "pm_card_visa"}, QUERY_STRING=f"next={target}")

    assert response.status_code == 302
    assert response["Location"] == PAGE
    assert "evil.example" not in text(client.get(PAGE))


def test_the_refusal_link_comes_back_to_the_subscribe_form(require_card, client, bob, metered_plan):
    application = ApplicationFactory(owner=bob, name="Trading bot")
    client.force_login(bob)

    response = client.post("/apis/ticker/", {"application": application.pk, "plan": metered_plan.pk})

    assert "The Metered plan is paid: add a payment method" in text(response)
    assert (
        f'<a href="/billing/payment-method/?next=/apis/ticker/%3Fplan%3D{metered_plan.pk}%23subscribe" '
        'data-testid="add-payment-method">'
        "Add a payment method</a>"
    ) in text(response)


def test_coming_back_with_a_plan_preselects_it(client, bob, metered_plan):
    ApplicationFactory(owner=bob, name="Trading bot")
    client.force_login(bob)

    page = text(client.get(f"/apis/ticker/?plan={metered_plan.pk}"))

    checked = re.search(r'<input[^>]*name="plan"[^>]*checked[^>]*>', page) or re.search(
        r'<input[^>]*checked[^>]*name="plan"[^>]*>', page
    )
    assert checked and f'value="{metered_plan.pk}"' in checked.group(0)


def _plan_card(page: str, name: str) -> str:
    """The HTML of the subscribe form's plan option named ``name``."""
    cards = re.findall(r'<label class="card eg-plan-option.*?</label>', page, flags=re.S)
    return next(card for card in cards if f'<span class="fw-semibold">{name}</span>' in card)


def test_paid_plans_say_up_front_they_need_a_payment_method(require_card, client, bob, metered_plan):
    client.force_login(bob)

    page = text(client.get("/apis/ticker/"))

    metered = _plan_card(page, "Metered")
    assert "Needs a payment method" in metered
    assert 'href="/billing/payment-method/?next=/apis/ticker/%23subscribe"' in metered
    assert "Needs a payment method" not in _plan_card(page, "Free")


def test_with_a_card_on_file_paid_plans_offer_no_link(
    require_card, stripe_settings, client, bob, metered_plan
):
    payment_method_attach(account=billing_account_get(user=bob), payment_method_id="pm_card_visa")
    client.force_login(bob)

    metered = _plan_card(text(client.get("/apis/ticker/")), "Metered")

    assert "Needs a payment method" in metered
    assert "/billing/payment-method/" not in metered


def test_without_the_setting_plans_say_nothing_about_cards(settings, client, bob, metered_plan):
    settings.BILLING_REQUIRE_PAYMENT_METHOD = False
    client.force_login(bob)

    assert "Needs a payment method" not in text(client.get("/apis/ticker/"))


def test_a_stripe_js_stand_in_is_not_an_ordinary_script(stripe_settings, client, bob):
    """localstripe's script declares a top-level ``class Element`` that would shadow the DOM's
    ``Element`` for Bootstrap: the page's script evaluates it in a function scope instead."""
    stripe_settings.STRIPE_JS_URL = "http://127.0.0.1:8420/js.stripe.com/v3/"
    client.force_login(bob)

    page = text(client.get(PAGE))

    assert '<script src="http://127.0.0.1:8420/js.stripe.com/v3/">' not in page
    assert 'data-stripe-js-url="http://127.0.0.1:8420/js.stripe.com/v3/"' in page


def test_real_stripe_js_is_an_ordinary_script(stripe_settings, client, bob):
    """Stripe.js must be loaded from js.stripe.com as a script (Stripe.js reference › Including
    Stripe.js)."""
    stripe_settings.STRIPE_JS_URL = "https://js.stripe.com/v3/"
    client.force_login(bob)

    page = text(client.get(PAGE))

    assert '<script src="https://js.stripe.com/v3/"></script>' in page
    assert "data-stripe-js-url" not in page
