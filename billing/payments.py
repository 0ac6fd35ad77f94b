"""The consumer's payment method and admin-approved invoicing.

Cards are collected by Stripe.js in the browser and never reach Eventgate: the page asks for a
SetupIntent (``setup_intent_create``), Stripe.js confirms it with the card (``confirmCardSetup``)
and the browser posts the resulting PaymentMethod id (``payment_method_attach``), which is attached
to the billing account's Stripe customer and made its ``invoice_settings.default_payment_method``
(Stripe docs: Payments › Save a card without payment; API reference: SetupIntents, PaymentMethods ›
Attach, Customers › Update). Eventgate mirrors only the brand, last four digits and expiry.

``require_payment_method`` (registered in ``portal.services.subscriptions.subscription_checks`` by
``billing.apps``) guards paid plans; free plans always pass. In this order it refuses a paid plan:

1. while the account has an unresolved dunning case (an unpaid invoice being chased, or one that
   suspended its subscriptions) — always, or cancelling and subscribing again would undo the
   suspension (code ``unpaid_invoice``);
2. priced in another currency than the account's live paid subscriptions or unpaid invoices, when
   Stripe is on: Stripe refuses to combine currencies on one customer ("This customer has an active
   subscription ... or invoice item with currency usd"), so that account's sync would fail for
   good (code ``currency_mismatch``);
3. without a payment method or admin-approved invoicing, when ``settings.BILLING_REQUIRE_PAYMENT_METHOD``
   (code ``payment_method_required``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import stripe
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from billing.models import BillingAccount, DunningCase, Invoice
from billing.stripe_sync import (
    TRANSIENT_ERRORS,
    AccountSyncBusy,
    StripeNotConfigured,
    customer_ensure,
    stripe_client,
    stripe_enabled,
)
from portal.models import Application, BusinessPlan, Subscription
from portal.money import format_money

logger = logging.getLogger(__name__)

PAYMENT_METHOD_PATH = "/billing/payment-method/"
PAYMENT_METHOD_ID = re.compile(r"pm_[A-Za-z0-9_]{1,250}")
# Subscriptions that will be billed: live, waiting for approval, or suspended until paid.
BILLED_STATUSES = (Subscription.Status.ACTIVE, Subscription.Status.PENDING, Subscription.Status.SUSPENDED)
# Invoices still to be paid: issued (draft until Stripe finalizes it), open, or written off for now.
UNPAID_STATUSES = (Invoice.Status.DRAFT, Invoice.Status.OPEN, Invoice.Status.UNCOLLECTIBLE)
CARD_BRANDS = {
    "amex": "American Express",
    "diners": "Diners Club",
    "discover": "Discover",
    "jcb": "JCB",
    "mastercard": "Mastercard",
    "unionpay": "UnionPay",
    "visa": "Visa",
}


class PaymentsUnavailable(Exception):
    """Stripe is not configured (no ``STRIPE_API_KEY``) or cannot be reached right now: not the
    consumer's fault (REST: 503)."""


def billing_account_get(*, user: Any) -> BillingAccount:
    """The billing account of ``user``, created on first use."""
    account, _ = BillingAccount.objects.get_or_create(owner=user)
    return account


def card_label(account: BillingAccount) -> str:
    """The card on file for people, e.g. "Visa •••• 4242"; "" without one."""
    if not account.has_payment_method:
        return ""
    brand = CARD_BRANDS.get(account.payment_method_brand, account.payment_method_brand.title() or "Card")
    return f"{brand} •••• {account.payment_method_last4}"


def card_expiry(account: BillingAccount) -> str:
    """The card's expiry as MM/YYYY; "" without one."""
    if not (account.payment_method_exp_month and account.payment_method_exp_year):
        return ""
    return f"{account.payment_method_exp_month:02d}/{account.payment_method_exp_year}"


def _client() -> stripe.StripeClient:
    try:
        return stripe_client()
    except StripeNotConfigured as exc:
        raise PaymentsUnavailable("Payments are not configured on this server.") from exc


def _unavailable(exc: Exception) -> PaymentsUnavailable:
    logger.warning("Stripe unavailable for a payment method change: %s", exc)
    return PaymentsUnavailable("Stripe cannot be reached right now; try again in a minute.")


def setup_intent_create(*, account: BillingAccount) -> str:
    """A SetupIntent for saving a card off-session on the account's Stripe customer (created once
    if needed); returns its ``client_secret`` for Stripe.js ``confirmCardSetup`` (API reference:
    SetupIntents › Create). Raises ``PaymentsUnavailable``."""
    client = _client()
    try:
        customer_id = customer_ensure(account=account, client=client)
        intent = client.v1.setup_intents.create(
            params={
                "customer": customer_id,
                "usage": "off_session",
                "payment_method_types": ["card"],
                "metadata": {"eventgate_account_id": str(account.pk)},
            }
        )
    except (*TRANSIENT_ERRORS, AccountSyncBusy) as exc:
        raise _unavailable(exc) from exc
    return str(intent.client_secret)


def payment_method_attach(*, account: BillingAccount, payment_method_id: str) -> BillingAccount:
    """Make the card ``payment_method_id`` (a Stripe PaymentMethod ``pm_…``) the account's payment
    method: attached to its Stripe customer and set as ``invoice_settings.default_payment_method``
    (PaymentMethods › Attach; Customers › Update); brand, last four digits and expiry are mirrored
    on the account. The card it replaces is detached.

    Raises ``ValidationError`` (field ``payment_method``) with Stripe's message for a declined
    card, an unknown id, another customer's card or a non-card method; ``PaymentsUnavailable``.
    """
    payment_method_id = (payment_method_id or "").strip()
    if not PAYMENT_METHOD_ID.fullmatch(payment_method_id):
        raise ValidationError({"payment_method": "Give the id of a Stripe payment method (pm_…)."})
    client = _client()
    try:
        customer_id = customer_ensure(account=account, client=client)
        method = client.v1.payment_methods.retrieve(payment_method_id)
        card = _check_card(method, customer_id=customer_id)
        if method.customer != customer_id:
            method = client.v1.payment_methods.attach(method.id, params={"customer": customer_id})
        client.v1.customers.update(
            customer_id, params={"invoice_settings": {"default_payment_method": method.id}}
        )
    except stripe.CardError as exc:
        raise ValidationError({"payment_method": exc.user_message or "Your card was declined."}) from exc
    except stripe.InvalidRequestError as exc:
        message = "No such payment method." if exc.http_status == 404 else exc.user_message or str(exc)
        raise ValidationError({"payment_method": message}) from exc
    except (*TRANSIENT_ERRORS, AccountSyncBusy) as exc:
        raise _unavailable(exc) from exc

    previous = account.payment_method_id
    account.payment_method_id = method.id
    account.payment_method_brand = str(card.get("brand") or "")[:32]
    account.payment_method_last4 = str(card.get("last4") or "")[:4]
    account.payment_method_exp_month = card.get("exp_month")
    account.payment_method_exp_year = card.get("exp_year")
    account.save(update_fields=list(_PAYMENT_METHOD_FIELDS))
    if previous and previous != method.id:
        _detach_quietly(client, previous)
    return account


_PAYMENT_METHOD_FIELDS = (
    "payment_method_id",
    "payment_method_brand",
    "payment_method_last4",
    "payment_method_exp_month",
    "payment_method_exp_year",
)


def _check_card(method: Any, *, customer_id: str) -> dict[str, Any]:
    data = method.to_dict()
    if data.get("type") != "card" or not data.get("card"):
        raise ValidationError({"payment_method": "Only cards can be saved as the payment method."})
    owner = data.get("customer")
    if owner and owner != customer_id:
        raise ValidationError({"payment_method": "This payment method belongs to another customer."})
    return dict(data["card"])


def _detach_quietly(client: stripe.StripeClient, payment_method_id: str) -> None:
    """Detach a replaced card; it is no longer the default, so a failure only leaves it listed."""
    try:
        client.v1.payment_methods.detach(payment_method_id)
    except stripe.StripeError as exc:
        logger.warning("Could not detach replaced payment method %s: %s", payment_method_id, exc)


def billed_subscriptions(account: BillingAccount) -> list[Subscription]:
    """The account owner's subscriptions on paid plans that are (or will be) billed: active,
    pending approval or suspended."""
    subscriptions = Subscription.objects.filter(
        application__owner_id=account.owner_id, status__in=BILLED_STATUSES
    ).select_related("plan", "api", "application")
    return [subscription for subscription in subscriptions if not subscription.plan.is_free]


def payment_method_remove(*, account: BillingAccount) -> BillingAccount:
    """Remove the account's card: detached from its Stripe customer, no longer the default.

    Refused (``ValidationError``, field ``payment_method``) without a card, and while the account
    has subscriptions on paid plans and no approved invoicing (their next invoice would have
    nothing to charge). Raises ``PaymentsUnavailable`` when Stripe cannot be reached.
    """
    if not account.has_payment_method:
        raise ValidationError({"payment_method": "No payment method is on file."})
    if not account.invoicing_approved and (paid := billed_subscriptions(account)):
        names = ", ".join(f"{s.api.name} ({s.plan.name})" for s in paid[:3])
        raise ValidationError(
            {
                "payment_method": f"Your subscriptions on paid plans need a payment method: {names}"
                f"{' and more' if len(paid) > 3 else ''}. Replace the card instead, or cancel "
                "those subscriptions first."
            }
        )
    if account.stripe_customer_id:
        client = _client()
        try:
            client.v1.customers.update(
                account.stripe_customer_id, params={"invoice_settings": {"default_payment_method": ""}}
            )
            client.v1.payment_methods.detach(account.payment_method_id)
        except stripe.InvalidRequestError as exc:
            # Already detached or gone in Stripe: what we mirror is just stale.
            logger.info("Payment method %s already gone in Stripe: %s", account.payment_method_id, exc)
        except TRANSIENT_ERRORS as exc:
            raise _unavailable(exc) from exc
    account.payment_method_id = account.payment_method_brand = account.payment_method_last4 = ""
    account.payment_method_exp_month = account.payment_method_exp_year = None
    account.save(update_fields=list(_PAYMENT_METHOD_FIELDS))
    return account


def _check_staff(user: Any) -> None:
    if not (user is not None and user.is_active and user.is_staff):
        raise PermissionDenied("Only platform admins approve invoicing.")


def invoicing_approve(*, account: BillingAccount, by: Any) -> BillingAccount:
    """Let the account pay by invoice: paid plans without a card, invoices sent by Stripe
    (``collection_method=send_invoice``) rather than charged. Raises ``PermissionDenied`` unless
    ``by`` is an active staff user."""
    _check_staff(by)
    account.invoicing_approved_at, account.invoicing_approved_by = timezone.now(), by
    account.save(update_fields=["invoicing_approved_at", "invoicing_approved_by"])
    return account


def invoicing_revoke(*, account: BillingAccount, by: Any) -> BillingAccount:
    """Withdraw approved invoicing: the next invoices are charged to the card on file. Existing
    subscriptions stay. Raises ``PermissionDenied`` unless ``by`` is an active staff user."""
    _check_staff(by)
    account.invoicing_approved_at, account.invoicing_approved_by = None, None
    account.save(update_fields=["invoicing_approved_at", "invoicing_approved_by"])
    return account


def require_payment_method(*, application: Application, plan: BusinessPlan) -> None:
    """A ``subscription_checks`` entry, called as ``check(application=, plan=)`` by
    ``subscription_create`` (after inserting the subscription, in its transaction) and by a
    consumer's ``subscription_plan_change``: the rules of the module docstring, for paid plans.

    Raises ``ValidationError`` on field ``plan`` with code ``unpaid_invoice`` (naming the invoice's
    period, amount and its page), ``currency_mismatch`` (naming the account's currency) or
    ``payment_method_required`` (naming the page where a card is added).
    """
    if plan.is_free:
        return
    _refuse_while_dunning(application=application, plan=plan)
    if stripe_enabled():
        _refuse_other_currency(application=application, plan=plan)
    if not settings.BILLING_REQUIRE_PAYMENT_METHOD:
        return
    account = BillingAccount.objects.filter(owner_id=application.owner_id).first()
    if account is not None and account.can_pay:
        return
    raise ValidationError(
        {
            "plan": ValidationError(
                f"The {plan.name} plan is paid: add a payment method at {PAYMENT_METHOD_PATH} before "
                "subscribing, or ask an admin to approve paying by invoice.",
                code="payment_method_required",
            )
        }
    )


def _refuse_while_dunning(*, application: Application, plan: BusinessPlan) -> None:
    """Refuse while an invoice of the owner's account is being chased (``billing.dunning``):
    otherwise a consumer whose subscriptions were suspended cancels and subscribes again, active,
    with the invoice still unpaid."""
    case = (
        DunningCase.objects.filter(
            invoice__account__owner_id=application.owner_id,
            state__in=(DunningCase.State.OPEN, DunningCase.State.SUSPENDED),
        )
        .select_related("invoice")
        .order_by("started_at", "pk")
        .first()
    )
    if case is None:
        return
    invoice = case.invoice
    amount = format_money(invoice.total_minor, invoice.currency)
    raise ValidationError(
        {
            "plan": ValidationError(
                f"Your invoice for {invoice.period_label} ({amount}) is unpaid: pay it at "
                f"{invoice.get_absolute_url()} before subscribing to the paid {plan.name} plan. "
                "Free plans stay open to you.",
                code="unpaid_invoice",
            )
        }
    )


def _refuse_other_currency(*, application: Application, plan: BusinessPlan) -> None:
    """Refuse a plan priced in another currency than the one the account pays in: that of its
    live subscriptions on paid plans and of its unpaid invoices. The subscription being created
    (already inserted on ``plan``) does not count; one being moved counts with its current plan:
    the usage it had on that plan this period is still billed in that plan's currency."""
    currency = plan.currency.lower()
    subscriptions = (
        Subscription.objects.filter(application__owner_id=application.owner_id, status__in=BILLED_STATUSES)
        .exclude(application_id=application.pk, api_id=plan.api_id, plan_id=plan.pk)
        .select_related("plan")
    )
    paying = {s.plan.currency.lower() for s in subscriptions if not s.plan.is_free}
    unpaid = Invoice.objects.filter(
        account__owner_id=application.owner_id, status__in=UNPAID_STATUSES, total_minor__gt=0
    )
    paying |= {c.lower() for c in unpaid.values_list("currency", flat=True).distinct()}
    if not paying or paying == {currency}:
        return
    account_currency = " and ".join(sorted(c.upper() for c in paying))
    advice = f" Choose a plan priced in {account_currency}." if len(paying) == 1 else ""
    raise ValidationError(
        {
            "plan": ValidationError(
                f"Your billing account pays in {account_currency}, and the {plan.name} plan is priced "
                f"in {currency.upper()}: Stripe bills one customer in one currency.{advice}",
                code="currency_mismatch",
            )
        }
    )
