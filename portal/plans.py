"""Business plan templates, the rules that keep a plan's limits and prices coherent, and a
plan's price in words.

``PLAN_TEMPLATES`` are the shipped defaults a provider can start a plan from, modelled on WSO2
API Manager's async subscription policies (AsyncBronze, AsyncSilver, AsyncGold: 5,000 / 25,000 /
50,000 events per day; AsyncUnlimited). ``plan_fields_validate`` is the one place that decides
whether a set of ``BusinessPlan`` field values makes sense, the throttling policy's and the
pricing's (graduated ``price_tiers``, bandwidth, ``billing_period``) included
(docs/throttling.md, docs/billing.md › Pricing); the plan form, the admin and
``portal.services.subscriptions.plan_create`` all call it, so the portal and the REST API refuse
the same input with the same messages. ``plan_price_summary`` says what a plan costs, for the
catalog, the provider's and the approvals pages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from django.core.exceptions import ValidationError

from portal.models import BusinessPlan
from portal.money import format_money

# Bounds of amounts a plan may hold: prices fit the model's integer columns (2**31 - 1 minor
# units) and the portal form's dollars ($1,000,000.00 flat, $100,000.00 per 1,000 events or per
# GB); events to 10**15 and bytes to 10**18 (1 EB) per billing period, far beyond any real plan.
MAX_EVENTS = 10**15
MAX_BYTES = 10**18
MAX_FLAT_FEE_MINOR = 100_000_000
MAX_PRICE_PER_1000_MINOR = 10_000_000
MAX_PRICE_PER_GB_MINOR = 10_000_000
# Graduated tiers (``BusinessPlan.price_tiers``): at most this many, with exactly these keys.
MAX_PRICE_TIERS = 10
TIER_KEYS = ("up_to", "price_per_1000_events_minor")
EVENTS_PER_BLOCK = 1000
BYTES_PER_GB = 10**9


class PriceModel:
    """How a plan is priced; the values match ``BusinessPlan.price_model``."""

    FREE = "free"
    FLAT = "flat"
    PER_EVENT = "per_event"
    FLAT_AND_PER_EVENT = "flat_and_per_event"

    CHOICES = (
        (FREE, "Free"),
        (FLAT, "Flat fee per billing period"),
        (PER_EVENT, "Usage only: per 1,000 events over the included ones (and/or per GB)"),
        (FLAT_AND_PER_EVENT, "Flat fee + per 1,000 events over the included ones"),
    )

    @classmethod
    def label(cls, model: str, period: str = BusinessPlan.BillingPeriod.MONTH) -> str:
        """The price model ``model`` in words for a plan billed per ``period`` ("month" |
        "year"), as error messages quote it: ``"Flat fee per month"``."""
        return {
            cls.FREE: "Free",
            cls.FLAT: f"Flat fee per {period}",
            cls.PER_EVENT: "Usage only",
            cls.FLAT_AND_PER_EVENT: f"Flat fee per {period} + per 1,000 events",
        }.get(model, model)


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
    "billing_period": BusinessPlan.BillingPeriod,
}
_OVERAGE_PRICES = {
    # price field → (the quota it bills, what a consumer reads)
    "overage_price_per_1000_events_minor": ("quota_events", "events quota", "price per 1,000 events"),
    "overage_price_per_gb_minor": ("quota_bytes", "bytes quota", "price per GB"),
}
# Amounts of the pricing that are whole numbers from 0 to a maximum: field → (maximum, unit words).
_AMOUNT_FIELDS = {
    "included_bytes": (MAX_BYTES, "bytes"),
    "price_per_gb_minor": (MAX_PRICE_PER_GB_MINOR, "minor units (cents)"),
}


def plan_fields_validate(fields: Mapping[str, Any], *, price_model: str | None = None) -> None:
    """Check that ``BusinessPlan`` field values (prices in minor units, limits in events, bytes
    and seconds, None = unlimited) are coherent; ``price_model`` (a ``PriceModel`` value) is
    what the provider chose, when they chose one. Fields left out take the model's defaults.

    The throttling policy's rules (docs/throttling.md): the limits in ``POSITIVE_LIMIT_FIELDS``
    are None or ≥ 1; ``rate_limit_unit``, ``counted_directions``, ``quota_action``,
    ``limit_notice`` and ``billing_period`` are one of their model choices; a burst needs a
    rate; overage prices are whole minor units ≥ 0; ``quota_action="overage"`` needs
    ``quota_events`` or ``quota_bytes`` and an overage price above 0 for each quota set; an
    overage price above 0 needs ``quota_action="overage"`` and the quota it bills.

    The pricing's rules (docs/billing.md › Pricing): ``price_tiers`` as ``price_tiers_errors``
    says, and never together with a ``price_per_1000_events_minor`` above 0 (the tiers replace
    it); ``included_bytes`` (≤ ``MAX_BYTES``) and ``price_per_gb_minor`` (≤
    ``MAX_PRICE_PER_GB_MINOR``) are whole numbers ≥ 0, and included bytes need a bandwidth
    price. With ``price_model``, the amounts must make the plan's ``BusinessPlan.price_model``
    that model: "free" charges nothing (no fee, no event price or priced tier, no bandwidth
    price), "flat" a fee and no event price, "per_event" no fee and an event price (single or
    tiers) or a bandwidth price, "flat_and_per_event" a fee and an event price.

    Raises ``ValidationError`` with a field dict (``price_model``, ``flat_fee_minor``,
    ``included_events``, ``price_per_1000_events_minor``, ``price_tiers`` (one message per
    fault, each starting with its JSON pointer: ``price_tiers/1/up_to: …``), ``included_bytes``,
    ``price_per_gb_minor``, ``billing_period``, the limits, the choices, ``quota_action``,
    ``overage_price_*``) naming every field at fault.
    """
    errors: dict[str, str | list[str]] = {}
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
    for name, (maximum, unit) in _AMOUNT_FIELDS.items():
        value = fields.get(name, 0)
        if not _is_int(value) or not 0 <= value <= maximum:
            errors[name] = f"Enter a whole number of {unit} from 0 to {maximum:,}."
    tier_errors = price_tiers_errors(fields["price_tiers"]) if "price_tiers" in fields else []
    if tier_errors:
        errors["price_tiers"] = [str(error) for error in tier_errors]
    errors.update(_price_errors(fields, price_model, errors))
    if errors:
        raise ValidationError(errors)


@dataclass(frozen=True)
class TierError:
    """One fault of a ``price_tiers`` value: the tier's ``index`` (0-based; None for the list
    itself), the ``key`` at fault (None for the whole tier), ``text`` and ``code``. ``str()`` prefixes the
    JSON pointer (RFC 6901, relative to the plan): ``price_tiers/1/up_to: must be …``."""

    index: int | None
    key: str | None
    text: str
    # What kind of fault, for callers that word it in their own terms (the plan form's lines):
    # "last_not_null", "null_not_last", "not_increasing", "too_many", or "" for the others.
    code: str = ""

    @property
    def pointer(self) -> str:
        parts = ["price_tiers"]
        if self.index is not None:
            parts.append(str(self.index))
        if self.key is not None:
            parts.append(self.key)
        return "/".join(parts)

    def __str__(self) -> str:
        return f"{self.pointer}: {self.text}"


def price_tiers_errors(tiers: Any) -> list[TierError]:
    """What is wrong with ``tiers`` as ``BusinessPlan.price_tiers`` (empty list: nothing).

    ``[]`` means one price per 1,000 events (``price_per_1000_events_minor``). Otherwise a list
    of 1 to ``MAX_PRICE_TIERS`` objects with exactly the keys ``TIER_KEYS``: ``up_to`` (billable
    events, i.e. events over ``included_events``, at which the tier ends) is a positive whole
    multiple of 1,000 (billing prices started blocks of 1,000 events, so a block never spans two
    tiers: ``billing.services.events_charge``), at most ``MAX_EVENTS``, greater than the previous
    tier's; only the last tier's is null (no upper bound) and it must be, so every event has a
    price. ``price_per_1000_events_minor`` is a whole number of minor units from 0 to
    ``MAX_PRICE_PER_1000_MINOR``. Graduated like Stripe's ``tiers_mode=graduated`` (Stripe API
    reference: Prices › tiers). Raises nothing, whatever ``tiers`` is (parsed JSON from anyone).
    """
    if isinstance(tiers, list) and not tiers:
        return []
    if not isinstance(tiers, list):
        return [
            TierError(
                None,
                None,
                f"must be a list of 1 to {MAX_PRICE_TIERS} tiers, each "
                '{"up_to": …, "price_per_1000_events_minor": …}, or [] for one price per 1,000 events.',
            )
        ]
    if len(tiers) > MAX_PRICE_TIERS:
        return [TierError(None, None, f"at most {MAX_PRICE_TIERS} tiers; this has {len(tiers)}.", "too_many")]
    errors: list[TierError] = []
    previous: int | None = None
    for index, tier in enumerate(tiers):
        if not isinstance(tier, dict):
            errors.append(
                TierError(index, None, "must be an object with up_to and price_per_1000_events_minor.")
            )
            continue
        for key in sorted(set(tier) - set(TIER_KEYS), key=str):
            errors.append(
                TierError(
                    index,
                    None,
                    f"unknown key “{key[:40]}”: a tier has only up_to and price_per_1000_events_minor.",
                )
            )
        last = index == len(tiers) - 1
        if "up_to" not in tier:
            errors.append(TierError(index, "up_to", "missing (null for the last tier: no upper bound)."))
        else:
            text, code = _up_to_error(tier["up_to"], last=last, previous=previous)
            if text:
                errors.append(TierError(index, "up_to", text, code))
            elif not last:
                previous = tier["up_to"]
        if "price_per_1000_events_minor" not in tier:
            errors.append(TierError(index, "price_per_1000_events_minor", "missing."))
        else:
            price = tier["price_per_1000_events_minor"]
            if not _is_int(price) or not 0 <= price <= MAX_PRICE_PER_1000_MINOR:
                errors.append(
                    TierError(
                        index,
                        "price_per_1000_events_minor",
                        f"must be a whole number of minor units (cents) from 0 to "
                        f"{MAX_PRICE_PER_1000_MINOR:,}.",
                    )
                )
    return errors


def _up_to_error(value: Any, *, last: bool, previous: int | None) -> tuple[str, str]:
    """(text, code) of what is wrong with a tier's ``up_to``; ("", "") when nothing is."""
    if last:
        if value is None:
            return "", ""
        return "the last tier must be null (no upper bound), so every event has a price.", "last_not_null"
    if value is None:
        return (
            "only the last tier may be null (no upper bound): give this one a number of events.",
            "null_not_last",
        )
    if not _is_int(value) or value <= 0:
        return "must be a positive whole number of billable events (events over the included ones).", ""
    if value % EVENTS_PER_BLOCK:
        return "must be a multiple of 1,000: events are priced per started block of 1,000.", ""
    if value > MAX_EVENTS:
        return f"must be at most {MAX_EVENTS:,}.", ""
    if previous is not None and value <= previous:
        return f"must be greater than the previous tier's up_to ({previous}).", "not_increasing"
    return "", ""


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


def _price_errors(
    fields: Mapping[str, Any], price_model: str | None, found: Mapping[str, Any]
) -> dict[str, str]:
    """The price model's rules (``plan_fields_validate``), on amounts already found well formed
    (``found``: the errors so far); the tiers' and bandwidth's rules apply with or without a
    chosen model."""
    fee = fields.get("flat_fee_minor") or 0
    per_1000 = fields.get("price_per_1000_events_minor") or 0
    included = fields.get("included_events") or 0
    # Malformed amounts already have their error; the rules below read them as absent.
    tiers = [] if "price_tiers" in found else fields.get("price_tiers") or []
    per_gb = 0 if "price_per_gb_minor" in found else fields.get("price_per_gb_minor") or 0
    included_bytes = 0 if "included_bytes" in found else fields.get("included_bytes") or 0
    tiers_priced = any(tier["price_per_1000_events_minor"] > 0 for tier in tiers)
    errors: dict[str, str] = {}
    if tiers and per_1000:
        errors["price_per_1000_events_minor"] = (
            "Graduated prices replace the single price per 1,000 events: set this to 0, or clear the "
            "graduated prices."
        )
    if included_bytes and not per_gb:
        errors["included_bytes"] = (
            "Included bytes only matter when bandwidth is charged: set a price per GB above 0 or "
            "0 included bytes; to cap bandwidth, set a bytes quota."
        )
    if price_model is None:  # nothing chosen (an API client): any combination of amounts is coherent
        return errors
    valid = [value for value, _ in PriceModel.CHOICES]
    if price_model not in valid:
        return {**errors, "price_model": f"Choose one of: {', '.join(valid)}."}
    period = fields.get("billing_period")
    label = PriceModel.label(price_model, period if period in BusinessPlan.BillingPeriod.values else "month")
    wants_fee = price_model in (PriceModel.FLAT, PriceModel.FLAT_AND_PER_EVENT)
    wants_usage = price_model in (PriceModel.PER_EVENT, PriceModel.FLAT_AND_PER_EVENT)
    events_priced = bool(per_1000) or tiers_priced
    if wants_fee and not fee:
        errors["flat_fee_minor"] = f"“{label}” needs a flat fee above 0."
    if not wants_fee and fee:
        errors["flat_fee_minor"] = f"“{label}” has no flat fee: set it to 0 or pick a price model with a fee."
    if price_model == PriceModel.PER_EVENT and not (events_priced or per_gb):
        errors["price_per_1000_events_minor"] = (
            f"“{label}” needs a price per 1,000 events above 0. Set one, graduated price tiers, or a "
            "bandwidth price per GB."
        )
    if price_model == PriceModel.FLAT_AND_PER_EVENT and not events_priced:
        errors["price_per_1000_events_minor"] = (
            f"“{label}” needs a price per 1,000 events above 0. Set one or graduated price tiers; a "
            "flat fee with only a bandwidth price is “Flat fee per billing period”."
        )
    if not wants_usage and per_1000 and "price_per_1000_events_minor" not in errors:
        errors["price_per_1000_events_minor"] = (
            f"“{label}” does not charge per event: set it to 0 or pick a per-event price model."
        )
    if not wants_usage and tiers_priced:
        errors["price_tiers"] = (
            f"“{label}” does not charge per event: clear the graduated prices (or set them to 0), "
            "or pick a per-event price model."
        )
    if price_model == PriceModel.FREE and per_gb:
        errors["price_per_gb_minor"] = (
            "“Free” charges nothing: set the bandwidth price per GB to 0, or pick a paid price model."
        )
    if not wants_usage and included:
        errors["included_events"] = (
            "Included events only matter when events are charged; to cap events, set a quota."
        )
    return errors


# --- a plan's price in words ------------------------------------------------------------------


@dataclass(frozen=True)
class TierWords:
    """One graduated tier in words: ``price`` per 1,000 events (``"$1.50"`` or ``"free"``) and
    the events it covers, counted after the included ones (``"first 50,000 per month"``,
    ``"next 100,000"``, ``"beyond"``)."""

    price: str
    span: str


@dataclass(frozen=True)
class PriceSummary:
    """What a business plan costs, in words (``plan_price_summary``).

    ``free``: the plan charges nothing (``BusinessPlan.is_free``); ``period``: "month" or
    "year"; ``fee``: the flat fee per period (``"$49.00"``) or None; ``included``: ``"10,000
    events included"`` or None; ``events``: the price of events over them (``"$1.50 per 1,000
    events beyond that"``, or the tiers in one sentence: ``"then $1.50 per 1,000 events for the
    next 100,000, $1.00 per 1,000 beyond"``) or None; ``tiers``: the same tiers one by one
    (``TierWords``; empty without tiers), for a table; ``bandwidth``: ``"bandwidth $0.20 per GB
    over 5 GB"`` or None; ``short``: a few words for a list (``"$49.00/month + usage"``).
    ``terms`` are the usage charges in order; ``str()`` is the one-line summary: ``"$49.00/month
    · 10,000 events included · then …"``. Periods are named where no fee names them (``"10,000
    events included per month"``).
    """

    free: bool
    period: str
    fee: str | None
    short: str
    included: str | None = None
    events: str | None = None
    tiers: tuple[TierWords, ...] = ()
    bandwidth: str | None = None

    @property
    def terms(self) -> tuple[str, ...]:
        return tuple(term for term in (self.included, self.events, self.bandwidth) if term)

    @property
    def tiers_lead(self) -> str:
        """What the tiers table's rows price: ``"Then, per 1,000 events"`` after included events."""
        return "Then, per 1,000 events" if self.included else "Per 1,000 events"

    def __str__(self) -> str:
        if self.free:
            return "Free"
        parts = ([f"{self.fee}/{self.period}"] if self.fee else []) + list(self.terms)
        return " · ".join(parts) or "only the overage is billed"


def plan_price_summary(plan: BusinessPlan) -> PriceSummary:
    """The price of ``plan`` in words: its flat fee per billing period, included events, the
    price per 1,000 events or the graduated ``price_tiers`` (each tier's span counted in
    billable events, i.e. after the included ones, as ``billing.services.events_charge`` bills
    them), and bandwidth (``price_per_gb_minor`` per GB = 10^9 bytes over ``included_bytes``).
    Overage prices are the throttling policy's and are not part of it. Amounts in the plan's
    currency (``portal.money.format_money``); raises nothing for a plan that passed
    ``plan_fields_validate``."""
    period = plan.billing_period if plan.billing_period in BusinessPlan.BillingPeriod.values else "month"
    currency = plan.currency
    fee = format_money(plan.flat_fee_minor, currency) if plan.flat_fee_minor else None
    if plan.is_free:
        return PriceSummary(free=True, period=period, fee=None, short="Free")
    per_period = "" if fee else f" per {period}"
    included = events = bandwidth = None
    tiers: tuple[TierWords, ...] = ()
    if plan.prices_events:
        if plan.included_events:
            included = f"{plan.included_events:,} events included{per_period}"
        if len(plan.price_tiers) > 1:
            tiers, sentence = _tier_words(plan, per_period="" if included else per_period)
            events = ("then " if included else "") + sentence
        else:  # one price, or one tier for every event
            single = plan.price_tiers[0]["price_per_1000_events_minor"] if plan.price_tiers else None
            price = format_money(plan.price_per_1000_events_minor if single is None else single, currency)
            events = f"{price} per 1,000 events" + (" beyond that" if included else "")
    if plan.price_per_gb_minor:
        over = f" over {_size_words(plan.included_bytes)}{per_period}" if plan.included_bytes else ""
        bandwidth = f"bandwidth {format_money(plan.price_per_gb_minor, currency)} per GB{over}"
    return PriceSummary(
        free=False,
        period=period,
        fee=fee,
        short=_short_price(plan, fee, period),
        included=included,
        events=events,
        tiers=tiers,
        bandwidth=bandwidth,
    )


def _tier_words(plan: BusinessPlan, *, per_period: str) -> tuple[tuple[TierWords, ...], str]:
    """``plan.price_tiers`` as ``TierWords`` (``("$1.50", "next 100,000")``, ``("$1.00",
    "beyond")``) and as one sentence (``"$1.50 per 1,000 events for the next 100,000, $1.00 per
    1,000 beyond"``; a tier at 0: ``"free for the first 50,000 events"``). The first tier's span
    is "first N" without included events, followed by ``per_period`` (``" per month"``) when
    nothing else names the period."""
    rows: list[TierWords] = []
    parts: list[str] = []
    floor = 0
    for index, tier in enumerate(plan.price_tiers or ()):
        first = index == 0
        up_to = tier.get("up_to")
        price = int(tier.get("price_per_1000_events_minor") or 0)
        money = format_money(price, plan.currency) if price else "free"
        if up_to is None:
            span = "beyond"
            sentence_span = "beyond"
        else:
            which = "first" if first and not plan.included_events else "next"
            count = f"{which} {int(up_to) - floor:,}"
            span = count + (per_period if first else "")
            noun = " events" if first and not price else ""  # "$1.50 per 1,000 events" names them
            sentence_span = f"for the {count}{noun}{per_period if first else ''}"
            floor = int(up_to)
        rows.append(TierWords(money, span))
        unit = (" per 1,000 events" if first else " per 1,000") if price else ""
        parts.append(f"{money}{unit} {sentence_span}")
    return tuple(rows), ", ".join(parts)


def _short_price(plan: BusinessPlan, fee: str | None, period: str) -> str:
    """A few words for a list of plans: ``"$49.00/month + usage"``, ``"$1.50 per 1k events"``,
    tiers as the range of their prices above 0 (``"$1.00–$1.50 per 1k events"``), ``"$0.20 per
    GB"``."""
    if fee:
        usage = plan.prices_events or plan.price_per_gb_minor
        return f"{fee}/{period}" + (" + usage" if usage else "")
    if plan.prices_events:
        tiers = plan.price_tiers or [{"price_per_1000_events_minor": plan.price_per_1000_events_minor}]
        prices = sorted({int(tier.get("price_per_1000_events_minor") or 0) for tier in tiers} - {0})
        low, high = (format_money(price, plan.currency) for price in (prices[0], prices[-1]))
        return (low if low == high else f"{low}–{high}") + " per 1k events"
    if plan.price_per_gb_minor:
        return f"{format_money(plan.price_per_gb_minor, plan.currency)} per GB"
    return "Pay per use"


def _size_words(size: int) -> str:
    """Bytes in decimal units without needless decimals: ``5_000_000_000`` → ``"5 GB"``,
    ``1_500_000`` → ``"1.5 MB"``, ``1_234_567`` → ``"1.235 MB"``."""
    units = ("bytes", "KB", "MB", "GB", "TB", "PB", "EB")
    amount = Decimal(size)
    unit = units[0]
    for unit in units:
        if amount < 1000 or unit == units[-1]:
            break
        amount /= 1000
    text = f"{amount.quantize(Decimal('0.001')):f}".rstrip("0").rstrip(".")
    return f"{text} {unit}"
