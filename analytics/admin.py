"""Analytics in the Django admin: read-only views of what the gateway recorded (the gateway and
Celery write these rows; editing one by hand would make the dashboards disagree with billing)."""

from __future__ import annotations

from django.contrib import admin

from analytics.models import (
    ConnectionRecord,
    HandshakeRecord,
    UsageDaily,
    UsageHourly,
    UsageRecord,
    WebhookRecord,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """List and look, never add, change or delete."""

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


@admin.register(UsageRecord, UsageHourly, UsageDaily)
class UsageAdmin(ReadOnlyAdmin):
    list_display = [
        "bucket_start",
        "subscription",
        "channel",
        "direction",
        "events",
        "bytes",
        "throttled_events",
    ]
    list_filter = ["direction"]
    raw_id_fields = ["subscription"]


@admin.register(ConnectionRecord)
class ConnectionRecordAdmin(ReadOnlyAdmin):
    list_display = [
        "closed_at",
        "subscription",
        "protocol",
        "channels",
        "duration_seconds",
        "close_code",
        "events_out",
    ]
    list_filter = ["protocol"]
    raw_id_fields = ["subscription", "application", "api"]


@admin.register(HandshakeRecord)
class HandshakeRecordAdmin(ReadOnlyAdmin):
    list_display = ["at", "outcome", "protocol", "api", "application", "channel", "client_ip"]
    list_filter = ["outcome", "protocol"]
    raw_id_fields = ["subscription", "application", "api"]


@admin.register(WebhookRecord)
class WebhookRecordAdmin(ReadOnlyAdmin):
    list_display = ["bucket_start", "subscription", "webhook_id", "channel", "attempts", "delivered", "dead"]
    raw_id_fields = ["subscription"]
