"""Apply changes to API keys and subscriptions to live connections (see ``gateway.control``).

Connected in ``GatewayConfig.ready``. The message is sent after the transaction commits, so a
gateway that re-checks the database sees the change.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from gateway.control import api_key_revoked_notify, subscription_ended_notify
from portal.models import APIKey, Subscription


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
