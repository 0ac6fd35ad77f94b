"""Applications, subscriptions, approvals and API keys."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from gateway.control import api_key_revoked_notify
from portal.models import API, APIKey, Application, BusinessPlan, Subscription, User


def application_create(*, owner: User, name: str, description: str = "") -> Application:
    """Create an application for ``owner``.

    Raises ``ValidationError`` (field ``name``) when the owner already has one of that name.
    """
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Give the application a name."})
    if Application.objects.filter(owner=owner, name=name).exists():
        raise ValidationError({"name": f"You already have an application called “{name}”."})
    return Application.objects.create(owner=owner, name=name, description=description.strip())


def subscription_create(*, application: Application, plan: BusinessPlan) -> Subscription:
    """Subscribe ``application`` to ``plan.api`` under ``plan``.

    The subscription is ``active`` at once unless the plan requires approval, then ``pending``
    until an admin calls ``subscription_approve``.

    Raises ``ValidationError`` (field ``plan``) if the API is not published, the plan is not
    approved, or the application already has a pending or active subscription to the API.
    """
    api = plan.api
    if not API.objects.published().filter(pk=api.pk).exists():
        raise ValidationError({"plan": f"{api.name} is not published."})
    if not plan.is_approved:
        raise ValidationError({"plan": f"The plan “{plan.name}” is not available yet."})
    status = Subscription.Status.PENDING if plan.requires_approval else Subscription.Status.ACTIVE
    try:
        with transaction.atomic():
            return Subscription.objects.create(application=application, api=api, plan=plan, status=status)
    except IntegrityError:
        raise ValidationError(
            {"plan": f"{application.name} already has a subscription to {api.name}."}
        ) from None


def _subscription_decide(*, subscription: Subscription, approver: User, status: str) -> Subscription:
    # A conditional update, so two admins deciding at once cannot both win.
    updated = Subscription.objects.filter(pk=subscription.pk, status=Subscription.Status.PENDING).update(
        status=status, decided_by=approver, decided_at=timezone.now()
    )
    if not updated:
        raise ValidationError("This subscription is no longer pending.")
    subscription.refresh_from_db()
    return subscription


def subscription_approve(*, subscription: Subscription, approver: User) -> Subscription:
    """Make a pending subscription active. Raises ``ValidationError`` if it is not pending."""
    return _subscription_decide(
        subscription=subscription, approver=approver, status=Subscription.Status.ACTIVE
    )


def subscription_reject(*, subscription: Subscription, approver: User) -> Subscription:
    """Reject a pending subscription. Raises ``ValidationError`` if it is not pending."""
    return _subscription_decide(
        subscription=subscription, approver=approver, status=Subscription.Status.REJECTED
    )


def plan_create(*, api: API, name: str, **fields: object) -> BusinessPlan:
    """Add a business plan to ``api``; it is offered only after an admin approves it.

    ``fields`` are ``BusinessPlan`` fields (prices in minor units). Raises ``ValidationError``
    (field ``name``) when the API already has a plan of that name.
    """
    name = name.strip()
    if api.plans.filter(name=name).exists():
        raise ValidationError({"name": f"{api.name} already has a plan called “{name}”."})
    return BusinessPlan.objects.create(api=api, name=name, is_approved=False, **fields)


def plan_approve(*, plan: BusinessPlan, approver: User) -> BusinessPlan:
    """Offer a business plan to consumers (admins only; the view checks ``is_staff``)."""
    BusinessPlan.objects.filter(pk=plan.pk).update(is_approved=True)
    plan.refresh_from_db()
    return plan


def api_key_create(*, application: Application, name: str = "default") -> tuple[APIKey, str]:
    """Generate an API key for ``application``; returns ``(key, secret)``.

    The secret is shown to the consumer once and never stored (only its SHA-256).
    """
    return APIKey.generate(application=application, name=name or "default")


def api_key_revoke(*, key: APIKey) -> APIKey:
    """Revoke ``key``: handshakes with it are refused from now on, and once the revocation
    commits, every gateway process closes the key's open connections (close code 4401)."""
    APIKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    transaction.on_commit(lambda: api_key_revoked_notify(key_id=key.pk))
    key.refresh_from_db()
    return key
