"""Template helpers for a business plan's price in words (``portal.plans.plan_price_summary``)."""

from __future__ import annotations

from django import template

from portal.models import BusinessPlan
from portal.plans import PriceSummary, plan_price_summary

register = template.Library()


@register.filter
def plan_price(plan: BusinessPlan) -> PriceSummary:
    """``{% with price=plan|plan_price %}``: ``price.fee``, ``price.period``, ``price.terms``,
    ``price.short``, ``price.free``; ``{{ price }}`` is the one-line summary
    (``"$49.00/month · 10,000 events included · then $1.50 per 1,000 events"``)."""
    return plan_price_summary(plan)


SEPARATOR = " · "


@register.filter(is_safe=True)
def without_leading_separator(text: str) -> str:
    """``" · 5 connections · 3 webhooks"`` → ``"5 connections · 3 webhooks"``: a list of a plan's
    terms built with a separator before each (``portal/_plan_short.html``)."""
    return text[len(SEPARATOR) :] if text.startswith(SEPARATOR) else text
