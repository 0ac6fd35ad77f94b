"""The admins' approval queue: pending subscriptions and business plans awaiting approval."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from portal.models import BusinessPlan, Subscription
from portal.services.subscriptions import plan_approve, subscription_approve, subscription_reject
from portal.views.decorators import staff_required


def _get_subscription_for_staff(pk: int) -> Subscription:
    """Any subscription (admins see all of them), or 404."""
    return get_object_or_404(Subscription.objects.select_related("application", "api", "plan"), pk=pk)


def _get_plan_for_staff(pk: int) -> BusinessPlan:
    return get_object_or_404(BusinessPlan.objects.select_related("api"), pk=pk)


@staff_required
def approvals(request: HttpRequest) -> HttpResponse:
    subscriptions = (
        Subscription.objects.pending().select_related("application__owner", "api", "plan").order_by("created")
    )
    plans = (
        BusinessPlan.objects.filter(is_approved=False)
        .select_related("api__provider")
        .order_by("api__name", "name")
    )
    return render(request, "portal/staff/approvals.html", {"subscriptions": subscriptions, "plans": plans})


@staff_required
@require_POST
def subscription_decide(request: HttpRequest, pk: int, decision: str) -> HttpResponse:
    """Approve or reject a pending subscription (``decision`` is ``approve`` or ``reject``)."""
    subscription = _get_subscription_for_staff(pk)
    service = subscription_approve if decision == "approve" else subscription_reject
    try:
        service(subscription=subscription, approver=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        verb = "Approved" if decision == "approve" else "Rejected"
        messages.success(
            request, f"{verb} {subscription.application.name}'s subscription to {subscription.api.name}."
        )
    return redirect("portal:approvals")


@staff_required
@require_POST
def plan_approve_view(request: HttpRequest, pk: int) -> HttpResponse:
    """POST (staff): offer a business plan to consumers."""
    plan = _get_plan_for_staff(pk)
    plan_approve(plan=plan, approver=request.user)
    messages.success(request, f"Approved the plan {plan.name} of {plan.api.name}; consumers can pick it now.")
    return redirect("portal:approvals")
