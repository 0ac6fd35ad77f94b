"""The approval queue, for platform admins: business plans and subscriptions awaiting a
decision, and approving or rejecting them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from portal.api.common import IsStaff, V1View, get_plan_for_admin, get_subscription_for_user, service_errors
from portal.models import API, BusinessPlan, Subscription
from portal.serializers import (
    ApprovalQueueSerializer,
    BusinessPlanOwnerSerializer,
    DecisionSerializer,
    RejectionSerializer,
    SubscriptionSerializer,
)
from portal.services.subscriptions import plan_approve, plan_reject, subscription_approve, subscription_reject


class ApprovalListView(V1View):
    permission_classes = [IsStaff]

    @extend_schema(responses=ApprovalQueueSerializer, summary="Plans and subscriptions awaiting an admin")
    def get(self, request: Request) -> Response:
        plans = (
            BusinessPlan.objects.filter(is_approved=False, rejected_at__isnull=True)
            .exclude(api__status=API.Status.RETIRED)  # a retired API's plans can no longer be offered
            .select_related("api__provider")
            .order_by("api__name", "name")
        )
        subscriptions = (
            Subscription.objects.pending()
            .select_related("application__owner", "api", "plan")
            .order_by("created")
        )
        return Response(ApprovalQueueSerializer({"plans": plans, "subscriptions": subscriptions}).data)


def _decide(
    request: Request,
    decision_class: type[serializers.Serializer],
    service: Callable[..., Any],
    **subject: Any,
) -> Any:
    """Validate the admin's decision (``{"reason"}``) with ``decision_class``, then call
    ``service(**subject, approver=<the admin>, reason=...)`` and return what it returns; its
    refusals answer 400/403 (``service_errors``)."""
    decision = decision_class(data=request.data)
    decision.is_valid(raise_exception=True)
    with service_errors():
        return service(**subject, approver=request.user, reason=decision.validated_data["reason"])


class PlanApproveView(V1View):
    permission_classes = [IsStaff]

    @extend_schema(
        request=DecisionSerializer, responses=BusinessPlanOwnerSerializer, summary="Offer a plan to consumers"
    )
    def post(self, request: Request, pk: int) -> Response:
        plan = _decide(request, DecisionSerializer, plan_approve, plan=get_plan_for_admin(request.user, pk))
        return Response(BusinessPlanOwnerSerializer(plan).data)


class PlanRejectView(V1View):
    permission_classes = [IsStaff]

    @extend_schema(
        request=RejectionSerializer,
        responses=BusinessPlanOwnerSerializer,
        summary="Refuse a plan, with a reason the provider sees",
    )
    def post(self, request: Request, pk: int) -> Response:
        plan = _decide(request, RejectionSerializer, plan_reject, plan=get_plan_for_admin(request.user, pk))
        return Response(BusinessPlanOwnerSerializer(plan).data)


class SubscriptionApproveView(V1View):
    permission_classes = [IsStaff]

    @extend_schema(
        request=DecisionSerializer, responses=SubscriptionSerializer, summary="Allow a pending subscription"
    )
    def post(self, request: Request, pk: int) -> Response:
        subscription = get_subscription_for_user(request.user, pk, as_admin=True)
        subscription = _decide(request, DecisionSerializer, subscription_approve, subscription=subscription)
        return Response(SubscriptionSerializer(subscription).data)


class SubscriptionRejectView(V1View):
    permission_classes = [IsStaff]

    @extend_schema(
        request=RejectionSerializer,
        responses=SubscriptionSerializer,
        summary="Refuse a pending subscription, with a reason the consumer sees",
    )
    def post(self, request: Request, pk: int) -> Response:
        subscription = get_subscription_for_user(request.user, pk, as_admin=True)
        subscription = _decide(request, RejectionSerializer, subscription_reject, subscription=subscription)
        return Response(SubscriptionSerializer(subscription).data)
