"""Template filters for billing pages: money from integer minor units, invoice status badges."""

from __future__ import annotations

from django import template

from portal.money import format_money

register = template.Library()

STATUS_BADGES = {
    "draft": "text-bg-secondary",
    "open": "text-bg-primary",
    "paid": "text-bg-success",
    "void": "text-bg-dark",
    "uncollectible": "text-bg-danger",
}


@register.filter
def money(amount_minor: int | None, currency: str = "usd") -> str:
    """``{{ invoice.total_minor|money:invoice.currency }}`` → ``$53.50``."""
    if amount_minor in (None, ""):
        return ""
    return format_money(int(amount_minor), currency)


@register.filter
def invoice_status_badge(status: str) -> str:
    """Bootstrap 5 badge classes for an invoice status (Stripe's invoice statuses)."""
    return STATUS_BADGES.get(status, "text-bg-light")
