"""Django admin for the portal's models.

An API's and a version's lifecycle state is read-only here: moves go through the admin actions,
which call ``portal.services.lifecycle`` so the rules hold, the move is recorded and the gateway
closes live connections.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from portal.forms import service_error_text
from portal.models import (
    API,
    APIKey,
    APILifecycleEvent,
    APIVersion,
    Application,
    BusinessPlan,
    Channel,
    Operation,
    Subscription,
    User,
)
from portal.plans import plan_fields_validate
from portal.services.lifecycle import api_block_details, api_transition
from portal.services.subscriptions import (
    plan_approve,
    subscription_plan_change,
    subscription_reinstate,
    subscription_suspend,
)


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "is_provider", "is_staff", "is_active"]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Roles", {"fields": ("is_provider", "is_staff", "is_superuser", "is_active")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


def _admin_move(modeladmin: admin.ModelAdmin[API], request: HttpRequest, api: API, to_status: str) -> None:
    """Move ``api`` through the lifecycle service (as the signed-in admin) and report the outcome."""
    try:
        api_transition(api=api, to_status=to_status, actor=request.user, reason="Django admin")
    except (ValidationError, PermissionDenied) as error:
        modeladmin.message_user(request, f"{api.name}: {service_error_text(error)}", messages.ERROR)
    else:
        modeladmin.message_user(request, f"{api.name} is now {api.get_status_display().lower()}.")


def _move_action(to_status: str, label: str):  # type: ignore[no-untyped-def]
    @admin.action(description=f"{label} selected APIs")
    def action(modeladmin: admin.ModelAdmin[API], request: HttpRequest, queryset: QuerySet[API]) -> None:
        for api in queryset:
            _admin_move(modeladmin, request, api, to_status)

    action.__name__ = f"move_to_{to_status}"
    return action


@admin.action(description="Unblock selected APIs (back to their state before the block)")
def unblock(modeladmin: admin.ModelAdmin[API], request: HttpRequest, queryset: QuerySet[API]) -> None:
    for api in queryset:
        block = api_block_details(api=api)
        if block is None:
            modeladmin.message_user(request, f"{api.name} is not blocked.", messages.WARNING)
            continue
        _admin_move(modeladmin, request, api, block.restores)


class LifecycleEventInline(admin.TabularInline):
    model = APILifecycleEvent
    fk_name = "api"
    extra = 0
    can_delete = False
    readonly_fields = ["at", "api_version", "from_status", "to_status", "actor", "reason"]


@admin.register(API)
class APIAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "provider", "status", "status_changed_at"]
    list_filter = ["status"]
    search_fields = ["name", "slug", "provider__email"]
    readonly_fields = ["status", "status_changed_at"]
    inlines = [LifecycleEventInline]
    actions = [
        _move_action(API.Status.BLOCKED, "Block"),
        _move_action(API.Status.PUBLISHED, "Publish"),
        unblock,
        _move_action(API.Status.DEPRECATED, "Deprecate"),
        _move_action(API.Status.RETIRED, "Retire"),
    ]


@admin.register(APIVersion)
class APIVersionAdmin(admin.ModelAdmin):
    list_display = ["api", "version", "asyncapi_version", "status", "created"]
    list_filter = ["status"]
    readonly_fields = ["status"]


@admin.register(APILifecycleEvent)
class APILifecycleEventAdmin(admin.ModelAdmin):
    list_display = ["at", "api", "api_version", "from_status", "to_status", "actor", "reason"]
    list_filter = ["to_status"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: APILifecycleEvent | None = None) -> bool:
        return False


# The plan fields portal.plans.plan_fields_validate judges.
PLAN_VALIDATED_FIELDS = frozenset(
    {
        "flat_fee_minor",
        "included_events",
        "price_per_1000_events_minor",
        "price_tiers",
        "included_bytes",
        "price_per_gb_minor",
        "billing_period",
        *BusinessPlan.POLICY_FIELDS,
    }
)


class BusinessPlanAdminForm(forms.ModelForm):
    """Refuses, as field errors, what ``portal.plans.plan_fields_validate`` refuses for the
    portal's plan form and the REST API (a burst without a rate, overage billing without a
    quota or its price, an overage price on a plan that stops at its quotas, malformed
    ``price_tiers`` — each fault named by its JSON pointer — or tiers beside a single price
    per 1,000 events). ``price_tiers`` is JSON; text that is not JSON is Django's field error."""

    def clean_price_tiers(self) -> Any:
        # An emptied box means no tiers (the column holds [], never NULL).
        tiers = self.cleaned_data.get("price_tiers")
        return [] if tiers is None else tiers

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:  # a field's own error first (a missing rate would read as a burst's fault)
            return data
        fields = {name: data[name] for name in data if name in PLAN_VALIDATED_FIELDS}
        try:
            plan_fields_validate(fields)
        except ValidationError as error:
            for name, errors in error.message_dict.items():
                self.add_error(name if name in self.fields else None, errors)
        return data


@admin.action(description="Approve selected plans (offer them to consumers)")
def plans_approve(
    modeladmin: admin.ModelAdmin[BusinessPlan], request: HttpRequest, queryset: QuerySet[BusinessPlan]
) -> None:
    for plan in queryset.select_related("api"):
        try:
            plan_approve(plan=plan, approver=request.user, reason="")
        except (ValidationError, PermissionDenied) as error:
            modeladmin.message_user(request, f"{plan}: {service_error_text(error)}", messages.ERROR)
        else:
            modeladmin.message_user(request, f"{plan} is approved: consumers can pick it.")


@admin.register(BusinessPlan)
class BusinessPlanAdmin(admin.ModelAdmin):
    """Every field of a plan, its throttling policy grouped as the provider's form groups it;
    the same coherence rules (``BusinessPlanAdminForm``). Approving through the action records
    who decided and when (``plan_approve``); rejecting, with the reason the provider reads, is
    on the portal's approvals page."""

    form = BusinessPlanAdminForm
    list_display = [
        "name",
        "api",
        "is_approved",
        "rejected_at",
        "rate_limit_events",
        "rate_limit_unit",
        "quota_events",
        "quota_action",
        "billing_period",
    ]
    list_filter = ["is_approved", "billing_period", "quota_action", "limit_notice", "counted_directions"]
    search_fields = ["name", "api__name", "api__slug"]
    list_select_related = ["api"]
    actions = [plans_approve]
    readonly_fields = ["decided_at", "decided_by", "rejected_at"]
    fieldsets = (
        (None, {"fields": ("api", "name", "description", "requires_approval")}),
        (
            "Approval",
            {"fields": ("is_approved", "rejected_at", "decided_at", "decided_by", "decision_reason")},
        ),
        (
            "Price",
            {
                "fields": (
                    ("currency", "billing_period"),
                    "flat_fee_minor",
                    "included_events",
                    "price_per_1000_events_minor",
                    "price_tiers",
                ),
                "description": "Amounts in minor units (cents) of the currency, per billing period. "
                "Graduated tiers replace the single price per 1,000 events: leave that at 0 when "
                "setting them.",
            },
        ),
        (
            "Bandwidth",
            {"fields": ("included_bytes", "price_per_gb_minor")},
        ),
        (
            "Rate limit and quotas",
            {
                "fields": (
                    ("rate_limit_events", "rate_limit_unit"),
                    "burst_events",
                    "quota_events",
                    "quota_bytes",
                    "counted_directions",
                )
            },
        ),
        (
            "Connections and webhooks",
            {
                "fields": (
                    "max_connections",
                    "max_connections_per_application",
                    "max_connection_seconds",
                    "max_webhook_subscriptions",
                )
            },
        ),
        (
            "At a limit",
            {
                "fields": (
                    "quota_action",
                    "limit_notice",
                    "overage_price_per_1000_events_minor",
                    "overage_price_per_gb_minor",
                )
            },
        ),
    )


admin.site.register([Channel, Operation, Application])


@admin.action(description="Suspend selected subscriptions (closes their live connections)")
def suspend(
    modeladmin: admin.ModelAdmin[Subscription], request: HttpRequest, queryset: QuerySet[Subscription]
) -> None:
    for subscription in queryset:
        try:
            subscription_suspend(subscription=subscription, by=request.user, reason="Suspended by an admin.")
        except (ValidationError, PermissionDenied) as error:
            modeladmin.message_user(request, f"{subscription}: {service_error_text(error)}", messages.ERROR)
        else:
            modeladmin.message_user(request, f"{subscription} is suspended.")


@admin.action(description="Reinstate selected suspended subscriptions")
def reinstate(
    modeladmin: admin.ModelAdmin[Subscription], request: HttpRequest, queryset: QuerySet[Subscription]
) -> None:
    for subscription in queryset:
        try:
            subscription_reinstate(subscription=subscription, by=request.user)
        except (ValidationError, PermissionDenied) as error:
            modeladmin.message_user(request, f"{subscription}: {service_error_text(error)}", messages.ERROR)
        else:
            modeladmin.message_user(request, f"{subscription} is active again.")


class SubscriptionAdminForm(forms.ModelForm):
    """Refuses, as field errors, the plans ``subscription_plan_change`` would refuse for any
    admin: another API's plan, or one not approved (so the page never reports a change that
    did not happen)."""

    def clean_plan(self) -> BusinessPlan:
        plan = self.cleaned_data["plan"]
        subscription = self.instance
        if subscription.pk and plan.pk != subscription.plan_id:
            if plan.api_id != subscription.api_id:
                raise forms.ValidationError(
                    f"{plan.name} is a plan of another API than {subscription.api.name}."
                )
            if not plan.is_approved:
                raise forms.ValidationError("This plan is not approved, so it cannot be offered.")
        return plan


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    """Suspension through the actions (``subscription_suspend``/``_reinstate``); a plan changed
    in the form goes through ``subscription_plan_change`` (same API, offered plans; live
    connections close with 4409)."""

    form = SubscriptionAdminForm
    list_display = ["application", "owner", "api", "plan", "status", "created"]
    list_select_related = ["application__owner", "api", "plan"]
    list_filter = ["status"]
    actions = [suspend, reinstate]

    @admin.display(description="Owner", ordering="application__owner__email")
    def owner(self, subscription: Subscription) -> str:
        return subscription.application.owner.email

    def save_model(self, request: HttpRequest, obj: Subscription, form: Any, change: bool) -> None:
        if not (change and "plan" in form.changed_data):
            super().save_model(request, obj, form, change)
            return
        new_plan, obj.plan_id = obj.plan, form.initial["plan"]
        super().save_model(request, obj, form, change)  # the other fields, on the old plan
        try:
            subscription_plan_change(subscription=obj, plan=new_plan, by=request.user)
        except (ValidationError, PermissionDenied) as error:
            self.message_user(request, f"Plan not changed: {service_error_text(error)}", messages.ERROR)


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix", "application", "created", "expires_at", "revoked_at"]
    readonly_fields = ["prefix", "key_hash"]
