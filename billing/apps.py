from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Paid plans need a payment method or approved invoicing (billing.payments). Portal calls
        # the check without importing billing (DESIGN.md: portal depends on no other app).
        from billing.payments import require_payment_method
        from portal.services.subscriptions import subscription_checks

        if require_payment_method not in subscription_checks:
            subscription_checks.append(require_payment_method)
