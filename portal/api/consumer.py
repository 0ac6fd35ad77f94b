"""Consumers, for their own: applications, their subscriptions and API keys."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from portal.api.common import (
    V1View,
    get_application_for_user,
    get_key_for_user,
    get_subscription_for_user,
    service_errors,
)
from portal.models import Application, Subscription
from portal.serializers import (
    APIKeyCreatedSerializer,
    APIKeyCreateSerializer,
    APIKeySerializer,
    ApplicationDetailSerializer,
    ApplicationSerializer,
    ApplicationUpdateSerializer,
    SubscriptionCreateSerializer,
    SubscriptionSerializer,
)
from portal.services.subscriptions import (
    api_key_create,
    api_key_revoke,
    application_create,
    application_delete,
    application_update,
    subscription_cancel,
    subscription_create,
)


class ApplicationListView(V1View):
    @extend_schema(responses=ApplicationSerializer(many=True), summary="Your applications")
    def get(self, request: Request) -> Response:
        applications = Application.objects.filter(owner=request.user)
        return Response(ApplicationSerializer(applications, many=True).data)

    @extend_schema(
        request=ApplicationSerializer, responses={201: ApplicationSerializer}, summary="Create an application"
    )
    def post(self, request: Request) -> Response:
        serializer = ApplicationSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        with service_errors():
            application = application_create(owner=request.user, **serializer.validated_data)
        return Response(ApplicationSerializer(application).data, status=status.HTTP_201_CREATED)


class ApplicationDetailView(V1View):
    @extend_schema(responses=ApplicationDetailSerializer, summary="One of your applications")
    def get(self, request: Request, pk: int) -> Response:
        application = get_application_for_user(request.user, pk)
        return Response(ApplicationDetailSerializer(application).data)

    @extend_schema(
        request=ApplicationUpdateSerializer,
        responses=ApplicationSerializer,
        summary="Rename or describe an application",
    )
    def patch(self, request: Request, pk: int) -> Response:
        application = get_application_for_user(request.user, pk)
        serializer = ApplicationUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        changes = serializer.validated_data
        with service_errors():
            application = application_update(
                application=application,
                name=changes.get("name", application.name),
                description=changes.get("description", application.description),
            )
        return Response(ApplicationSerializer(application).data)

    @extend_schema(
        request=None,
        responses={204: None},
        summary="Delete an application",
        description="Refused (400) while it has pending or active subscriptions: cancel them first.",
    )
    def delete(self, request: Request, pk: int) -> Response:
        application = get_application_for_user(request.user, pk)
        with service_errors():
            application_delete(application=application)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApplicationSubscriptionCreateView(V1View):
    @extend_schema(
        responses=SubscriptionSerializer(many=True), summary="Subscriptions of one of your applications"
    )
    def get(self, request: Request, pk: int) -> Response:
        application = get_application_for_user(request.user, pk)
        subscriptions = application.subscriptions.select_related("api", "plan")
        return Response(SubscriptionSerializer(subscriptions, many=True).data)

    @extend_schema(
        request=SubscriptionCreateSerializer,
        responses={201: SubscriptionSerializer},
        summary="Subscribe an application to an API under a plan",
        description="Active at once, or pending until an admin approves when the plan requires approval. "
        "Deprecated, blocked and retired APIs take no new subscriptions (400).",
    )
    def post(self, request: Request, pk: int) -> Response:
        application = get_application_for_user(request.user, pk)
        serializer = SubscriptionCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        with service_errors():
            subscription = subscription_create(
                application=application, plan=serializer.validated_data["plan"]
            )
        return Response(SubscriptionSerializer(subscription).data, status=status.HTTP_201_CREATED)


class SubscriptionListView(V1View):
    @extend_schema(responses=SubscriptionSerializer(many=True), summary="Subscriptions of your applications")
    def get(self, request: Request) -> Response:
        subscriptions = Subscription.objects.filter(application__owner=request.user).select_related(
            "api", "plan"
        )
        return Response(SubscriptionSerializer(subscriptions, many=True).data)


def _cancel(request: Request, pk: int) -> Response:
    subscription = get_subscription_for_user(request.user, pk)
    with service_errors():
        subscription = subscription_cancel(subscription=subscription, actor=request.user)
    return Response(SubscriptionSerializer(subscription).data)


# The same operation, as DELETE on the subscription and as POST .../cancel.
cancel_schema = extend_schema(
    request=None,
    responses=SubscriptionSerializer,
    summary="Cancel a subscription",
    description="Ends a pending or active subscription; the gateway closes its live connections. "
    "The application can subscribe to the API again later.",
)


class SubscriptionDetailView(V1View):
    @extend_schema(responses=SubscriptionSerializer, summary="A subscription of one of your applications")
    def get(self, request: Request, pk: int) -> Response:
        return Response(SubscriptionSerializer(get_subscription_for_user(request.user, pk)).data)

    @cancel_schema
    def delete(self, request: Request, pk: int) -> Response:
        return _cancel(request, pk)


class SubscriptionCancelView(V1View):
    @cancel_schema
    def post(self, request: Request, pk: int) -> Response:
        return _cancel(request, pk)


class ApplicationKeyCreateView(V1View):
    @extend_schema(
        responses=APIKeySerializer(many=True),
        summary="API keys of one of your applications",
        description="Prefixes only: the secret was shown once, when the key was generated.",
    )
    def get(self, request: Request, pk: int) -> Response:
        application = get_application_for_user(request.user, pk)
        return Response(APIKeySerializer(application.api_keys.all(), many=True).data)

    @extend_schema(
        request=APIKeyCreateSerializer,
        responses={201: APIKeyCreatedSerializer},
        summary="Generate an API key",
        description="The response's `key` is the secret; it is shown this once and never stored.",
    )
    def post(self, request: Request, pk: int) -> Response:
        application = get_application_for_user(request.user, pk)
        serializer = APIKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key, secret = api_key_create(application=application, name=serializer.validated_data["name"])
        key.key = secret  # type: ignore[attr-defined]
        return Response(APIKeyCreatedSerializer(key).data, status=status.HTTP_201_CREATED)


class ApplicationKeyRevokeView(V1View):
    @extend_schema(
        request=None,
        responses=APIKeySerializer,
        summary="Revoke an API key",
        description="Handshakes with the key are refused from now on and its open connections are closed "
        "(close code 4401). Revoking twice keeps the first time.",
    )
    def post(self, request: Request, pk: int, key_id: int) -> Response:
        key = api_key_revoke(key=get_key_for_user(request.user, pk, key_id))
        return Response(APIKeySerializer(key).data)
