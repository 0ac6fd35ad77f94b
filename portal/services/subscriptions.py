"""Applications, subscriptions, approvals and API keys."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from portal.models import API, APIKey, Application, BusinessPlan, Subscription, User


def application_create(*, owner: User, name: str, description: str = "") -> Application:
    """Create an application for ``owner``.

    Raises ``ValidationError`` (field ``name``) when the owner already has one of that name,
    also when a concurrent request created it after the check (``unique_application_name``).
    """
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Give the application a name."})
    same_name = Application.objects.filter(owner=owner, name=name)
    duplicate = ValidationError({"name": f"You already have an application called “{name}”."})
    if same_name.exists():
        raise duplicate
    try:
        # A savepoint, so a caller's transaction stays usable after the duplicate is refused.
        with transaction.atomic():
            return Application.objects.create(owner=owner, name=name, description=description.strip())
    except IntegrityError:
        if same_name.exists():
            raise duplicate from None
        raise


def subscription_create(*, application: Application, plan: BusinessPlan) -> Subscription:
    """Subscribe ``application`` to ``plan.api`` under ``plan``.

    The subscription is ``active`` at once unless the plan requires approval, then ``pending``
    until an admin calls ``subscription_approve``.

    Raises ``ValidationError`` (field ``plan``) if the API is not published, the plan is not
    approved, or the application already has a pending or active subscription to the API. The
    first two both read "This plan is not available.": a plan id must not reveal the name of an
    API or plan that its provider has not released.
    """
    api = plan.api
    if not plan.is_approved or not API.objects.published().filter(pk=api.pk).exists():
        raise ValidationError({"plan": "This plan is not available."})
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
    (field ``name``) when the API already has a plan of that name, also when a concurrent request
    created it after the check (``unique_plan_name``).
    """
    name = name.strip()
    same_name = api.plans.filter(name=name)
    duplicate = ValidationError({"name": f"{api.name} already has a plan called “{name}”."})
    if same_name.exists():
        raise duplicate
    try:
        # A savepoint, so a caller's transaction stays usable after the duplicate is refused.
        with transaction.atomic():
            return BusinessPlan.objects.create(api=api, name=name, is_approved=False, **fields)
    except IntegrityError:
        if same_name.exists():
            raise duplicate from None
        raise  # another constraint (a negative price from a direct call) is a bug, not a duplicate


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
    commits, every gateway process closes the key's open connections (close code 4401, through
    ``gateway.signals`` on save). Revoking twice keeps the first time."""
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key
