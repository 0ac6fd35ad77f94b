"""Django admin for webhook subscriptions and their deliveries.

Read-only views for support, plus actions that go through ``gateway.webhooks.services``: delete
a webhook (stops its deliveries, erases its secret), verify it again, redeliver deliveries. The
secret is never shown.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from gateway.models import WebhookDelivery, WebhookSubscription
from gateway.webhooks.services import delivery_redeliver, webhook_delete, webhook_verify_again
from portal.forms import service_error_text


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Rows change only through the services (actions), never through the change form."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "address",
        "callback_url",
        "status",
        "subscription",
        "created",
        "verified_at",
        "throttled_count",
    ]
    list_filter = ["status"]
    search_fields = ["address", "callback_url", "subscription__application__name"]
    list_select_related = ["subscription__application", "subscription__api", "subscription__plan"]
    exclude = ["secret"]
    actions = ["delete_webhooks", "verify_again"]

    @admin.action(description="Delete selected webhooks (stop deliveries)")
    def delete_webhooks(self, request: HttpRequest, queryset: QuerySet[WebhookSubscription]) -> None:
        for webhook in queryset:
            webhook_delete(webhook=webhook)
        self.message_user(request, f"Deleted {queryset.count()} webhook(s).")

    @admin.action(description="Verify selected webhooks again")
    def verify_again(self, request: HttpRequest, queryset: QuerySet[WebhookSubscription]) -> None:
        for webhook in queryset:
            try:
                webhook_verify_again(webhook=webhook)
            except ValidationError as error:
                text = f"Webhook {webhook.pk}: {service_error_text(error)}"
                self.message_user(request, text, messages.ERROR)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["id", "event_id", "webhook", "status", "attempts", "last_status_code", "created"]
    list_filter = ["status"]
    search_fields = ["event_id", "=id"]
    list_select_related = ["webhook"]
    actions = ["redeliver"]

    @admin.action(description="Redeliver selected deliveries")
    def redeliver(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        for delivery in queryset:
            try:
                delivery_redeliver(delivery=delivery)
            except ValidationError as error:
                text = f"{delivery.event_id}: {service_error_text(error)}"
                self.message_user(request, text, messages.ERROR)
