"""Apply changes to keys, subscriptions, APIs and versions to live connections (``gateway.control``).

Connected in ``GatewayConfig.ready``. The message is sent after the transaction commits, so a
gateway that re-checks the database sees the change.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from gateway.control import (
    api_key_revoked_notify,
    api_unavailable_notify,
    api_version_unavailable_notify,
    subscription_ended_notify,
)
from portal.models import API, APIKey, APIVersion, Subscription


@receiver(post_save, sender=APIKey, dispatch_uid="gateway.api_key_saved")
def api_key_saved(sender: type[APIKey], instance: APIKey, created: bool, **kwargs: Any) -> None:
    # A new row has no connections yet.
    if not created and not instance.is_usable:
        transaction.on_commit(lambda: api_key_revoked_notify(key_id=instance.pk))


@receiver(post_save, sender=Subscription, dispatch_uid="gateway.subscription_saved")
def subscription_saved(
    sender: type[Subscription], instance: Subscription, created: bool, **kwargs: Any
) -> None:
    if not created and instance.status != Subscription.Status.ACTIVE:
        transaction.on_commit(lambda: subscription_ended_notify(subscription_id=instance.pk))


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
