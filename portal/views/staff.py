"""The admins' pages: the approval queue (pending subscriptions and business plans, approve or
reject with a reason the requester sees) and the lifecycle of any provider's API (block, unblock,
retire)."""

from __future__ import annotations

import functools

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from portal.forms import ReasonForm, service_error_text
from portal.models import API, APIVersion, BusinessPlan, Subscription
from portal.services.lifecycle import api_transition
from portal.services.subscriptions import plan_approve, plan_reject, subscription_approve, subscription_reject
from portal.views.decorators import staff_required
from portal.views.provider import api_moves, lifecycle_move_posted


def _get_subscription_for_staff(pk: int) -> Subscription:
    """Any subscription (admins see all of them), or 404."""
    return get_object_or_404(Subscription.objects.select_related("application", "api", "plan"), pk=pk)


def _get_plan_for_staff(pk: int) -> BusinessPlan:
    """Any business plan, or 404."""
    return get_object_or_404(BusinessPlan.objects.select_related("api"), pk=pk)


def _get_api_for_staff(slug: str) -> API:
    """Any API, or 404."""
    return get_object_or_404(API, slug=slug)


def _approvals_page(
    request: HttpRequest, *, error_for: tuple[str, int] | None = None, form: ReasonForm | None = None
) -> HttpResponse:
    subscriptions = (
        Subscription.objects.pending().select_related("application__owner", "api", "plan").order_by("created")
    )
    plans = (
        BusinessPlan.objects.filter(is_approved=False, rejected_at__isnull=True)
        .exclude(api__status=API.Status.RETIRED)  # a retired API's plans can no longer be offered
        .select_related("api__provider")
        .order_by("api__name", "name")
    )
    context = {"subscriptions": subscriptions, "plans": plans, "error_for": error_for, "reject_form": form}
    return render(request, "portal/staff/approvals.html", context, status=400 if form else 200)


@staff_required
def approvals(request: HttpRequest) -> HttpResponse:
    """Pending subscriptions and plans awaiting approval, each with approve and reject (reason)."""
    return _approvals_page(request)


def _decide(request: HttpRequest, *, kind: str, pk: int, decision: str) -> HttpResponse:
    """Approve or reject a subscription or plan; a rejection without a reason re-renders the
    queue with the error next to that row (status 400) and changes nothing."""
    target = _get_subscription_for_staff(pk) if kind == "subscription" else _get_plan_for_staff(pk)
    form = ReasonForm(request.POST, required=decision == "reject")
    if not form.is_valid():
        return _approvals_page(request, error_for=(kind, pk), form=form)
    reason = form.cleaned_data["reason"]
    try:
        if kind == "subscription":
            assert isinstance(target, Subscription)
            if decision == "approve":
                subscription_approve(subscription=target, approver=request.user, reason=reason)
            else:
                subscription_reject(subscription=target, approver=request.user, reason=reason)
            what = f"{target.application.name}'s subscription to {target.api.name}"
        else:
            assert isinstance(target, BusinessPlan)
            if decision == "approve":
                plan_approve(plan=target, approver=request.user, reason=reason)
            else:
                plan_reject(plan=target, approver=request.user, reason=reason)
            what = f"the plan {target.name} of {target.api.name}"
    except (ValidationError, PermissionDenied) as error:
        messages.error(request, service_error_text(error))
    else:
        if decision == "approve":
            tail = "; consumers can pick it now." if kind == "plan" else "."
            messages.success(request, f"Approved {what}{tail}")
        else:
            messages.success(request, f"Rejected {what}; the requester sees your reason.")
    return redirect("portal:approvals")


@staff_required
@require_POST
def subscription_decide(request: HttpRequest, pk: int, decision: str) -> HttpResponse:
    """POST (staff): approve or reject a pending subscription (``decision``: ``approve`` or
    ``reject``; ``reason`` is required to reject and shown to the consumer)."""
    return _decide(request, kind="subscription", pk=pk, decision=decision)


@staff_required
@require_POST
def plan_decide(request: HttpRequest, pk: int, decision: str) -> HttpResponse:
    """POST (staff): approve or reject a business plan (``reason`` required to reject, shown to
    the provider)."""
    return _decide(request, kind="plan", pk=pk, decision=decision)


@staff_required
def staff_api_list(request: HttpRequest) -> HttpResponse:
    """Every provider's APIs that are not drafts, with the lifecycle moves an admin may make."""
    apis = (
        API.objects.exclude(status=API.Status.DRAFT)
        .select_related("provider")
        .prefetch_related("versions")
        .order_by("name")
    )
    rows = [
        (
            api,
            api_moves(api, user=request.user),  # type: ignore[arg-type]
            [v for v in api.versions.all() if v.status in APIVersion.LIVE_STATUSES],
        )
        for api in apis
    ]
    return render(request, "portal/staff/api_list.html", {"rows": rows})


@staff_required
@require_POST
def staff_api_lifecycle(request: HttpRequest, slug: str) -> HttpResponse:
    """POST (staff) ``to_status`` and an optional ``reason``: move any API (e.g. block it)."""
    api = _get_api_for_staff(slug)
    lifecycle_move_posted(request, what=api.name, move=functools.partial(api_transition, api=api))
    return redirect("portal:staff_api_list")
