"""Business plan templates and the rules that keep a plan's limits and price model coherent.

``PLAN_TEMPLATES`` are the shipped defaults a provider can start a plan from, modelled on WSO2
API Manager's async subscription policies (AsyncBronze, AsyncSilver, AsyncGold: 5,000 / 25,000 /
50,000 events per day; AsyncUnlimited). ``plan_fields_validate`` is the one place that decides
whether a set of ``BusinessPlan`` field values makes sense, the throttling policy's included
(docs/throttling.md); the plan form and ``portal.services.subscriptions.plan_create`` both call
it, so the portal and the REST API refuse the same input with the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from django.core.exceptions import ValidationError

from portal.models import BusinessPlan


class PriceModel:
    """How a plan is priced; the values match ``BusinessPlan.price_model``."""

    FREE = "free"
    FLAT = "flat"
    PER_EVENT = "per_event"
    FLAT_AND_PER_EVENT = "flat_and_per_event"

    CHOICES = (
        (FREE, "Free"),
        (FLAT, "Flat fee per month"),
        (PER_EVENT, "Per 1,000 events (with included events)"),
        (FLAT_AND_PER_EVENT, "Flat fee per month + per 1,000 events over the included ones"),
    )


@dataclass(frozen=True)
class PlanTemplate:
    """A ready-made plan: ``fields`` are ``BusinessPlan`` field values (limits in events, bytes)."""

    key: str
    name: str
    description: str
    fields: Mapping[str, Any] = field(default_factory=dict)


def _template(key: str, name: str, description: str, **fields: Any) -> PlanTemplate:
    return PlanTemplate(key=key, name=name, description=description, fields=MappingProxyType(fields))


PLAN_TEMPLATES: tuple[PlanTemplate, ...] = (
    _template(
        "async-bronze",
        "AsyncBronze",
        "Allows 5,000 events per day.",
        rate_limit_events=5_000,
        rate_limit_unit=BusinessPlan.RateUnit.DAY,
    ),
    _template(
        "async-silver",
        "AsyncSilver",
        "Allows 25,000 events per day.",
        rate_limit_events=25_000,
        rate_limit_unit=BusinessPlan.RateUnit.DAY,
    ),
    _template(
        "async-gold",
        "AsyncGold",
        "Allows 50,000 events per day.",
        rate_limit_events=50_000,
        rate_limit_unit=BusinessPlan.RateUnit.DAY,
    ),
    _template(
        "async-unlimited",
        "AsyncUnlimited",
        "Allows an unlimited number of events.",
        rate_limit_events=None,
        rate_limit_unit=BusinessPlan.RateUnit.DAY,
    ),
)


def plan_template(key: str) -> PlanTemplate | None:
    """The template ``key`` (e.g. ``"async-gold"``), or None when there is none of that key."""
    return next((template for template in PLAN_TEMPLATES if template.key == key), None)


# Limits that are a whole number of at least 1, or None for unlimited.
POSITIVE_LIMIT_FIELDS = (
    "rate_limit_events",
    "burst_events",
    "quota_events",
    "quota_bytes",
    "max_connections",
    "max_connections_per_application",
    "max_webhook_subscriptions",
    "max_connection_seconds",
)
_CHOICE_FIELDS = {
    "rate_limit_unit": BusinessPlan.RateUnit,
    "counted_directions": BusinessPlan.CountedDirections,
    "quota_action": BusinessPlan.QuotaAction,
    "limit_notice": BusinessPlan.LimitNotice,
}
_OVERAGE_PRICES = {
    # price field → (the quota it bills, what a consumer reads)
    "overage_price_per_1000_events_minor": ("quota_events", "events quota", "price per 1,000 events"),
    "overage_price_per_gb_minor": ("quota_bytes", "bytes quota", "price per GB"),
}


def plan_fields_validate(fields: Mapping[str, Any], *, price_model: str | None = None) -> None:
    """Check that ``BusinessPlan`` field values (prices in minor units, limits in events, bytes
    and seconds, None = unlimited) are coherent; ``price_model`` (a ``PriceModel`` value) is
    what the provider chose, when they chose one. Fields left out take the model's defaults.

    The throttling policy's rules (docs/throttling.md): the limits in ``POSITIVE_LIMIT_FIELDS``
    are None or ≥ 1; ``rate_limit_unit``, ``counted_directions``, ``quota_action`` and
    ``limit_notice`` are one of their model choices; a burst needs a rate; overage prices are
    whole minor units ≥ 0; ``quota_action="overage"`` needs ``quota_events`` or ``quota_bytes``
    and an overage price above 0 for each quota set; an overage price above 0 needs
    ``quota_action="overage"`` and the quota it bills.

    Raises ``ValidationError`` with a field dict (``price_model``, ``flat_fee_minor``,
    ``included_events``, ``price_per_1000_events_minor``, the limits, the choices,
    ``quota_action``, ``overage_price_*``) naming every field at fault.
    """
    errors: dict[str, str] = {}
    for name in POSITIVE_LIMIT_FIELDS:
        value = fields.get(name)
        if value is not None and (not _is_int(value) or value < 1):
            errors[name] = "Enter a whole number of at least 1, or leave it empty for unlimited."
    for name, choices in _CHOICE_FIELDS.items():
        if name in fields and fields[name] not in choices.values:
            errors[name] = f"Choose one of: {', '.join(choices.values)}."
    if fields.get("burst_events") is not None and fields.get("rate_limit_events") is None:
        errors["burst_events"] = "A burst is extra room above a rate limit: set the rate limit too."
    errors.update(_overage_errors(fields, errors))
    errors.update(_price_errors(fields, price_model))
    if errors:
        raise ValidationError(errors)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _overage_errors(fields: Mapping[str, Any], found: Mapping[str, str]) -> dict[str, str]:
    """``quota_action`` and the overage prices: billing the overage needs a quota to go over and
    a price for it; a price without overage billing would never be charged."""
    errors: dict[str, str] = {}
    prices: dict[str, int] = {}
    for name in _OVERAGE_PRICES:
        value = fields.get(name)
        if value is None:
            value = 0
        if not _is_int(value) or value < 0:
            errors[name] = "Enter a whole number of minor units (cents), 0 or more."
        else:
            prices[name] = value
    if "quota_action" in found:
        return errors
    overage = fields.get("quota_action", BusinessPlan.QuotaAction.STOP) == BusinessPlan.QuotaAction.OVERAGE
    quotas = {name: fields.get(name) for name in ("quota_events", "quota_bytes")}
    if overage and quotas["quota_events"] is None and quotas["quota_bytes"] is None:
        errors["quota_action"] = (
            "Billing the overage needs a quota to go over: set an events quota (quota_events) or a "
            "bytes quota (quota_bytes), or stop at the quota."
        )
        return errors
    for name, price in prices.items():
        quota, quota_words, price_words = _OVERAGE_PRICES[name]
        if overage and quotas[quota] is not None and price == 0:
            errors[name] = f"Billing the overage of the {quota_words} needs an overage {price_words} above 0."
        elif not overage and price:
            errors[name] = (
                f"An overage {price_words} is charged only when the quota action is “overage”: set it "
                "to 0, or keep delivering at the quota and bill the overage."
            )
        elif overage and price and quotas[quota] is None:
            errors[name] = f"There is no {quota_words} ({quota}) to go over: set one, or set this price to 0."
    return errors


def _price_errors(fields: Mapping[str, Any], price_model: str | None) -> dict[str, str]:
    fee = fields.get("flat_fee_minor") or 0
    per_1000 = fields.get("price_per_1000_events_minor") or 0
    included = fields.get("included_events") or 0
    if price_model is None:  # nothing chosen (an API client): any combination of amounts is coherent
        return {}
    errors: dict[str, str] = {}
    valid = [value for value, _ in PriceModel.CHOICES]
    if price_model not in valid:
        return {"price_model": f"Choose one of: {', '.join(valid)}."}
    wants_fee = price_model in (PriceModel.FLAT, PriceModel.FLAT_AND_PER_EVENT)
    wants_usage = price_model in (PriceModel.PER_EVENT, PriceModel.FLAT_AND_PER_EVENT)
    label = dict(PriceModel.CHOICES)[price_model]
    if wants_fee and not fee:
        errors["flat_fee_minor"] = f"“{label}” needs a flat fee above 0."
    if not wants_fee and fee:
        errors["flat_fee_minor"] = f"“{label}” has no flat fee: set it to 0 or pick a price model with a fee."
    if wants_usage and not per_1000:
        errors["price_per_1000_events_minor"] = f"“{label}” needs a price per 1,000 events above 0."
    if not wants_usage and per_1000:
        errors["price_per_1000_events_minor"] = (
            f"“{label}” does not charge per event: set it to 0 or pick a per-event price model."
        )
    if not wants_usage and included:
        errors["included_events"] = (
            "Included events only matter when events are charged; to cap events, set a quota."
        )
    return errors
