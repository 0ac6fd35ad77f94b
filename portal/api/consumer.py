"""Consumers, for their own: applications, their subscriptions, API keys and OAuth2 clients."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from portal.api.common import (
    V1View,
    get_application_for_user,
    get_key_for_user,
    get_subscription_for_reader,
    get_subscription_for_user,
    service_errors,
)
from portal.models import Application, Subscription
from portal.serializers import (
    AccessTokenSerializer,
    APIKeyCreatedSerializer,
    APIKeyCreateSerializer,
    APIKeyRotatedSerializer,
    APIKeyRotateSerializer,
    APIKeySerializer,
    ApplicationDetailSerializer,
    ApplicationSerializer,
    ApplicationUpdateSerializer,
    OAuthClientSecretSerializer,
    OAuthClientSerializer,
    SubscriptionCreateSerializer,
    SubscriptionLimitsSerializer,
    SubscriptionSerializer,
)
from portal.services.credentials import (
    api_key_create,
    api_key_expiry,
    api_key_revoke,
    api_key_rotate,
    oauth_client_create,
    oauth_client_secret_regenerate,
    oauth_tokens_active,
    oauth_tokens_revoke,
)
from portal.services.limits import subscription_limits
from portal.services.subscriptions import (
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


class SubscriptionLimitsView(V1View):
    @extend_schema(
        responses=SubscriptionLimitsSerializer,
        summary="Limits of a subscription: its plan's policy, live windows, this period's usage",
        description="The plan's throttling policy; the live counters the gateway enforces (`windows`: "
        "the rate window, the sustained-rate window of a burst, and the month's quotas when the plan "
        "stops at them; counted in Redis, leases included, with when each resets); and the billing "
        "period so far (calendar month, UTC) from analytics: events and bytes delivered in the counted "
        "directions, what remains of the quotas, and the events the policy stopped (`throttled_events`, "
        "never billed). When Redis cannot be reached, `windows` is empty and `redis_available` false. "
        "For the application's owner, the API's provider and admins; 404 for anyone else.",
    )
    def get(self, request: Request, pk: int) -> Response:
        subscription = get_subscription_for_reader(request.user, pk)
        return Response(SubscriptionLimitsSerializer(subscription_limits(subscription)).data)


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
        description="The response's `key` is the secret; it is shown this once and never stored. "
        "Expiry: `expires_in_days` (e.g. 30, 90, 365) or `expires_at`; neither means never.",
    )
    def post(self, request: Request, pk: int) -> Response:
        application = get_application_for_user(request.user, pk)
        serializer = APIKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        with service_errors():
            expires_at = data.get("expires_at") or api_key_expiry(days=data.get("expires_in_days"))
            key, secret = api_key_create(application=application, name=data["name"], expires_at=expires_at)
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


# --- credentials: key rotation, the OAuth2 client and its tokens (docs/credentials.md) ------------


class ApplicationKeyRotateView(V1View):
    @extend_schema(
        request=APIKeyRotateSerializer,
        responses={201: APIKeyRotatedSerializer},
        summary="Rotate an API key",
        description="Creates a new key (its secret `key` is shown this once) and keeps the old key "
        "working for `grace_seconds` (default 24 h), after which the gateway refuses it and closes its "
        "connections (4401). A revoked, expired or already rotated key answers 400.",
    )
    def post(self, request: Request, pk: int, key_id: int) -> Response:
        key = get_key_for_user(request.user, pk, key_id)
        serializer = APIKeyRotateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        with service_errors():
            grace = serializer.validated_data["grace_seconds"]
            new_key, secret = api_key_rotate(key=key, grace_seconds=grace)
        key.refresh_from_db()
        body = {"key": secret, "new_key": new_key, "old_key": key}
        return Response(APIKeyRotatedSerializer(body).data, status=status.HTTP_201_CREATED)


def _oauth_client_body(request: Request, application: Application, secret: str | None = None) -> dict:
    from portal.oauth import application_scopes

    client = application.oauth_client
    body = {
        "client_id": client.client_id,
        "created": client.created,
        "token_url": request.build_absolute_uri("/o/token/"),
        "scopes_available": sorted(application_scopes(application.pk)),
    }
    if secret is not None:
        body["client_secret"] = secret
    return body


class ApplicationOAuthClientView(V1View):
    @extend_schema(
        responses=OAuthClientSerializer,
        summary="The OAuth2 client of an application",
        description="Its consumer key (`client_id`), the token endpoint and the scopes it may ask "
        "for now. 404 until one is created.",
    )
    def get(self, request: Request, pk: int) -> Response:
        application = get_application_for_user(request.user, pk)
        if application.oauth_client is None:
            raise NotFound("This application has no consumer key yet: POST here to create one.")
        return Response(OAuthClientSerializer(_oauth_client_body(request, application)).data)

    @extend_schema(
        request=None,
        responses={201: OAuthClientSecretSerializer},
        summary="Create the OAuth2 client of an application",
        description="A consumer key and secret for the client credentials grant at `/o/token/`. "
        "`client_secret` is shown this once and stored hashed. 400 if the application has one.",
    )
    def post(self, request: Request, pk: int) -> Response:
        application = get_application_for_user(request.user, pk)
        with service_errors():
            client, secret = oauth_client_create(application=application)
        application.oauth_client = client
        body = _oauth_client_body(request, application, secret)
        return Response(OAuthClientSecretSerializer(body).data, status=status.HTTP_201_CREATED)


class ApplicationOAuthClientSecretView(V1View):
    @extend_schema(
        request=None,
        responses=OAuthClientSecretSerializer,
        summary="Regenerate the client secret",
        description="The old secret stops working at once; issued access tokens stay valid until they "
        "expire or are revoked. The new `client_secret` is shown this once.",
    )
    def post(self, request: Request, pk: int) -> Response:
        application = get_application_for_user(request.user, pk)
        with service_errors():
            client, secret = oauth_client_secret_regenerate(application=application)
        return Response(OAuthClientSecretSerializer(_oauth_client_body(request, application, secret)).data)


class ApplicationOAuthTokenListView(V1View):
    @extend_schema(
        responses=AccessTokenSerializer(many=True),
        summary="Unexpired access tokens of an application",
        description="Ids, scopes and lifetimes only: a token is shown only to the client it was issued to.",
    )
    def get(self, request: Request, pk: int) -> Response:
        application = get_application_for_user(request.user, pk)
        return Response(AccessTokenSerializer(oauth_tokens_active(application), many=True).data)


class ApplicationOAuthTokenRevokeView(V1View):
    @extend_schema(
        request=None,
        responses={204: None},
        summary="Revoke an access token",
        description="Handshakes with the token are refused from now on and its open connections close "
        "with 4401 within a second.",
    )
    def post(self, request: Request, pk: int, token_id: int) -> Response:
        application = get_application_for_user(request.user, pk)
        if not oauth_tokens_revoke(application=application, token_ids=[token_id]):
            raise NotFound("No such access token for this application (it may have expired or been revoked).")
        return Response(status=status.HTTP_204_NO_CONTENT)
