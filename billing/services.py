"""Billing services: closed usage periods become invoices in Eventgate's own ledger.

Billing periods are calendar months in UTC. A period is closed (invoiced) once it has ended and a
grace period for late gateway flushes has passed. Usage is read only through
``analytics.services.usage_for_subscription``, so an invoice shows the numbers of the consumer's
usage page. All amounts are integer minor units (cents) of the plan's currency; pricing follows
``portal.models.BusinessPlan``: ``flat_fee + ceil(max(0, events - included_events) / 1000) *
price_per_1000_events`` (events delivered, direction "out"), plus, for plans whose ``quota_action``
is "overage", the events and bytes of the plan's ``counted_directions`` over ``quota_events`` /
``quota_bytes`` (``events_overage_charge``, ``bytes_overage_charge``). Throttled events and bytes
(the usage rows' ``throttled_*`` columns) are never read, so never billed.

Pushing invoices to Stripe lives in ``billing.stripe_sync``; Celery tasks in ``billing.tasks``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from analytics.services import UsageTotals, usage_for_subscription
from billing.models import BillingAccount, Invoice, InvoiceLine
from portal.models import BusinessPlan, Subscription
from portal.money import format_money
from portal.templatetags.eventgate import human_bytes

logger = logging.getLogger(__name__)

EVENTS_PER_BLOCK = 1000
BYTES_PER_GB = 10**9  # decimal gigabyte, as on the usage page and the plan's overage price
# Gateway processes flush usage every few seconds; an hour covers a slow or restarted flush.
DEFAULT_GRACE_PERIOD = timedelta(hours=1)
_DESCRIPTION_MAX = InvoiceLine._meta.get_field("description").max_length or 300


@dataclass(frozen=True)
class EventsCharge:
    """The usage charge of one subscription for one period.

    ``billable_events`` = events over the plan's included events; ``blocks`` = started blocks of
    1,000 billable events; ``amount_minor`` = ``blocks * plan.price_per_1000_events_minor``.
    """

    billable_events: int
    blocks: int
    amount_minor: int


def events_charge(*, plan: BusinessPlan, events: int) -> EventsCharge:
    """Price ``events`` (a count) under ``plan``: every started block of 1,000 events over the
    included amount costs ``plan.price_per_1000_events_minor``. Integer arithmetic only."""
    billable = max(0, events - plan.included_events)
    blocks = -(-billable // EVENTS_PER_BLOCK)  # ceiling division without floats
    return EventsCharge(
        billable_events=billable, blocks=blocks, amount_minor=blocks * plan.price_per_1000_events_minor
    )


@dataclass(frozen=True)
class OverageCharge:
    """What a subscription used over one of its plan's quotas in one period, and its price.

    ``counted`` = events (or bytes) of the plan's counted directions in the period; ``over`` =
    ``max(0, counted - quota)``; ``quantity`` = units billed (started blocks of 1,000 events, or
    bytes); ``unit_amount_minor`` = the plan's overage price per 1,000 events (or per GB);
    ``amount_minor`` = the charge, integer minor units. Rule: issue 6 (throttling policies,
    ``quota_action`` "overage"); docs/billing.md › Overage.
    """

    counted: int
    quota: int
    over: int
    quantity: int
    unit_amount_minor: int
    amount_minor: int


def bills_overage(plan: BusinessPlan) -> bool:
    """Whether ``plan`` keeps delivering past a quota and charges for it: ``quota_action`` is
    "overage" and an events (bytes) quota is set with a non-zero overage price per 1,000 events
    (per GB)."""
    if plan.quota_action != BusinessPlan.QuotaAction.OVERAGE:
        return False
    return (plan.quota_events is not None and plan.overage_price_per_1000_events_minor > 0) or (
        plan.quota_bytes is not None and plan.overage_price_per_gb_minor > 0
    )


def events_overage_charge(*, plan: BusinessPlan, events: int) -> OverageCharge | None:
    """Price ``events`` (the count of the plan's counted directions in one period) over the plan's
    events quota; None unless ``plan.quota_action`` is "overage" and ``plan.quota_events`` is set.

    Same rounding as ``events_charge``: every *started* block of 1,000 events over the quota costs
    ``plan.overage_price_per_1000_events_minor`` (12,345 events on a 10,000-event quota → 2,345
    over → 3 blocks). Integer arithmetic only; raises nothing. Rule: docs/billing.md › Overage.
    """
    if plan.quota_action != BusinessPlan.QuotaAction.OVERAGE or plan.quota_events is None:
        return None
    over = max(0, events - plan.quota_events)
    blocks = -(-over // EVENTS_PER_BLOCK)  # ceiling division without floats
    price = plan.overage_price_per_1000_events_minor
    return OverageCharge(
        counted=events,
        quota=plan.quota_events,
        over=over,
        quantity=blocks,
        unit_amount_minor=price,
        amount_minor=blocks * price,
    )


def bytes_overage_charge(*, plan: BusinessPlan, size: int) -> OverageCharge | None:
    """Price ``size`` (bytes of the plan's counted directions in one period) over the plan's bytes
    quota; None unless ``plan.quota_action`` is "overage" and ``plan.quota_bytes`` is set.

    Pro rata per byte, rounded *up* to the next minor unit: ``ceil(over_bytes ×
    overage_price_per_gb_minor / 10^9)`` (GB = 10^9 bytes). 2,500,000,000 bytes over at 200 per GB
    → 500; one byte over → 1. ``quantity`` is the bytes over the quota. Integer arithmetic only;
    raises nothing. Rule: docs/billing.md › Overage.
    """
    if plan.quota_action != BusinessPlan.QuotaAction.OVERAGE or plan.quota_bytes is None:
        return None
    over = max(0, size - plan.quota_bytes)
    price = plan.overage_price_per_gb_minor
    return OverageCharge(
        counted=size,
        quota=plan.quota_bytes,
        over=over,
        quantity=over,
        unit_amount_minor=price,
        amount_minor=-(-(over * price) // BYTES_PER_GB),  # ceiling division without floats
    )


def counted_usage(*, subscription: Subscription, start: datetime, end: datetime) -> UsageTotals:
    """Events and bytes of ``subscription`` in ``[start, end)`` in the directions its plan's
    quotas count (``counted_directions``: "both", "out" or "in"), from
    ``analytics.services.usage_for_subscription`` — delivered usage only, never throttled counts.
    The same rule the gateway applies when it seeds its quota counters (``gateway.auth.quota_usage``).
    """
    directions = subscription.plan.directions_counted
    totals = [
        usage_for_subscription(subscription=subscription, start=start, end=end, direction=direction)
        for direction in directions
    ]
    return UsageTotals(events=sum(t.events for t in totals), bytes=sum(t.bytes for t in totals))


# Periods -------------------------------------------------------------------------------------------


def billing_period_containing(moment: datetime) -> tuple[datetime, datetime]:
    """The calendar month (UTC) containing ``moment``, as ``(start, end)``; ``end`` is exclusive."""
    moment = moment.astimezone(UTC)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def grace_period() -> timedelta:
    """How long after a period ends it stays open for late gateway flushes (``BILLING_GRACE_SECONDS``)."""
    return timedelta(seconds=getattr(settings, "BILLING_GRACE_SECONDS", DEFAULT_GRACE_PERIOD.total_seconds()))


def last_closed_period(*, now: datetime, grace: timedelta | None = None) -> tuple[datetime, datetime]:
    """The most recent calendar month (UTC) that ended at least ``grace`` before ``now``.

    ``grace`` defaults to ``settings.BILLING_GRACE_SECONDS`` (seconds) or one hour, so usage that
    gateway processes flush late still lands on the invoice.
    """
    current_start, _ = billing_period_containing(now - (grace if grace is not None else grace_period()))
    return billing_period_containing(current_start - timedelta(days=1))


def parse_period_bound(value: str | date | datetime) -> datetime:
    """An aware UTC datetime from ``2026-10-01`` (midnight UTC), an ISO 8601 datetime (naive means
    UTC), a ``date`` or a ``datetime``. Raises ``ValueError`` for anything else."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip())
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Closing periods -----------------------------------------------------------------------------------


def billable_subscriptions(
    *, period_start: datetime, period_end: datetime, owner: Any = None
) -> list[Subscription]:
    """Subscriptions to bill for ``[period_start, period_end)``: on a paid plan, created before
    the period ended, and active or cancelled (pending and rejected ones never went live); only
    ``owner``'s applications' when given.

    Free plans are skipped: they never produce a charge, and billing them would create Stripe
    customers and zero invoices for consumers who never pay. A plan without flat fee and event
    price that bills overage (``bills_overage``) is paid: it is billed when usage exceeds a quota.
    """
    no_price = Q(plan__flat_fee_minor=0, plan__price_per_1000_events_minor=0)
    overage = Q(plan__quota_action=BusinessPlan.QuotaAction.OVERAGE) & (
        Q(plan__quota_events__isnull=False, plan__overage_price_per_1000_events_minor__gt=0)
        | Q(plan__quota_bytes__isnull=False, plan__overage_price_per_gb_minor__gt=0)
    )
    subscriptions = Subscription.objects.filter(
        status__in=[Subscription.Status.ACTIVE, Subscription.Status.CANCELLED], created__lt=period_end
    )
    if owner is not None:
        subscriptions = subscriptions.filter(application__owner=owner)
    return list(
        subscriptions.exclude(no_price & ~overage)
        .select_related("plan", "api", "application__owner")
        .order_by("application__owner_id", "pk")
    )


@dataclass(frozen=True)
class PeriodEstimate:
    """What the current billing period would be invoiced if it ended now, for one consumer:
    ``lines`` (unsaved ``InvoiceLine``s, as ``invoice_period_close`` would build them from the
    usage recorded so far) and their totals per currency (minor units)."""

    period_start: datetime
    period_end: datetime
    lines: list[InvoiceLine]
    totals: dict[str, int]


def period_estimate(*, user: Any, now: datetime) -> PeriodEstimate:
    """The running estimate of the billing period holding ``now`` for ``user``'s subscriptions
    on paid plans: the same lines and prices as the invoice (``_lines_for_subscription``), from
    the usage analytics has so far (``usage_for_subscription`` up to ``now``), so it grows into
    the invoice. Nothing is stored."""
    period_start, period_end = billing_period_containing(now)
    lines: list[InvoiceLine] = []
    for subscription in billable_subscriptions(period_start=period_start, period_end=period_end, owner=user):
        usage = usage_for_subscription(subscription=subscription, start=period_start, end=now)
        counted = counted_usage(subscription=subscription, start=period_start, end=now)
        lines.extend(_lines_for_subscription(subscription=subscription, usage=usage, counted=counted))
    totals: dict[str, int] = {}
    for line in lines:
        currency = line.subscription.plan.currency
        totals[currency] = totals.get(currency, 0) + line.amount_minor
    return PeriodEstimate(period_start=period_start, period_end=period_end, lines=lines, totals=totals)


def invoice_period_close(
    *, period_start: datetime, period_end: datetime, allow_open: bool = False
) -> list[Invoice]:
    """Create the invoices of the billing period ``[period_start, period_end)`` (aware datetimes).

    One invoice per (billing account, period, currency); a billing account is a consumer user who
    owns applications with billable subscriptions (see ``billable_subscriptions``). Each
    subscription gets a base-fee line (if its plan has a flat fee) and an events line (if its plan
    prices events; quantity = started blocks of 1,000 events over the included amount), both
    carrying the period's events and bytes from analytics (direction "out"). A plan whose
    ``quota_action`` is "overage" adds an events-overage line and/or a bytes-overage line when
    the counted directions' usage exceeds the quota and the overage price is not zero
    (``events_overage_charge``, ``bytes_overage_charge``); those lines carry the counted usage.

    Safe to run twice or concurrently: invoices are created with ``get_or_create`` under the
    ``unique_invoice_per_period`` constraint, each together with its lines in one transaction, and
    an invoice that already exists is left untouched (issued invoices are immutable).

    A period that has not ended ``grace_period()`` ago is refused: its invoice would be issued
    (and immutable) before all its usage is in. ``allow_open=True`` closes it anyway (operators'
    tests and demos; later usage in that period is then never billed). A period that overlaps an
    invoiced period of any account without being that same period is refused too: its flat fees
    and the events in the overlap would be billed a second time.

    Returns the invoices this call created (empty when the period was already closed).
    Raises ``ValueError`` if the bounds are naive or not increasing, the period is still open, or
    it overlaps an invoiced period.
    """
    if period_start.tzinfo is None or period_end.tzinfo is None or period_start >= period_end:
        raise ValueError(f"Invalid billing period {period_start!r} – {period_end!r}.")
    closes_at = period_end + grace_period()
    if not allow_open and closes_at > timezone.now():
        raise ValueError(
            f"The billing period ending {period_end:%Y-%m-%d %H:%M} UTC is still open: it can be closed "
            f"from {closes_at:%Y-%m-%d %H:%M} UTC, after the grace period for late usage."
        )
    _check_no_overlap(period_start=period_start, period_end=period_end)

    by_owner: dict[int, list[Subscription]] = defaultdict(list)
    for subscription in billable_subscriptions(period_start=period_start, period_end=period_end):
        by_owner[subscription.application.owner_id].append(subscription)

    created: list[Invoice] = []
    for subscriptions in by_owner.values():
        created.extend(
            _invoice_account_period(subscriptions=subscriptions, start=period_start, end=period_end)
        )
    logger.info("Closed billing period %s – %s: %d new invoices", period_start, period_end, len(created))
    return created


def _check_no_overlap(*, period_start: datetime, period_end: datetime) -> None:
    """Raise ``ValueError`` naming an invoiced period that overlaps ``[period_start, period_end)``
    but is not exactly it (the same period again is fine: closing is idempotent)."""
    overlapping = (
        Invoice.objects.filter(period_start__lt=period_end, period_end__gt=period_start)
        .exclude(period_start=period_start, period_end=period_end)
        .order_by("period_start", "pk")
        .first()
    )
    if overlapping is not None:
        raise ValueError(
            f"The billing period {_utc(period_start)} – {_utc(period_end)} UTC overlaps the period "
            f"{_utc(overlapping.period_start)} – {_utc(overlapping.period_end)} UTC already invoiced "
            f"(invoice {overlapping.pk}): closing it would bill flat fees and events a second time. "
            "Close that same period, or one that starts where it ends."
        )


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M}"


def invoice_closed_periods(*, now: datetime, grace: timedelta | None = None) -> list[Invoice]:
    """Close the most recent calendar month (UTC) that ended at least ``grace`` before ``now``.

    Run hourly by Celery beat; every run after the first for a month creates nothing.
    Returns the invoices created by this run.
    """
    period_start, period_end = last_closed_period(now=now, grace=grace)
    return invoice_period_close(period_start=period_start, period_end=period_end)


def _invoice_account_period(
    *, subscriptions: list[Subscription], start: datetime, end: datetime
) -> list[Invoice]:
    """Create one account's invoices for one period (one per currency); returns the new ones."""
    lines_by_currency: dict[str, list[InvoiceLine]] = defaultdict(list)
    for subscription in subscriptions:
        usage = usage_for_subscription(subscription=subscription, start=start, end=end)
        counted = (
            counted_usage(subscription=subscription, start=start, end=end)
            if bills_overage(subscription.plan)
            else UsageTotals()
        )
        if subscription.status == Subscription.Status.CANCELLED and not (usage.events or counted.events):
            # Without a cancellation time, usage in the period is the evidence it was live then.
            continue
        lines_by_currency[subscription.plan.currency.lower()].extend(
            _lines_for_subscription(subscription=subscription, usage=usage, counted=counted)
        )

    created: list[Invoice] = []
    owner = subscriptions[0].application.owner
    for currency, lines in sorted(lines_by_currency.items()):
        if not lines:
            continue
        with transaction.atomic():
            account, _ = BillingAccount.objects.get_or_create(owner=owner)
            invoice, was_created = Invoice.objects.get_or_create(
                account=account,
                period_start=start,
                period_end=end,
                currency=currency,
                defaults={"total_minor": sum(line.amount_minor for line in lines)},
            )
            if not was_created:
                continue
            for line in lines:
                line.invoice = invoice
            InvoiceLine.objects.bulk_create(lines)
        created.append(invoice)
    return created


def _lines_for_subscription(
    *, subscription: Subscription, usage: UsageTotals, counted: UsageTotals
) -> list[InvoiceLine]:
    """Unsaved invoice lines for one subscription's period: base fee and/or events (from
    ``usage``, direction "out"), then events and/or bytes overage (from ``counted``, the plan's
    counted directions) when they charge something."""
    plan = subscription.plan
    label = f"{subscription.api.name} — {plan.name} ({subscription.application.name})"
    common = {"subscription": subscription, "events": usage.events, "bytes": usage.bytes}
    lines = []
    if plan.flat_fee_minor:
        lines.append(
            InvoiceLine(
                kind=InvoiceLine.Kind.BASE_FEE,
                description=_truncate(f"{label}: base fee, {plan.included_events:,} events included"),
                quantity=1,
                unit_amount_minor=plan.flat_fee_minor,
                amount_minor=plan.flat_fee_minor,
                **common,
            )
        )
    if plan.price_per_1000_events_minor:
        charge = events_charge(plan=plan, events=usage.events)
        lines.append(
            InvoiceLine(
                kind=InvoiceLine.Kind.EVENTS,
                description=_truncate(
                    f"{label}: {usage.events:,} events, {plan.included_events:,} included, "
                    f"{charge.blocks:,} × 1,000 events over"
                ),
                quantity=charge.blocks,
                unit_amount_minor=plan.price_per_1000_events_minor,
                amount_minor=charge.amount_minor,
                **common,
            )
        )
    lines.extend(_overage_lines(subscription=subscription, label=label, counted=counted))
    return lines


def _overage_lines(*, subscription: Subscription, label: str, counted: UsageTotals) -> list[InvoiceLine]:
    """Unsaved events- and bytes-overage lines of one subscription's period; a line only when it
    charges something (usage over the quota and a non-zero overage price)."""
    plan = subscription.plan
    directions = str(
        dict(BusinessPlan.CountedDirections.choices).get(plan.counted_directions, plan.counted_directions)
    ).lower()
    common = {"subscription": subscription, "events": counted.events, "bytes": counted.bytes}
    lines = []
    events = events_overage_charge(plan=plan, events=counted.events)
    if events is not None and events.amount_minor:
        price = format_money(events.unit_amount_minor, plan.currency)
        lines.append(
            InvoiceLine(
                kind=InvoiceLine.Kind.EVENTS_OVERAGE,
                description=_truncate(
                    f"{label}: events over the {events.quota:,}-event quota: {events.over:,} "
                    f"({events.counted:,} counted, {directions}), {events.quantity:,} × 1,000 "
                    f"at {price} per 1,000"
                ),
                quantity=events.quantity,
                unit_amount_minor=events.unit_amount_minor,
                amount_minor=events.amount_minor,
                **common,
            )
        )
    size = bytes_overage_charge(plan=plan, size=counted.bytes)
    if size is not None and size.amount_minor:
        price = format_money(size.unit_amount_minor, plan.currency)
        lines.append(
            InvoiceLine(
                kind=InvoiceLine.Kind.BYTES_OVERAGE,
                description=_truncate(
                    f"{label}: bytes over the {human_bytes(size.quota)} quota: {size.over:,} bytes "
                    f"({size.counted:,} counted, {directions}) at {price} per GB, pro rata"
                ),
                quantity=size.quantity,
                unit_amount_minor=size.unit_amount_minor,
                amount_minor=size.amount_minor,
                **common,
            )
        )
    return lines


def _truncate(text: str) -> str:
    return text if len(text) <= _DESCRIPTION_MAX else text[: _DESCRIPTION_MAX - 1] + "…"
