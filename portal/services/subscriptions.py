"""Applications, subscriptions, business plans, approvals (with reasons the requester sees) and API keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError, QuerySet
from django.utils import timezone

from portal.models import API, Application, BusinessPlan, Subscription, User
from portal.plans import plan_fields_validate

# What plan_create accepts besides the name: the plan's own terms, never its approval state.
PLAN_FIELDS = frozenset(
    {
        "description",
        "requires_approval",
        "currency",
        "flat_fee_minor",
        "included_events",
        "price_per_1000_events_minor",
        "price_tiers",
        "included_bytes",
        "price_per_gb_minor",
        "billing_period",
        *BusinessPlan.POLICY_FIELDS,  # the throttling policy (docs/throttling.md)
    }
)


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


# Checks other apps add to subscribing (billing: a payment method for paid plans, registered in
# billing.apps). Each is called as ``check(application=..., plan=...)`` before the new subscription
# commits and raises ``ValidationError`` to refuse it; portal imports none of them (DESIGN.md).
subscription_checks: list[Callable[..., None]] = []


def subscription_create(*, application: Application, plan: BusinessPlan) -> Subscription:
    """Subscribe ``application`` to ``plan.api`` under ``plan``.

    The subscription is ``active`` at once unless the plan requires approval, then ``pending``
    until an admin calls ``subscription_approve``.

    Raises ``ValidationError`` (field ``plan``) if the API is not published, the plan is not
    approved, a ``subscription_checks`` entry refuses (e.g. a paid plan without a payment method),
    or the application already has a pending or active subscription to the API. An
    unlisted API (draft, retired) or unapproved plan reads "This plan is not available.": a plan
    id must not reveal the name of an API or plan that its provider has not released. A listed
    API that is deprecated or blocked says so by name.
    """
    api = plan.api
    if not plan.is_approved or not API.objects.listed().filter(pk=api.pk).exists():
        raise ValidationError({"plan": "This plan is not available."})
    if not API.objects.published().filter(pk=api.pk).exists():
        # Listed, so naming it reveals nothing: say why, as the catalog page does.
        raise ValidationError({"plan": _closed_to_subscriptions(api)})
    status = Subscription.Status.PENDING if plan.requires_approval else Subscription.Status.ACTIVE
    try:
        with transaction.atomic():
            subscription = Subscription.objects.create(
                application=application, api=api, plan=plan, status=status
            )
            # After the insert, so "already has a subscription" is what a duplicate hears; a refusal
            # rolls the insert back.
            for check in subscription_checks:
                check(application=application, plan=plan)
            return subscription
    except IntegrityError:
        raise ValidationError(
            {"plan": f"{application.name} already has a subscription to {api.name}."}
        ) from None


def _closed_to_subscriptions(api: API) -> str:
    if api.status == API.Status.DEPRECATED:
        return f"{api.name} is deprecated and accepts no new subscriptions."
    if api.status == API.Status.BLOCKED:
        return f"{api.name} is blocked and accepts no new subscriptions."
    if api.status == API.Status.DRAFT:
        return f"{api.name} is not published yet and accepts no subscriptions."
    return f"{api.name} has no published version open to new subscriptions; its versions are deprecated."


def _check_staff(approver: User) -> None:
    if not (approver.is_active and approver.is_staff):
        raise PermissionDenied("Only platform admins approve or reject plans and subscriptions.")


def _reason_required(reason: str, what: str) -> str:
    reason = reason.strip()
    if not reason:
        raise ValidationError({"reason": f"Say why you reject {what}: the requester sees your reason."})
    return reason


def _subscription_decide(
    *, subscription: Subscription, approver: User, status: str, reason: str
) -> Subscription:
    _check_staff(approver)
    # A conditional update, so two admins deciding at once cannot both win. A pending
    # subscription has no live connections, so the gateway needs no signal from save().
    now = timezone.now()
    # The lifecycle stamps Subscription.save() keeps, which an update() bypasses.
    stamp = {"activated_at": now} if status == Subscription.Status.ACTIVE else {"ended_at": now}
    updated = Subscription.objects.filter(pk=subscription.pk, status=Subscription.Status.PENDING).update(
        status=status, decided_by=approver, decided_at=now, decision_reason=reason, **stamp
    )
    if not updated:
        raise ValidationError("This subscription is no longer pending.")
    subscription.refresh_from_db()
    return subscription


def subscription_approve(*, subscription: Subscription, approver: User, reason: str = "") -> Subscription:
    """Make a pending subscription active; ``reason`` (optional) is shown to the consumer.

    Only while the API is published: a deprecated, blocked or retired API accepts no new
    subscriptions (``subscription_create``'s rule), and approving is when one starts. Raises
    ``PermissionDenied`` if ``approver`` is not staff, ``ValidationError`` if the API is not
    published (naming its state) or the subscription is not pending (also when another admin
    decided first).
    """
    _check_staff(approver)
    with transaction.atomic():
        # Lock the API: retiring it ends its pending subscriptions under the same lock, so an
        # approval cannot slip in between.
        api = API.objects.select_for_update().get(pk=subscription.api_id)
        if api.status != API.Status.PUBLISHED:
            raise ValidationError(
                f"{_closed_to_subscriptions(api)} Reject this subscription with a reason instead, "
                "or approve it once the API is published again."
                if api.status != API.Status.RETIRED
                else f"{api.name} is retired; its subscriptions can no longer be approved."
            )
        return _subscription_decide(
            subscription=subscription,
            approver=approver,
            status=Subscription.Status.ACTIVE,
            reason=reason.strip(),
        )


def subscription_reject(*, subscription: Subscription, approver: User, reason: str) -> Subscription:
    """Reject a pending subscription; ``reason`` is required and shown to the consumer.

    Raises ``ValidationError`` (field ``reason``) for an empty reason, ``ValidationError`` if it
    is not pending, ``PermissionDenied`` if ``approver`` is not staff.
    """
    _check_staff(approver)
    reason = _reason_required(reason, "this subscription")
    return _subscription_decide(
        subscription=subscription, approver=approver, status=Subscription.Status.REJECTED, reason=reason
    )


def subscription_cancel(*, subscription: Subscription, actor: User) -> Subscription:
    """Cancel a pending, active or suspended subscription (its application's owner, or an admin).

    Saved with ``save()``: once it commits, ``gateway.signals`` closes its live connections
    (close code 4403). The application can subscribe to the API again afterwards. Raises
    ``PermissionDenied`` for anyone else, ``ValidationError`` if it is already rejected or
    cancelled.
    """
    if not (actor.is_staff or subscription.application.owner_id == actor.pk):
        raise PermissionDenied("Only the application's owner or an admin can cancel its subscription.")
    with transaction.atomic():
        locked = Subscription.objects.select_for_update().get(pk=subscription.pk)
        cancellable = (Subscription.Status.PENDING, Subscription.Status.ACTIVE, Subscription.Status.SUSPENDED)
        if locked.status not in cancellable:
            raise ValidationError(f"This subscription is already {locked.get_status_display().lower()}.")
        locked.status = Subscription.Status.CANCELLED
        locked.decided_at = timezone.now()
        locked.save(update_fields=["status", "decided_at"])
    subscription.refresh_from_db()
    return subscription


def application_update(*, application: Application, name: str, description: str) -> Application:
    """Rename ``application`` and change its description.

    Raises ``ValidationError`` (field ``name``) for an empty name or one the owner already uses
    for another application (also when a concurrent request took it: ``unique_application_name``).
    """
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Give the application a name."})
    duplicate = ValidationError({"name": f"You already have an application called “{name}”."})
    others = Application.objects.filter(owner_id=application.owner_id, name=name).exclude(pk=application.pk)
    if others.exists():
        raise duplicate
    application.name, application.description = name, description.strip()
    try:
        with transaction.atomic():
            application.save(update_fields=["name", "description"])
    except IntegrityError:
        application.refresh_from_db()
        raise duplicate from None
    return application


def application_delete(*, application: Application) -> None:
    """Delete ``application`` with its API keys and ended subscriptions.

    Raises ``ValidationError`` while it has a pending or active subscription (cancel those
    first, so nobody loses access by surprise), and when its subscriptions have been invoiced:
    invoices are the ledger and keep what they bill for.
    """
    live = application.subscriptions.filter(
        status__in=[Subscription.Status.PENDING, Subscription.Status.ACTIVE]
    ).select_related("api")
    if live:
        names = ", ".join(sorted(s.api.name for s in live))
        raise ValidationError(f"{application.name} still has subscriptions ({names}): cancel them first.")
    try:
        with transaction.atomic():
            application.delete()
    except ProtectedError:
        raise ValidationError(
            f"{application.name} has invoiced usage; it is kept with the invoices that bill for it."
        ) from None


def plan_create(*, api: API, name: str, price_model: str | None = None, **fields: Any) -> BusinessPlan:
    """Add a business plan to ``api``; it is offered only after an admin approves it.

    ``fields`` are ``BusinessPlan`` fields (prices in minor units, limits in events and bytes,
    None for unlimited); ``price_model`` (``portal.plans.PriceModel``), when given, must agree
    with the amounts. Raises ``ValidationError`` with a field dict: ``name`` when empty or the
    API already has a plan of that name in any letter case (``free`` and ``FREE`` would read as
    one plan to consumers; also when a concurrent request created it after the check:
    ``unique_plan_name_ci``), and the fields
    ``portal.plans.plan_fields_validate`` names; ``name`` also when the API is retired.
    """
    if api.status == API.Status.RETIRED:
        raise ValidationError({"name": f"{api.name} is retired: it takes no new plans."})
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Give the plan a name."})
    unknown = set(fields) - PLAN_FIELDS
    if unknown:
        raise ValidationError({field: "Not a field of a business plan." for field in sorted(unknown)})
    plan_fields_validate(fields, price_model=price_model)
    same_name = api.plans.filter(name__iexact=name)
    if same_name.exists():
        raise _plan_name_taken(api, same_name, name)
    try:
        # A savepoint, so a caller's transaction stays usable after the duplicate is refused.
        with transaction.atomic():
            return BusinessPlan.objects.create(api=api, name=name, is_approved=False, **fields)
    except IntegrityError:
        if same_name.exists():
            raise _plan_name_taken(api, same_name, name) from None
        raise  # another constraint (a negative price from a direct call) is a bug, not a duplicate


def _plan_name_taken(api: API, same_name: QuerySet[BusinessPlan], name: str) -> ValidationError:
    existing = same_name.values_list("name", flat=True).first() or name
    return ValidationError({"name": f"{api.name} already has a plan called “{existing}”."})


def _plan_decide(*, plan: BusinessPlan, approver: User, approve: bool, reason: str) -> BusinessPlan:
    now = timezone.now()
    changes: dict[str, Any] = {"decided_at": now, "decided_by": approver, "decision_reason": reason}
    changes.update({"is_approved": True} if approve else {"rejected_at": now})
    # Conditional: only a plan still awaiting a decision changes, so two admins cannot both win.
    updated = BusinessPlan.objects.filter(pk=plan.pk, is_approved=False, rejected_at__isnull=True).update(
        **changes
    )
    if not updated:
        raise ValidationError(f"The plan {plan.name} is no longer awaiting approval.")
    plan.refresh_from_db()
    return plan


def plan_approve(*, plan: BusinessPlan, approver: User, reason: str = "") -> BusinessPlan:
    """Offer a pending business plan to consumers; ``reason`` (optional) is shown to the provider.

    Raises ``PermissionDenied`` if ``approver`` is not staff, ``ValidationError`` if the plan's
    API is retired (it takes no subscriptions ever again) or the plan was already approved or
    rejected. Plans of deprecated or blocked APIs may be approved: those states are reversible.
    """
    _check_staff(approver)
    with transaction.atomic():
        api = API.objects.select_for_update().get(pk=plan.api_id)
        if api.status == API.Status.RETIRED:
            raise ValidationError(f"{api.name} is retired; its plans can no longer be offered.")
        return _plan_decide(plan=plan, approver=approver, approve=True, reason=reason.strip())


def plan_reject(*, plan: BusinessPlan, approver: User, reason: str) -> BusinessPlan:
    """Refuse a pending business plan; consumers never see it, its provider sees ``reason``.

    Raises ``ValidationError`` (field ``reason``) for an empty reason, ``ValidationError`` if
    the plan was already decided, ``PermissionDenied`` if ``approver`` is not staff.
    """
    _check_staff(approver)
    reason = _reason_required(reason, f"the plan {plan.name}")
    return _plan_decide(plan=plan, approver=approver, approve=False, reason=reason)


# --- Suspension and plan changes (live connections: gateway.signals closes them on save) -------


def subscription_suspend(*, subscription: Subscription, by: User | None, reason: str) -> Subscription:
    """Pause an active subscription: handshakes are refused (4403) and, once this commits, every
    gateway process closes its live connections with 4403 and the reason "Subscription
    suspended." (``gateway.signals`` on save). ``reason`` is required and shown to the consumer.

    ``by``: a platform admin, or None for the system (e.g. billing's dunning). Raises
    ``PermissionDenied`` for anyone else, ``ValidationError`` (field ``reason``) for an empty
    reason, ``ValidationError`` if the subscription is not active.
    """
    if by is not None:
        _check_staff(by)
    reason = _reason_required(reason, "this subscription")
    with transaction.atomic():
        locked = Subscription.objects.select_for_update().get(pk=subscription.pk)
        if locked.status != Subscription.Status.ACTIVE:
            state = locked.get_status_display().lower()
            raise ValidationError(f"Only active subscriptions can be suspended; this one is {state}.")
        locked.status = Subscription.Status.SUSPENDED
        locked.decided_by, locked.decided_at, locked.decision_reason = by, timezone.now(), reason
        locked.save(update_fields=["status", "decided_by", "decided_at", "decision_reason"])
    subscription.refresh_from_db()
    return subscription


def subscription_reinstate(*, subscription: Subscription, by: User | None, reason: str = "") -> Subscription:
    """Make a suspended subscription active again (its clients reconnect; nothing is replayed).

    ``by``: a platform admin, or None for the system. Raises ``PermissionDenied`` for anyone
    else, ``ValidationError`` if it is not suspended or its API is retired.
    """
    if by is not None:
        _check_staff(by)
    with transaction.atomic():
        locked = Subscription.objects.select_for_update().select_related("api").get(pk=subscription.pk)
        if locked.status != Subscription.Status.SUSPENDED:
            state = locked.get_status_display().lower()
            raise ValidationError(f"This subscription is {state}, not suspended.")
        if locked.api.status == API.Status.RETIRED:
            raise ValidationError(f"{locked.api.name} is retired; its subscriptions cannot be reinstated.")
        locked.status = Subscription.Status.ACTIVE
        locked.decided_by, locked.decided_at, locked.decision_reason = by, timezone.now(), reason.strip()
        locked.save(update_fields=["status", "decided_by", "decided_at", "decision_reason"])
    subscription.refresh_from_db()
    return subscription


def subscription_plan_change(*, subscription: Subscription, plan: BusinessPlan, by: User) -> Subscription:
    """Move an active or suspended subscription to another business plan of the same API.

    Once this commits, every gateway process closes the subscription's live connections with
    4409 ("reconnect to continue under the new plan"), so limits and prices of the new plan apply
    from the next connection (``gateway.signals`` sees the plan change on save).

    ``by``: the application's owner or a platform admin. The plan must be one consumers can
    pick (approved); a plan that requires approval can only be given by an admin (the owner
    asks one). Raises ``PermissionDenied`` for anyone else; ``ValidationError`` (field
    ``plan``) for a plan of another API, one not offered, the current plan, or an approval plan
    chosen by a non-admin, or a ``subscription_checks`` refusal of a non-admin's move (a paid
    plan without a payment method); ``ValidationError`` if the subscription is pending or
    ended, or its API is not published or deprecated.
    """
    if not (by.is_active and (by.is_staff or subscription.application.owner_id == by.pk)):
        raise PermissionDenied("Only the application's owner or an admin can change its plan.")
    with transaction.atomic():
        locked = Subscription.objects.select_for_update().select_related("api").get(pk=subscription.pk)
        if plan.api_id != locked.api_id:
            raise ValidationError({"plan": f"{plan.name} is a plan of another API than {locked.api.name}."})
        if not plan.is_approved:
            raise ValidationError({"plan": "This plan is not available."})
        if plan.pk == locked.plan_id:
            raise ValidationError({"plan": f"The subscription is already on the plan {plan.name}."})
        if plan.requires_approval and not by.is_staff:
            raise ValidationError(
                {"plan": f"The plan {plan.name} requires an admin's approval: ask an admin to move you."}
            )
        if locked.status not in (Subscription.Status.ACTIVE, Subscription.Status.SUSPENDED):
            raise ValidationError(
                f"A {locked.get_status_display().lower()} subscription's plan cannot be changed."
            )
        if locked.api.status not in (API.Status.PUBLISHED, API.Status.DEPRECATED):
            state = locked.api.get_status_display().lower()
            raise ValidationError(f"{locked.api.name} is {state}: its subscriptions' plans cannot change.")
        if not by.is_staff:
            # The consumer's own move (to a paid plan, say) passes the same checks as subscribing;
            # an admin's move is the admin's decision.
            for check in subscription_checks:
                check(application=locked.application, plan=plan)
        locked.plan = plan
        locked.save(update_fields=["plan"])
    subscription.refresh_from_db()
    return subscription
