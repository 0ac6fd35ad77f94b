"""Money from integer minor units, the one formatter of the portal, billing pages and commands."""

from __future__ import annotations

# Currencies whose minor unit is the major unit (Stripe docs: "Zero-decimal currencies").
ZERO_DECIMAL_CURRENCIES = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "cad": "CA$", "aud": "A$", "inr": "₹"}
# The ISO 4217 codes business plans may be priced in: common currencies Stripe settles in.
CURRENCIES = tuple("usd eur gbp jpy cad aud inr chf sek nok dkk nzd sgd hkd pln czk brl mxn zar".split())


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
