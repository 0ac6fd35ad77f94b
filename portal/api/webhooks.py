"""Webhook subscriptions of a consumer's applications, their delivery log and redelivery.

``/api/v1/webhooks/`` (list, register), ``/api/v1/webhooks/<id>/`` (read, delete),
``.../verify`` (verify intent again), ``.../deliveries/`` (the log; ``?status=dead`` for dead
letters), ``.../deliveries/<delivery id>/`` (with the body sent) and ``.../redeliver``. Another
user's webhook answers 404. The secret is write-only: no response ever contains it.
The work is done by ``gateway.webhooks.services``; the rules are in ``docs/webhooks.md``.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from gateway.models import WebhookDelivery, WebhookSubscription
from gateway.webhooks.addresses import MAX_CALLBACK_URL_LENGTH
from gateway.webhooks.services import (
    delivery_redeliver,
    webhook_delete,
    webhook_register,
    webhook_topic_url,
    webhook_verify_again,
)
from portal.api.common import PAGINATION_PARAMETERS, LinkHeaderPagination, V1View, service_errors
from portal.models import Subscription, User

# --- serializers ----------------------------------------------------------------------------------


def _one_of(choices: type[WebhookSubscription.Status] | type[WebhookDelivery.Status]) -> dict[str, str]:
    return {"type": "string", "description": "One of: " + ", ".join(f"`{value}`" for value in choices.values)}


# A string (not an enum) in the OpenAPI schema: drf-spectacular names enums after the field, and
# "status" enums need an ENUM_NAME_OVERRIDES entry in settings to stay apart from the others.
@extend_schema_field(_one_of(WebhookSubscription.Status))
class WebhookStatusField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=WebhookSubscription.Status.choices, **kwargs)


@extend_schema_field(_one_of(WebhookDelivery.Status))
class DeliveryStatusField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=WebhookDelivery.Status.choices, **kwargs)


class WebhookSerializer(serializers.ModelSerializer[WebhookSubscription]):
    """A webhook subscription, without its secret. ``status``: ``pending`` (intent
    verification queued or running), ``active`` (events are delivered), ``failed`` (see
    ``status_reason``) or ``deleted``. ``throttled_count``: events throttled by the plan since
    the last successful delivery (reported by the next POST's ``Eventgate-Throttled`` header),
    ``throttled_limit`` the latest limit reached."""

    status = WebhookStatusField(read_only=True)
    application = serializers.IntegerField(source="subscription.application_id", read_only=True)
    api = serializers.CharField(source="subscription.api.slug", read_only=True)
    version = serializers.CharField(source="api_version.version", read_only=True)
    channel = serializers.CharField(source="address", read_only=True, help_text="Concrete channel address.")
    channel_template = serializers.CharField(source="channel.address", read_only=True)
    topic = serializers.SerializerMethodField(help_text="hub.topic sent at verification.")
    deliveries = serializers.SerializerMethodField(help_text="URL of the delivery log.")

    class Meta:
        model = WebhookSubscription
        fields = [
            "id",
            "application",
            "subscription",
            "api",
            "version",
            "channel",
            "channel_template",
            "callback_url",
            "status",
            "status_reason",
            "topic",
            "lease_seconds",
            "lease_expires_at",
            "created",
            "verification_requested_at",
            "verified_at",
            "deleted_at",
            "throttled_count",
            "throttled_limit",
            "deliveries",
        ]
        read_only_fields = fields

    def get_topic(self, webhook: WebhookSubscription) -> str:
        return webhook_topic_url(webhook)

    def get_deliveries(self, webhook: WebhookSubscription) -> str:
        path = reverse("api:webhook_delivery_list", args=[webhook.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path


class WebhookCreateSerializer(serializers.Serializer[Any]):
    """A webhook to register (WebSub §5.1 subscriber request)."""

    subscription = serializers.IntegerField(
        help_text="Id of an active subscription of one of your applications."
    )
    version = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=64,
        help_text="API version; default: the newest published one.",
    )
    channel = serializers.CharField(
        max_length=1000, help_text="Concrete channel address with its parameters filled in, e.g. prices/ACME."
    )
    callback_url = serializers.CharField(
        max_length=MAX_CALLBACK_URL_LENGTH, help_text="http(s) URL on a public address; receives the POSTs."
    )
    secret = serializers.CharField(
        write_only=True,
        trim_whitespace=False,
        max_length=400,
        help_text="HMAC-SHA256 key of the X-Hub-Signature header: 16 characters to 199 bytes. "
        "Never shown again.",
    )


class WebhookDeliverySerializer(serializers.ModelSerializer[WebhookDelivery]):
    """One delivery: ``status`` ``pending`` (queued), ``sending``, ``retrying`` (next
    attempt at ``next_attempt_at``), ``delivered``, ``dead`` (a dead letter: attempts used up),
    ``cancelled`` (access ended or the quota was used up before it was sent; ``last_error`` says
    why) or ``throttled`` (the plan's rate limit or quota stopped it: never sent, never retried,
    never billed; ``last_error`` names the limit).
    ``last_latency_ms``: milliseconds until the callback's response headers arrived."""

    status = DeliveryStatusField(read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "event_id",
            "status",
            "attempts",
            "max_attempts",
            "last_status_code",
            "last_error",
            "last_latency_ms",
            "size",
            "created",
            "last_attempt_at",
            "next_attempt_at",
            "delivered_at",
            "redelivery_of",
        ]
        read_only_fields = fields


class WebhookDeliveryDetailSerializer(WebhookDeliverySerializer):
    """A delivery with ``body``, the exact JSON sent (and signed)."""

    class Meta(WebhookDeliverySerializer.Meta):
        fields = [*WebhookDeliverySerializer.Meta.fields, "body"]
        read_only_fields = fields


class DeliveryQuerySerializer(serializers.Serializer[Any]):
    status = DeliveryStatusField(required=False, help_text="Only deliveries in this state.")


# --- access helpers -------------------------------------------------------------------------------


def webhooks_of(user: User) -> QuerySet[WebhookSubscription]:
    """Webhooks of ``user``'s applications, with what the serializer reads."""
    return WebhookSubscription.objects.owned_by(user).select_related(
        "subscription__api", "api_version", "channel"
    )


def get_webhook_for_user(user: User, pk: int) -> WebhookSubscription:
    """Webhook ``pk`` of one of ``user``'s applications, or 404."""
    return get_object_or_404(webhooks_of(user), pk=pk)


def get_delivery_for_user(user: User, webhook_pk: int, delivery_pk: UUID) -> WebhookDelivery:
    """Delivery ``delivery_pk`` of webhook ``webhook_pk`` of one of ``user``'s applications, or 404."""
    return get_object_or_404(
        WebhookDelivery.objects.filter(webhook__subscription__application__owner=user, webhook_id=webhook_pk),
        pk=delivery_pk,
    )


# --- views ------------------------------------------------------------------------------------------


class WebhookListView(V1View):
    @extend_schema(
        parameters=[
            OpenApiParameter("application", int, description="Only webhooks of this application."),
            OpenApiParameter("subscription", int, description="Only webhooks of this subscription."),
        ],
        responses=WebhookSerializer(many=True),
        summary="Your webhooks",
        description="Webhook subscriptions of your applications, newest first; deleted ones are left out.",
    )
    def get(self, request: Request) -> Response:
        webhooks = webhooks_of(request.user).visible()
        for name in ("application", "subscription"):
            value = request.query_params.get(name)
            if value is None:
                continue
            if not value.isdigit():
                raise serializers.ValidationError({name: [f"{name} must be an id (a whole number)."]})
            field = "subscription__application_id" if name == "application" else "subscription_id"
            webhooks = webhooks.filter(**{field: int(value)})
        return Response(WebhookSerializer(webhooks, many=True, context={"request": request}).data)

    @extend_schema(
        request=WebhookCreateSerializer,
        responses={201: WebhookSerializer},
        summary="Register a webhook",
        description="Registers a callback for one concrete channel address of an active subscription "
        "(checked like a WebSocket handshake) and queues intent verification: Eventgate GETs the "
        "callback with hub.mode, hub.topic, hub.challenge and hub.lease_seconds and expects the "
        "challenge back (W3C WebSub §5.3). The webhook is `pending` until then, then `active` or "
        "`failed` with `status_reason`. Callback URLs on private, loopback, link-local or other "
        "non-public addresses are refused (400 on `callback_url`). A subscription has at most its "
        "plan's `max_webhook_subscriptions` webhooks that are not deleted (400 on `subscription`).",
    )
    def post(self, request: Request) -> Response:
        serializer = WebhookCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        subscription = (
            Subscription.objects.select_related("api")
            .filter(pk=data["subscription"], application__owner=request.user)
            .first()
        )
        if subscription is None:
            missing = "No such subscription of your applications."
            raise serializers.ValidationError({"subscription": [missing]})
        with service_errors():
            webhook = webhook_register(
                subscription=subscription,
                version=data.get("version") or None,
                address=data["channel"],
                callback_url=data["callback_url"],
                secret=data["secret"],
            )
        webhook = get_webhook_for_user(request.user, webhook.pk)
        body = WebhookSerializer(webhook, context={"request": request}).data
        location = request.build_absolute_uri(reverse("api:webhook_detail", args=[webhook.pk]))
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": location})


class WebhookDetailView(V1View):
    @extend_schema(responses=WebhookSerializer, summary="A webhook")
    def get(self, request: Request, pk: int) -> Response:
        webhook = get_webhook_for_user(request.user, pk)
        return Response(WebhookSerializer(webhook, context={"request": request}).data)

    @extend_schema(
        request=None,
        responses={204: None},
        summary="Delete a webhook",
        description="No more deliveries; queued ones are not sent. The secret is erased; the webhook "
        "(state `deleted`) and its delivery log stay readable.",
    )
    def delete(self, request: Request, pk: int) -> Response:
        webhook_delete(webhook=get_webhook_for_user(request.user, pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookVerifyView(V1View):
    @extend_schema(
        request=None,
        responses={202: WebhookSerializer},
        summary="Verify a webhook's callback again",
        description="Queues intent verification (after fixing a callback that failed it). An active "
        "webhook keeps receiving meanwhile.",
    )
    def post(self, request: Request, pk: int) -> Response:
        with service_errors():
            webhook = webhook_verify_again(webhook=get_webhook_for_user(request.user, pk))
        webhook = get_webhook_for_user(request.user, webhook.pk)
        body = WebhookSerializer(webhook, context={"request": request}).data
        return Response(body, status=status.HTTP_202_ACCEPTED)


class WebhookDeliveryListView(V1View):
    @extend_schema(
        parameters=[DeliveryQuerySerializer, *PAGINATION_PARAMETERS],
        responses=WebhookDeliverySerializer(many=True),
        summary="A webhook's delivery log",
        description="Newest first, one page at a time (see the `Link` and `X-Total-Count` headers). "
        "`?status=dead` lists the dead letters.",
    )
    def get(self, request: Request, pk: int) -> Response:
        webhook = get_webhook_for_user(request.user, pk)
        query = DeliveryQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        deliveries = webhook.deliveries.all()
        if state := query.validated_data.get("status"):
            deliveries = deliveries.filter(status=state)
        paginator = LinkHeaderPagination()
        page = paginator.paginate_queryset(deliveries, request, view=self)
        return paginator.get_paginated_response(WebhookDeliverySerializer(page, many=True).data)


class WebhookDeliveryDetailView(V1View):
    @extend_schema(responses=WebhookDeliveryDetailSerializer, summary="One delivery, with the body sent")
    def get(self, request: Request, pk: int, delivery_id: UUID) -> Response:
        delivery = get_delivery_for_user(request.user, pk, delivery_id)
        return Response(WebhookDeliveryDetailSerializer(delivery).data)


class WebhookRedeliverView(V1View):
    @extend_schema(
        request=None,
        responses={202: WebhookDeliverySerializer},
        summary="Redeliver",
        description="Sends the delivery's stored body again, as a new delivery (new delivery id, same "
        "event id, one attempt, signed with the webhook's secret). Refused (400) while the delivery "
        "is still queued or retrying, or while the webhook cannot receive events.",
    )
    def post(self, request: Request, pk: int, delivery_id: UUID) -> Response:
        delivery = get_delivery_for_user(request.user, pk, delivery_id)
        with service_errors():
            again = delivery_redeliver(delivery=delivery)
        return Response(WebhookDeliverySerializer(again).data, status=status.HTTP_202_ACCEPTED)
