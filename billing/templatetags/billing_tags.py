"""Template filters for billing pages: money from integer minor units, invoice status badges."""

from __future__ import annotations

from django import template

register = template.Library()

# Currencies whose minor unit is the major unit (Stripe docs: "Zero-decimal currencies").
ZERO_DECIMAL_CURRENCIES = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "cad": "CA$", "aud": "A$", "inr": "₹"}
STATUS_BADGES = {
    "draft": "text-bg-secondary",
    "open": "text-bg-primary",
    "paid": "text-bg-success",
    "void": "text-bg-dark",
    "uncollectible": "text-bg-danger",
}


def format_money(amount_minor: int, currency: str = "usd") -> str:
    """``4900, "usd"`` → ``"$49.00"``; ``-150, "eur"`` → ``"-€1.50"``; ``500, "jpy"`` → ``"¥500"``;
    unknown symbols give ``"12.00 SEK"``. Integer arithmetic only, thousands separated by commas."""
    currency = (currency or "usd").lower()
    sign = "-" if amount_minor < 0 else ""
    amount_minor = abs(int(amount_minor))
    if currency in ZERO_DECIMAL_CURRENCIES:
        number = f"{amount_minor:,}"
    else:
        number = f"{amount_minor // 100:,}.{amount_minor % 100:02d}"
    symbol = SYMBOLS.get(currency)
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{number} {currency.upper()}"


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
