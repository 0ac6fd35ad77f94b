"""Apply changes to keys, subscriptions, APIs and versions to live connections (``gateway.control``).

Connected in ``GatewayConfig.ready``. The message is sent after the transaction commits, so a
gateway that re-checks the database sees the change.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_init, post_save
from django.dispatch import receiver
from oauth2_provider.models import AccessToken
from oauth2_provider.models import Application as OAuthClient

from gateway.control import (
    api_key_group,
    api_key_revoked_notify,
    api_unavailable_notify,
    api_version_unavailable_notify,
    credential_expiry_notify,
    oauth_token_group,
    oauth_token_revoked_notify,
    subscription_ended_notify,
    subscription_plan_changed_notify,
)
from gateway.credentials import (
    API_KEY,
    OAUTH_TOKEN,
    credential_cache_refresh,
    credentials_cache_refresh_owner,
    owner_credentials_revoked_notify,
)
from gateway.throttling import Policy
from portal.models import API, APIKey, APIVersion, Application, BusinessPlan, Subscription, User


@receiver(post_init, sender=APIKey, dispatch_uid="gateway.api_key_loaded")
def api_key_loaded(sender: type[APIKey], instance: APIKey, **kwargs: Any) -> None:
    # The expiry as loaded, so that a save can tell a changed expiry (rotation grace) apart.
    instance._gateway_expires_at = instance.__dict__.get("expires_at")  # type: ignore[attr-defined]


@receiver(post_save, sender=APIKey, dispatch_uid="gateway.api_key_saved")
def api_key_saved(sender: type[APIKey], instance: APIKey, created: bool, **kwargs: Any) -> None:
    # A new row has no connections yet.
    loaded = getattr(instance, "_gateway_expires_at", None)
    instance._gateway_expires_at = instance.expires_at  # type: ignore[attr-defined]
    if created:
        return
    if not instance.is_usable:
        transaction.on_commit(lambda: api_key_revoked_notify(key_id=instance.pk))
    elif instance.expires_at != loaded:
        # Still usable, but until another time (a rotation's grace period): live connections
        # move their expiry timers (gateway.connections.LiveConnection).
        key_id = instance.pk
        expires_at = instance.expires_at.timestamp() if instance.expires_at else None
        transaction.on_commit(
            lambda: credential_expiry_notify(group=api_key_group(key_id), expires_at=expires_at)
        )


@receiver(post_save, sender=Subscription, dispatch_uid="gateway.subscription_saved")
def subscription_saved(
    sender: type[Subscription], instance: Subscription, created: bool, **kwargs: Any
) -> None:
    if not created and instance.status != Subscription.Status.ACTIVE:
        subscription_id, status = instance.pk, instance.status
        transaction.on_commit(
            lambda: subscription_ended_notify(subscription_id=subscription_id, status=status)
        )


@receiver(post_init, sender=Subscription, dispatch_uid="gateway.subscription_loaded")
def subscription_loaded(sender: type[Subscription], instance: Subscription, **kwargs: Any) -> None:
    # The plan as loaded, so that a save can tell a plan change (service, Django admin) apart.
    # From __dict__: a deferred plan_id (``.only()``) must not cost a query per row.
    instance._gateway_plan_id = instance.__dict__.get("plan_id")  # type: ignore[attr-defined]


@receiver(post_save, sender=Subscription, dispatch_uid="gateway.subscription_plan_saved")
def subscription_plan_saved(
    sender: type[Subscription], instance: Subscription, created: bool, **kwargs: Any
) -> None:
    loaded = getattr(instance, "_gateway_plan_id", None)
    instance._gateway_plan_id = instance.__dict__.get("plan_id")  # type: ignore[attr-defined]
    if not created and loaded is not None and loaded != instance._gateway_plan_id:
        subscription_id = instance.pk
        transaction.on_commit(lambda: subscription_plan_changed_notify(subscription_id=subscription_id))


def _policy_values(plan: BusinessPlan) -> tuple[Any, ...] | None:
    values = plan.__dict__
    if any(name not in values for name in Policy.PLAN_FIELDS[2:]):  # deferred fields: unknown
        return None
    return tuple(values[name] for name in Policy.PLAN_FIELDS[2:])


@receiver(post_init, sender=BusinessPlan, dispatch_uid="gateway.plan_loaded")
def plan_loaded(sender: type[BusinessPlan], instance: BusinessPlan, **kwargs: Any) -> None:
    # The throttling policy as loaded, so that a save can tell a changed policy apart.
    instance._gateway_policy = _policy_values(instance)  # type: ignore[attr-defined]


@receiver(post_save, sender=BusinessPlan, dispatch_uid="gateway.plan_saved")
def plan_saved(sender: type[BusinessPlan], instance: BusinessPlan, created: bool, **kwargs: Any) -> None:
    """A plan whose throttling policy changed (an admin's edit): its subscriptions' live
    connections close with 4409 and reconnect under the new limits (``gateway.throttling``)."""
    loaded = getattr(instance, "_gateway_policy", None)
    instance._gateway_policy = _policy_values(instance)  # type: ignore[attr-defined]
    if created or loaded is None or loaded == instance._gateway_policy:
        return
    subscription_ids = list(
        Subscription.objects.filter(plan=instance, status=Subscription.Status.ACTIVE).values_list(
            "pk", flat=True
        )
    )

    def notify() -> None:
        for subscription_id in subscription_ids:
            subscription_plan_changed_notify(subscription_id=subscription_id)

    transaction.on_commit(notify)


@receiver(post_save, sender=API, dispatch_uid="gateway.api_saved")
def api_saved(sender: type[API], instance: API, created: bool, **kwargs: Any) -> None:
    # Any save of an API the gateway does not serve (blocked, retired; a draft has no
    # connections, but a message to an empty group costs nothing and keeps the rule simple).
    if not created and instance.status not in API.CONNECTABLE_STATUSES:
        api_id, status = instance.pk, instance.status
        transaction.on_commit(lambda: api_unavailable_notify(api_id=api_id, status=status))


@receiver(post_save, sender=APIVersion, dispatch_uid="gateway.api_version_saved")
def api_version_saved(sender: type[APIVersion], instance: APIVersion, created: bool, **kwargs: Any) -> None:
    if not created and instance.status not in APIVersion.LIVE_STATUSES:
        version_id, status = instance.pk, instance.status
        transaction.on_commit(
            lambda: api_version_unavailable_notify(api_version_id=version_id, status=status)
        )


# --- credentials: cache entries and live connections of API keys and OAuth2 access tokens -------
# (gateway.credentials). Every change rewrites the credential's cache entry from the committed row
# in the shared cache, so no gateway process accepts a revoked credential from its cache.


@receiver(post_save, sender=APIKey, dispatch_uid="gateway.api_key_cache_saved")
@receiver(post_delete, sender=APIKey, dispatch_uid="gateway.api_key_cache_deleted")
def api_key_cache_refresh(sender: type[APIKey], instance: APIKey, **kwargs: Any) -> None:
    if kwargs.get("created"):
        return
    key_id, deleted = instance.pk, "created" not in kwargs

    def refresh() -> None:
        credential_cache_refresh(kind=API_KEY, digest=instance.key_hash)
        if deleted:  # a save that makes the key unusable is notified by api_key_saved above
            api_key_revoked_notify(key_id=key_id)

    transaction.on_commit(refresh)


@receiver(post_save, sender=AccessToken, dispatch_uid="gateway.access_token_saved")
@receiver(post_delete, sender=AccessToken, dispatch_uid="gateway.access_token_deleted")
def access_token_refresh(sender: type[AccessToken], instance: AccessToken, **kwargs: Any) -> None:
    # DOT revokes an access token by deleting it (revoke endpoint, portal, admin, cascades).
    if kwargs.get("created"):
        return
    token_id, checksum = instance.pk, instance.token_checksum
    deleted = "created" not in kwargs

    def refresh() -> None:
        credential_cache_refresh(kind=OAUTH_TOKEN, digest=checksum)
        if deleted or instance.is_expired():
            oauth_token_revoked_notify(token_id=token_id)
        elif instance.expires is not None:  # its expiry may have moved: live timers follow
            expires_at = instance.expires.timestamp()
            credential_expiry_notify(group=oauth_token_group(token_id), expires_at=expires_at)

    transaction.on_commit(refresh)


@receiver(post_save, sender=User, dispatch_uid="gateway.user_credentials_saved")
def user_credentials_refresh(sender: type[User], instance: User, created: bool, **kwargs: Any) -> None:
    # An inactive owner's keys and tokens stop working; reactivated, they work again.
    update_fields = kwargs.get("update_fields")
    if created or (update_fields is not None and "is_active" not in update_fields):
        return  # e.g. a sign-in updating last_login
    user_id, active = instance.pk, instance.is_active

    def refresh() -> None:
        credentials_cache_refresh_owner(user_id=user_id)
        if not active:
            owner_credentials_revoked_notify(user_id=user_id)

    transaction.on_commit(refresh)


@receiver(post_delete, sender=Application, dispatch_uid="gateway.application_oauth_client_deleted")
def application_oauth_client_delete(sender: type[Application], instance: Application, **kwargs: Any) -> None:
    # The consumer key goes with its application, and with it every access token it was issued
    # (each token's post_delete above refreshes its cache entry and closes its connections).
    if instance.oauth_client_id is not None:
        OAuthClient.objects.filter(pk=instance.oauth_client_id).delete()
