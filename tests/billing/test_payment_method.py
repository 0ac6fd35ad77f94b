"""The consumer's payment method (billing.payments) against a real localstripe: the service, the
/billing/payment-method/ page, its REST mirror, admin-approved invoicing, the rule that paid
plans need one of the two, and that an account pays in one currency."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from billing.models import BillingAccount, Invoice
from billing.payments import (
    billing_account_get,
    invoicing_approve,
    payment_method_attach,
    payment_method_remove,
)
from billing.services import invoice_period_close
from portal.models import Subscription
from portal.services.subscriptions import subscription_cancel, subscription_create, subscription_plan_change
from tests.billing.conftest import OCTOBER
from tests.factories import ApplicationFactory, BusinessPlanFactory, SubscriptionFactory

URL = "/api/v1/billing/payment-method/"
PAGE = "/billing/payment-method/"


@pytest.fixture
def require_card(settings):
    """The production rule, which tests/conftest.py turns off for the rest of the suite."""
    settings.BILLING_REQUIRE_PAYMENT_METHOD = True
    return settings


@pytest.fixture
def bob_app(bob):
    return ApplicationFactory(owner=bob, name="Trading bot")


def text(response) -> str:
    return response.content.decode()


# --- the service ---------------------------------------------------------------------------------


def test_a_saved_card_is_the_customers_default_in_stripe_and_mirrored(stripe_settings, stripe_client, bob):
    account = payment_method_attach(account=billing_account_get(user=bob), payment_method_id="pm_card_visa")

    account = BillingAccount.objects.get(pk=account.pk)
    assert (account.payment_method_brand, account.payment_method_last4) == ("visa", "4242")
    assert (account.payment_method_exp_month, account.payment_method_exp_year) == (12, 2030)
    customer = stripe_client.v1.customers.retrieve(account.stripe_customer_id)
    assert customer.email == "bob@example.com"
    assert customer.invoice_settings.default_payment_method == account.payment_method_id
    assert stripe_client.v1.payment_methods.retrieve(account.payment_method_id).customer == customer.id


def test_a_declined_card_is_refused_on_the_field_with_stripes_message(stripe_settings, bob):
    account = billing_account_get(user=bob)

    with pytest.raises(ValidationError) as refused:
        payment_method_attach(account=account, payment_method_id="pm_card_visa_chargeDeclined")

    assert refused.value.message_dict == {"payment_method": ["Your card was declined."]}
    assert not BillingAccount.objects.get(pk=account.pk).has_payment_method


def test_replacing_the_card_detaches_the_old_one(stripe_settings, stripe_client, bob):
    account = payment_method_attach(account=billing_account_get(user=bob), payment_method_id="pm_card_visa")
    old = account.payment_method_id

    account = payment_method_attach(account=account, payment_method_id="pm_card_chargeCustomerFail")

    assert account.payment_method_last4 == "0341" and account.payment_method_id != old
    assert stripe_client.v1.payment_methods.retrieve(old).customer is None
    customer = stripe_client.v1.customers.retrieve(account.stripe_customer_id)
    assert customer.invoice_settings.default_payment_method == account.payment_method_id


def test_another_customers_card_cannot_be_taken_over(stripe_settings, bob, carol):
    carols = payment_method_attach(account=billing_account_get(user=carol), payment_method_id="pm_card_visa")

    with pytest.raises(ValidationError) as refused:
        payment_method_attach(
            account=billing_account_get(user=bob), payment_method_id=carols.payment_method_id
        )

    assert refused.value.message_dict == {
        "payment_method": ["This payment method belongs to another customer."]
    }


def test_the_card_cannot_be_removed_while_a_paid_subscription_relies_on_it(
    stripe_settings, stripe_client, bob_subscription, admin_user
):
    account = payment_method_attach(
        account=billing_account_get(user=bob_subscription.application.owner), payment_method_id="pm_card_visa"
    )

    with pytest.raises(ValidationError) as refused:
        payment_method_remove(account=account)
    assert "Ticker (Metered)" in refused.value.message_dict["payment_method"][0]

    invoicing_approve(account=account, by=admin_user)
    account = payment_method_remove(account=account)
    assert not account.has_payment_method
    customer = stripe_client.v1.customers.retrieve(account.stripe_customer_id)
    assert customer.invoice_settings.default_payment_method is None


def test_only_staff_approve_invoicing(bob, carol):
    account = billing_account_get(user=bob)
    with pytest.raises(PermissionDenied):
        invoicing_approve(account=account, by=carol)
    assert not BillingAccount.objects.get(pk=account.pk).invoicing_approved


# --- paid plans need a payment method --------------------------------------------------------------


def test_a_paid_plan_needs_a_payment_method_and_says_where_to_add_it(require_card, bob_app, metered_plan):
    with pytest.raises(ValidationError) as refused:
        subscription_create(application=bob_app, plan=metered_plan)

    [message] = refused.value.message_dict["plan"]
    assert "The Metered plan is paid: add a payment method at /billing/payment-method/" in message
    assert not Subscription.objects.filter(application=bob_app).exists()


def test_moving_to_a_paid_plan_needs_one_too_unless_an_admin_moves_you(
    require_card, bob, bob_app, admin_user, free_plan, metered_plan
):
    subscription = subscription_create(application=bob_app, plan=free_plan)

    with pytest.raises(ValidationError) as refused:
        subscription_plan_change(subscription=subscription, plan=metered_plan, by=bob)

    assert "add a payment method at /billing/payment-method/" in refused.value.message_dict["plan"][0]
    subscription.refresh_from_db()
    assert subscription.plan == free_plan
    assert (
        subscription_plan_change(subscription=subscription, plan=metered_plan, by=admin_user).plan
        == metered_plan
    )


def test_free_plans_never_need_one(require_card, bob_app, free_plan):
    assert subscription_create(application=bob_app, plan=free_plan).status == Subscription.Status.ACTIVE


def test_a_card_or_approved_invoicing_opens_paid_plans(
    require_card, stripe_settings, bob, bob_app, carol, admin_user, metered_plan
):
    invoicing_approve(account=billing_account_get(user=bob), by=admin_user)
    assert subscription_create(application=bob_app, plan=metered_plan).plan == metered_plan

    carol_app = ApplicationFactory(owner=carol)
    payment_method_attach(account=billing_account_get(user=carol), payment_method_id="pm_card_visa")
    assert subscription_create(application=carol_app, plan=metered_plan).plan == metered_plan


def test_without_the_setting_paid_plans_need_nothing(settings, bob_app, metered_plan):
    settings.BILLING_REQUIRE_PAYMENT_METHOD = False
    assert subscription_create(application=bob_app, plan=metered_plan).plan == metered_plan


def test_the_subscribe_form_shows_the_refusal_with_a_link(require_card, client, bob, bob_app, metered_plan):
    client.force_login(bob)

    response = client.post("/apis/ticker/", {"application": bob_app.pk, "plan": metered_plan.pk})

    assert response.status_code == 200
    page = text(response)
    assert "The Metered plan is paid: add a payment method" in page
    assert (
        f'<a href="/billing/payment-method/?next=/apis/ticker/%3Fplan%3D{metered_plan.pk}%23subscribe" '
        'data-testid="add-payment-method">'
        "Add a payment method</a>" in page
    )
    assert not Subscription.objects.filter(application=bob_app).exists()


# --- one currency per account (Stripe: one customer, one currency) ----------------------------------


@pytest.fixture
def euro_plan(ticker_api):
    return BusinessPlanFactory(api=ticker_api, name="Euro", flat_fee_minor=900, currency="eur")


def refusal(action) -> tuple[str, str]:
    with pytest.raises(ValidationError) as refused:
        action()
    [error] = refused.value.error_dict["plan"]
    return error.code, error.message


EURO_REFUSAL = (
    "currency_mismatch",
    "Your billing account pays in USD, and the Euro plan is priced in EUR: Stripe bills one customer "
    "in one currency. Choose a plan priced in USD.",
)


def test_a_plan_in_another_currency_than_the_accounts_paid_subscriptions_is_refused(
    stripe_settings, bob, bob_subscription, euro_plan, free_plan
):
    other_app = ApplicationFactory(owner=bob, name="Backtester")

    assert refusal(lambda: subscription_create(application=other_app, plan=euro_plan)) == EURO_REFUSAL
    assert (
        refusal(lambda: subscription_plan_change(subscription=bob_subscription, plan=euro_plan, by=bob))
        == EURO_REFUSAL
    )
    assert not Subscription.objects.filter(plan=euro_plan).exists()
    # Free plans cost nothing in any currency; plans in the account's currency stay open.
    assert subscription_create(application=other_app, plan=free_plan).status == Subscription.Status.ACTIVE


def test_an_unpaid_invoice_keeps_the_currency_after_its_subscriptions_end(
    stripe_settings, bob, bob_subscription, record_usage, euro_plan
):
    [invoice] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])
    Invoice.objects.filter(pk=invoice.pk).update(status="open")
    subscription_cancel(subscription=bob_subscription, actor=bob)
    app = bob_subscription.application

    assert refusal(lambda: subscription_create(application=app, plan=euro_plan)) == EURO_REFUSAL

    Invoice.objects.filter(pk=invoice.pk).update(status="paid")
    assert subscription_create(application=app, plan=euro_plan).plan == euro_plan


def test_the_currency_rule_applies_only_when_stripe_is_on(settings, bob, bob_subscription, euro_plan):
    settings.STRIPE_API_KEY = ""
    other_app = ApplicationFactory(owner=bob, name="Backtester")
    assert subscription_create(application=other_app, plan=euro_plan).plan == euro_plan


def test_the_rest_api_names_the_accounts_currency(stripe_settings, client, bob, bob_subscription, euro_plan):
    other_app = ApplicationFactory(owner=bob, name="Backtester")
    client.force_login(bob)

    response = client.post(
        f"/api/v1/applications/{other_app.pk}/subscriptions/",
        {"plan": euro_plan.pk},
        content_type="application/json",
    )

    assert (response.status_code, response.json()) == (400, {"plan": [EURO_REFUSAL[1]]})


# --- the page ----------------------------------------------------------------------------------------


def test_the_page_needs_a_signed_in_user(client):
    response = client.get(PAGE)
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_page_says_no_payment_method_and_offers_stripe_js(stripe_settings, client, bob, settings):
    settings.STRIPE_JS_URL = f"{stripe_settings.STRIPE_API_BASE}/js.stripe.com/v3/"
    client.force_login(bob)

    page = text(client.get(PAGE))

    assert "No payment method" in page and "Add card" in page
    assert f'data-stripe-js-url="{settings.STRIPE_JS_URL}"' in page
    assert 'data-publishable-key="pk_test_eventgate"' in page
    assert not BillingAccount.objects.filter(owner=bob).exists()  # looking creates nothing


def test_the_page_shows_the_card_on_file_and_approved_invoicing(stripe_settings, client, bob, admin_user):
    account = payment_method_attach(account=billing_account_get(user=bob), payment_method_id="pm_card_visa")
    invoicing_approve(account=account, by=admin_user)
    client.force_login(bob)

    page = text(client.get(PAGE))

    assert "Visa •••• 4242" in page and "Expires 12/2030" in page
    assert "Replace card" in page and "Invoicing approved by an admin" in page


def test_posting_a_confirmed_card_saves_it(stripe_settings, client, bob):
    client.force_login(bob)

    response = client.post(PAGE, {"payment_method": "pm_card_visa"}, follow=True)

    assert "Visa •••• 4242 is your payment method now." in text(response)
    assert BillingAccount.objects.get(owner=bob).payment_method_last4 == "4242"


def test_posting_a_declined_card_shows_the_error_on_the_form(stripe_settings, client, bob):
    client.force_login(bob)

    response = client.post(PAGE, {"payment_method": "pm_card_visa_chargeDeclined"})

    assert response.status_code == 400
    assert "Your card was declined." in text(response) and "No payment method" in text(response)


def test_removing_the_card_the_paid_subscription_needs_is_refused_on_the_page(
    stripe_settings, client, bob_subscription
):
    bob = bob_subscription.application.owner
    payment_method_attach(account=billing_account_get(user=bob), payment_method_id="pm_card_visa")
    client.force_login(bob)

    page = text(client.post(f"{PAGE}remove", follow=True))

    assert "Your subscriptions on paid plans need a payment method" in page
    assert "Visa •••• 4242" in page


def test_without_stripe_the_page_says_payments_are_not_configured(settings, client, bob):
    settings.STRIPE_API_KEY = ""
    client.force_login(bob)

    response = client.get(PAGE)

    assert response.status_code == 200
    assert "Payments are not configured" in text(response) and 'id="card-element"' not in text(response)


def test_the_invoices_page_links_to_the_payment_method(client, bob):
    client.force_login(bob)
    assert 'href="/billing/payment-method/">Payment method</a>' in text(client.get("/billing/invoices/"))


# --- REST ------------------------------------------------------------------------------------------


def test_rest_add_a_card_then_read_it_back(stripe_settings, client, bob):
    client.force_login(bob)
    assert client.get(URL).json() == {
        "card": None,
        "invoicing_approved": False,
        "invoicing_approved_at": None,
        "can_pay": False,
        "collection_method": "charge_automatically",
        "payments_configured": True,
    }

    intent = client.post(URL, {"setup_intent": True}, content_type="application/json")
    assert intent.status_code == 201
    assert intent.json()["client_secret"].startswith("seti_")
    assert intent.json()["publishable_key"] == "pk_test_eventgate"

    saved = client.post(URL, {"payment_method": "pm_card_visa"}, content_type="application/json")
    assert saved.status_code == 200
    card = saved.json()["card"]
    assert (card["label"], card["brand"], card["last4"], card["exp_month"], card["exp_year"]) == (
        "Visa •••• 4242",
        "visa",
        "4242",
        12,
        2030,
    )
    assert client.get(URL).json()["can_pay"] is True


def test_rest_refusals_are_400s_naming_the_field(stripe_settings, client, bob):
    client.force_login(bob)

    declined = client.post(
        URL, {"payment_method": "pm_card_visa_chargeDeclined"}, content_type="application/json"
    )
    assert declined.status_code == 400
    assert declined.json() == {"payment_method": ["Your card was declined."]}

    unknown = client.post(URL, {"payment_method": "pm_nosuchthing"}, content_type="application/json")
    assert unknown.json() == {"payment_method": ["No such payment method."]}

    malformed = client.post(URL, {"payment_method": "4242424242424242"}, content_type="application/json")
    assert malformed.json() == {"payment_method": ["Give the id of a Stripe payment method (pm_…)."]}

    both = client.post(URL, {"setup_intent": True, "payment_method": "pm_x"}, content_type="application/json")
    assert both.status_code == 400 and "non_field_errors" in both.json()

    nothing = client.delete(URL)
    assert nothing.json() == {"payment_method": ["No payment method is on file."]}


def test_rest_delete_is_refused_while_paid_subscriptions_rely_on_the_card(stripe_settings, client, bob):
    payment_method_attach(account=billing_account_get(user=bob), payment_method_id="pm_card_visa")
    client.force_login(bob)
    subscription = SubscriptionFactory(application=ApplicationFactory(owner=bob))
    subscription.plan.flat_fee_minor = 900
    subscription.plan.save()

    refused = client.delete(URL)
    assert refused.status_code == 400
    assert "need a payment method" in refused.json()["payment_method"][0]

    subscription.status = Subscription.Status.CANCELLED
    subscription.save()
    removed = client.delete(URL)
    assert removed.status_code == 200 and removed.json()["card"] is None


def test_rest_without_stripe_answers_503(settings, client, bob):
    settings.STRIPE_API_KEY = ""
    client.force_login(bob)

    assert client.get(URL).json()["payments_configured"] is False
    response = client.post(URL, {"setup_intent": True}, content_type="application/json")
    assert response.status_code == 503
    assert response.json() == {"detail": "Payments are not configured on this server."}


def test_rest_needs_authentication(client, db):
    assert client.get(URL).status_code == 401


def test_rest_admins_approve_and_withdraw_invoicing(client, bob, carol, admin_user):
    account = billing_account_get(user=bob)
    url = f"{URL}accounts/{account.pk}/invoicing/"

    client.force_login(carol)
    assert client.post(url, {"approved": True}, content_type="application/json").status_code == 403

    client.force_login(admin_user)
    approved = client.post(url, {"approved": True}, content_type="application/json")
    assert approved.status_code == 200
    body = approved.json()
    assert (body["owner"], body["invoicing_approved"], body["invoicing_approved_by"]) == (
        "bob@example.com",
        True,
        "admin@example.com",
    )
    assert body["collection_method"] == "send_invoice"
    assert BillingAccount.objects.get(pk=account.pk).can_pay

    withdrawn = client.post(url, {"approved": False}, content_type="application/json")
    assert withdrawn.json()["invoicing_approved"] is False
    assert (
        client.post(
            f"{URL}accounts/999999/invoicing/", {"approved": True}, content_type="application/json"
        ).status_code
        == 404
    )
    assert client.post(url, {}, content_type="application/json").json() == {
        "approved": ["This field is required."]
    }
