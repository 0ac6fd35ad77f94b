"""REST endpoints of the payment method, under ``/api/v1/billing/payment-method/`` (docs/rest-api.md
› Billing): the operations of the /billing/payment-method/ page (``billing.payments``).

- ``GET``: the card on file (or null), ``invoicing_approved``, ``can_pay``.
- ``POST {"setup_intent": true}``: a SetupIntent's ``client_secret`` for Stripe.js.
- ``POST {"payment_method": "pm_…"}``: make that Stripe PaymentMethod the card on file.
- ``DELETE``: remove the card (400 while subscriptions on paid plans rely on it).
- ``POST accounts/<id>/invoicing/ {"approved": true|false}``: platform admins approve or withdraw
  paying by invoice for a billing account.

Refusals are 400 with field errors (``{"payment_method": ["Your card was declined."]}``); Stripe
not configured or unreachable is 503 ``{"detail": "..."}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import permissions, serializers, status
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.models import BillingAccount
from billing.payments import (
    PaymentsUnavailable,
    billing_account_get,
    card_label,
    invoicing_approve,
    invoicing_revoke,
    payment_method_attach,
    payment_method_remove,
    setup_intent_create,
)
from billing.stripe_sync import stripe_enabled
from portal.api.common import V1View, service_errors

# --- serializers ----------------------------------------------------------------------------------


class CardSerializer(serializers.Serializer[Any]):
    """The card on file as Stripe describes it; never its number."""

    label = serializers.CharField(help_text='For people, e.g. "Visa •••• 4242".')
    brand = serializers.CharField(help_text="Stripe's card brand, e.g. visa.")
    last4 = serializers.CharField()
    exp_month = serializers.IntegerField(allow_null=True)
    exp_year = serializers.IntegerField(allow_null=True)
    payment_method = serializers.CharField(help_text="The Stripe PaymentMethod id (pm_…).")


class PaymentMethodSerializer(serializers.Serializer[Any]):
    """The signed-in user's payment method and how their invoices are collected."""

    card = serializers.SerializerMethodField(help_text="The card on file, or null.")
    invoicing_approved = serializers.BooleanField(help_text="An admin approved paying by invoice.")
    invoicing_approved_at = serializers.DateTimeField(allow_null=True)
    can_pay = serializers.BooleanField(
        help_text="May subscribe to paid plans: a card, or approved invoicing."
    )
    collection_method = serializers.CharField(
        help_text="How Stripe collects the invoices: charge_automatically or send_invoice."
    )
    payments_configured = serializers.SerializerMethodField(help_text="False when Stripe is not set up here.")

    @extend_schema_field(CardSerializer(allow_null=True))
    def get_card(self, account: BillingAccount) -> dict[str, Any] | None:
        if not account.has_payment_method:
            return None
        card = {
            "label": card_label(account),
            "brand": account.payment_method_brand,
            "last4": account.payment_method_last4,
            "exp_month": account.payment_method_exp_month,
            "exp_year": account.payment_method_exp_year,
            "payment_method": account.payment_method_id,
        }
        return dict(CardSerializer(card).data)

    def get_payments_configured(self, account: BillingAccount) -> bool:
        return stripe_enabled()


class PaymentMethodRequestSerializer(serializers.Serializer[Any]):
    """Exactly one of: ``setup_intent: true`` (start adding a card) or ``payment_method``."""

    setup_intent = serializers.BooleanField(
        required=False, help_text="true: answer a SetupIntent client secret for Stripe.js confirmCardSetup."
    )
    payment_method = serializers.CharField(
        required=False, max_length=255, help_text="A Stripe PaymentMethod id (pm_…) confirmed by Stripe.js."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if bool(attrs.get("setup_intent")) == bool(attrs.get("payment_method")):
            given = "both" if attrs.get("setup_intent") else "neither"
            raise serializers.ValidationError(
                'Send either {"setup_intent": true} or {"payment_method": "pm_…"}; '
                f"this request sent {given}."
            )
        return attrs


class SetupIntentSerializer(serializers.Serializer[Any]):
    client_secret = serializers.CharField(help_text="For Stripe.js confirmCardSetup; never store it.")
    publishable_key = serializers.CharField(help_text="The Stripe publishable key to load Stripe.js with.")


class InvoicingRequestSerializer(serializers.Serializer[Any]):
    approved = serializers.BooleanField(help_text="true approves paying by invoice, false withdraws it.")


class AccountInvoicingSerializer(serializers.Serializer[Any]):
    account = serializers.IntegerField(source="pk")
    owner = serializers.EmailField(source="owner.email")
    invoicing_approved = serializers.BooleanField()
    invoicing_approved_at = serializers.DateTimeField(allow_null=True)
    invoicing_approved_by = serializers.SerializerMethodField()
    has_payment_method = serializers.BooleanField()
    collection_method = serializers.CharField()

    def get_invoicing_approved_by(self, account: BillingAccount) -> str | None:
        by = account.invoicing_approved_by
        return by.email if by is not None else None


# --- views ------------------------------------------------------------------------------------------


class PaymentsUnavailableError(APIException):
    """Stripe is not configured on this server, or cannot be reached (503)."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "Payments are not available right now."
    default_code = "payments_unavailable"


def _payments(call: Callable[[], Any]) -> Any:
    """Run a ``billing.payments`` call: refusals become 400 with field errors (``service_errors``),
    an unavailable Stripe 503."""
    with service_errors():
        try:
            return call()
        except PaymentsUnavailable as exc:
            raise PaymentsUnavailableError(str(exc)) from None


UNAVAILABLE = OpenApiResponse(description="Stripe is not configured here or cannot be reached right now.")


class PaymentMethodView(V1View):
    @extend_schema(responses=PaymentMethodSerializer, summary="Your payment method")
    def get(self, request: Request) -> Response:
        account = BillingAccount.objects.filter(owner=request.user).first() or BillingAccount(
            owner=request.user
        )
        return Response(PaymentMethodSerializer(account).data)

    @extend_schema(
        request=PaymentMethodRequestSerializer,
        responses={
            200: PaymentMethodSerializer,
            201: SetupIntentSerializer,
            400: OpenApiResponse(
                description='A refused card: `{"payment_method": ["Your card was declined."]}`.'
            ),
            503: UNAVAILABLE,
        },
        summary="Start adding a card, or save the card Stripe.js confirmed",
        description='`{"setup_intent": true}` answers 201 with a SetupIntent client secret; confirm it '
        'with Stripe.js (`confirmCardSetup`), then send `{"payment_method": "pm_…"}`: the card becomes '
        "the one invoices are charged to (200), replacing any earlier one.",
    )
    def post(self, request: Request) -> Response:
        serializer = PaymentMethodRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        account = billing_account_get(user=request.user)
        if serializer.validated_data.get("setup_intent"):
            secret = _payments(lambda: setup_intent_create(account=account))
            body = {"client_secret": secret, "publishable_key": settings.STRIPE_PUBLISHABLE_KEY}
            return Response(SetupIntentSerializer(body).data, status=status.HTTP_201_CREATED)
        payment_method = serializer.validated_data["payment_method"]
        account = _payments(lambda: payment_method_attach(account=account, payment_method_id=payment_method))
        return Response(PaymentMethodSerializer(account).data)

    @extend_schema(
        request=None,
        responses={
            200: PaymentMethodSerializer,
            400: OpenApiResponse(description="No card, or still needed."),
            503: UNAVAILABLE,
        },
        summary="Remove your card",
        description="Refused (400) while subscriptions on paid plans rely on it without approved invoicing.",
    )
    def delete(self, request: Request) -> Response:
        account = billing_account_get(user=request.user)
        account = _payments(lambda: payment_method_remove(account=account))
        return Response(PaymentMethodSerializer(account).data)


class IsStaffForInvoicing(permissions.BasePermission):
    message = "Only platform admins approve invoicing."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user.is_authenticated and request.user.is_staff)


class AccountInvoicingView(V1View):
    permission_classes = [permissions.IsAuthenticated, IsStaffForInvoicing]

    @extend_schema(
        request=InvoicingRequestSerializer,
        responses={
            200: AccountInvoicingSerializer,
            403: OpenApiResponse(description="Not a platform admin."),
        },
        summary="Approve or withdraw paying by invoice (admins)",
        description="An account with approved invoicing may use paid plans without a card; Stripe "
        "emails its invoices (collection_method send_invoice) unless a card is on file.",
    )
    def post(self, request: Request, pk: int) -> Response:
        account = get_object_or_404(BillingAccount.objects.select_related("owner"), pk=pk)
        serializer = InvoicingRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        change = invoicing_approve if serializer.validated_data["approved"] else invoicing_revoke
        with service_errors():
            account = change(account=account, by=request.user)
        return Response(AccountInvoicingSerializer(account).data)
