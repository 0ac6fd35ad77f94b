from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from portal.models import (
    API,
    APIKey,
    APIVersion,
    Application,
    BusinessPlan,
    Channel,
    Operation,
    Subscription,
    User,
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


admin.site.register([API, APIVersion, Channel, Operation, BusinessPlan, Application, Subscription])


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix", "application", "created", "expires_at", "revoked_at"]
    readonly_fields = ["prefix", "key_hash"]
