"""The payment method page in headless Chromium, with localstripe's stand-in Stripe.js: a paid plan
is refused without a card, the consumer adds one (a declined card first), goes back to the subscribe
form and subscribes; on a phone the menu still opens beside the stand-in.

Screenshots: /tmp/stripe-payment-method*.png and /tmp/uib-*.png, to be looked at.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from billing.models import BillingAccount
from portal.models import Subscription
from tests.factories import ApplicationFactory
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


def shoot(page: Page, name: str = "") -> None:
    page.screenshot(path=f"/tmp/stripe-payment-method{name}.png", full_page=True)


def enter_card(page: Page, number: str) -> None:
    """Type a card into localstripe's card element (plain inputs named by their placeholders)."""
    card = page.get_by_test_id("card-element")
    for placeholder, value in (
        ("number", number),
        ("exp_month", "12"),
        ("exp_year", "30"),
        ("cvc", "123"),
        ("postal_code", "75001"),
    ):
        card.get_by_placeholder(placeholder, exact=True).fill(value)


def test_consumer_adds_a_card_and_then_subscribes_to_a_paid_plan(
    page: Page, live_server, transactional_db, stripe_settings, localstripe, bob, metered_plan
):
    stripe_settings.BILLING_REQUIRE_PAYMENT_METHOD = True
    stripe_settings.STRIPE_JS_URL = f"{localstripe}/js.stripe.com/v3/"
    ApplicationFactory(owner=bob, name="Trading bot")
    _sign_in(page, live_server, bob.email)

    page.goto(live_server.url + "/apis/ticker/")
    page.locator(".eg-plan-option", has_text="Metered").click()
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_text("The Metered plan is paid: add a payment method")).to_be_visible()
    shoot(page, "-refused")
    assert not Subscription.objects.filter(application__owner=bob).exists()

    page.get_by_test_id("add-payment-method").click()
    expect(page.get_by_role("heading", name="Payment method", level=1)).to_be_visible()
    expect(page.get_by_test_id("card-on-file")).to_have_text("No payment method")

    enter_card(page, "4000000000000002")  # declined when saved
    page.get_by_role("button", name="Save card").click()
    expect(page.get_by_test_id("card-errors")).to_have_text("Your card was declined.")
    expect(page.get_by_role("button", name="Save card")).to_be_enabled()
    shoot(page, "-declined")

    enter_card(page, "4242424242424242")
    page.get_by_role("button", name="Save card").click()
    # Back on the subscribe form the refusal's link came from (?next=).
    expect(page.get_by_text("Card saved — you can subscribe now (Visa •••• 4242)")).to_be_visible()
    assert page.url == live_server.url + f"/apis/ticker/?plan={metered_plan.pk}#subscribe"
    shoot(page, "-back")
    assert BillingAccount.objects.get(owner=bob).payment_method_last4 == "4242"

    # The plan chosen before is chosen again: one click to subscribe.
    expect(page.locator(f'input[name="plan"][value="{metered_plan.pk}"]')).to_be_checked()
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_text("Trading bot is subscribed to Ticker")).to_be_visible()
    assert Subscription.objects.get(application__owner=bob).plan == metered_plan

    page.goto(live_server.url + "/billing/payment-method/")
    expect(page.get_by_test_id("card-on-file")).to_have_text("Visa •••• 4242")
    expect(page.get_by_text("Expires 12/2030")).to_be_visible()
    expect(page.get_by_role("heading", name="Replace card")).to_be_visible()
    expect(page.get_by_text("Metered")).to_be_visible()  # the paid subscription the card is for
    shoot(page, "-subscribed")


def test_on_a_phone_the_menu_opens_beside_the_stand_in_stripe_js(
    page: Page, live_server, transactional_db, stripe_settings, localstripe, bob
):
    """localstripe's Stripe.js declares a top-level ``class Element``; loaded as an ordinary script
    it shadowed the DOM's ``Element`` and Bootstrap's navbar toggler threw instead of opening."""
    stripe_settings.STRIPE_JS_URL = f"{localstripe}/js.stripe.com/v3/"
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    page.set_viewport_size({"width": 390, "height": 844})
    _sign_in(page, live_server, bob.email)

    page.goto(live_server.url + "/billing/payment-method/")
    expect(page.get_by_test_id("card-element").get_by_placeholder("number", exact=True)).to_be_visible()
    page.get_by_role("button", name="Toggle navigation").click()
    expect(page.get_by_role("link", name="Invoices", exact=True)).to_be_visible()
    expect(page.locator("#eg-nav")).to_have_class(re.compile(r"\bshow\b"))  # done opening
    page.screenshot(path="/tmp/uib-menu-open.png", full_page=True)

    page.get_by_role("button", name="Toggle navigation").click()
    expect(page.get_by_role("link", name="Invoices", exact=True)).to_be_hidden()
    enter_card(page, "4242424242424242")
    page.get_by_role("button", name="Save card").click()
    expect(page.get_by_text("Visa •••• 4242 is your payment method now.")).to_be_visible()
    expect(page.get_by_test_id("card-on-file")).to_have_text("Visa •••• 4242")
    page.screenshot(path="/tmp/uib-card-saved-390.png", full_page=True)
    assert page_errors == []
