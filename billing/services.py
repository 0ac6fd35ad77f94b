"""Billing services: pricing, billing periods, and invoices issued from the usage ledger.

Usage reaches invoices through the ledger (``billing.ledger``): hourly usage windows closed into
``LedgerEntry`` rows from ``analytics.services`` (the numbers of the consumer's usage page), with
late usage as adjustment entries. Billing periods are calendar months (or years, for plans with
``billing_period = "year"``) in UTC; a period is invoiced once it ended and a grace period for
late gateway flushes passed. All amounts are integer minor units (cents) of the plan's currency;
pricing follows ``portal.models.BusinessPlan``: ``flat_fee`` + per started 1,000 events over
``included_events`` (single price or graduated ``price_tiers``, ``events_charge``) + bandwidth
over ``included_bytes`` (``bandwidth_charge``), plus, for plans whose ``quota_action`` is
"overage", the events and bytes of the plan's ``counted_directions`` over ``quota_events`` /
``quota_bytes`` (``events_overage_charge``, ``bytes_overage_charge``). Throttled events and bytes
(the usage rows' ``throttled_*`` columns) are never read, so never billed. Rules: docs/billing.md.

Pushing invoices to Stripe lives in ``billing.stripe_sync``; Celery tasks in ``billing.tasks``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone

from analytics.services import UsageTotals, usage_by_subscription
from billing.ledger import frontier, grace_period, ledger_close_windows, window_ceil
from billing.models import BillingAccount, Credit, Invoice, InvoiceLine, LedgerEntry
from portal.models import BusinessPlan, Subscription
from portal.money import format_money
from portal.plans import BYTES_PER_GB, EVENTS_PER_BLOCK  # 1,000 events; a decimal GB (10^9 bytes)
from portal.templatetags.eventgate import human_bytes

logger = logging.getLogger(__name__)

_DESCRIPTION_MAX = InvoiceLine._meta.get_field("description").max_length or 300
# How far back invoice_closed_periods looks for periods a stopped beat never closed.
CATCH_UP_PERIODS = {"month": timedelta(days=366), "year": timedelta(days=3 * 366)}


@dataclass(frozen=True)
class TierCharge:
    """One graduated tier's share of an events charge: ``events`` billable events in it,
    ``blocks`` started blocks of 1,000, at ``price_minor`` per 1,000 → ``amount_minor``."""

    up_to: int | None
    events: int
    blocks: int
    price_minor: int
    amount_minor: int


@dataclass(frozen=True)
class EventsCharge:
    """The usage charge of one subscription for one period.

    ``billable_events`` = events over the plan's included events; ``blocks`` = started blocks of
    1,000 billable events (per tier, when the plan has ``price_tiers``); ``amount_minor`` = the
    sum over the tiers of ``blocks * price`` (one tier at ``price_per_1000_events_minor`` without
    ``price_tiers``); ``tiers`` = the tiers' shares, for the invoice line's text.
    """

    billable_events: int
    blocks: int
    amount_minor: int
    tiers: tuple[TierCharge, ...] = ()


def events_charge(*, plan: BusinessPlan, events: int) -> EventsCharge:
    """Price ``events`` (a count) under ``plan``: every started block of 1,000 events over the
    included amount costs ``plan.price_per_1000_events_minor``, or, with ``plan.price_tiers``
    (graduated, like Stripe's ``tiers_mode=graduated``: Prices › tiers), the price of the tier the
    block falls in; tier bounds (``up_to``, billable events) are multiples of 1,000
    (``portal.plans`` validates them), so only the last block of the last tier reached is
    partial. Integer arithmetic only; raises nothing."""
    billable = max(0, events - plan.included_events)
    tiers = plan.price_tiers or [
        {"up_to": None, "price_per_1000_events_minor": plan.price_per_1000_events_minor}
    ]
    shares: list[TierCharge] = []
    floor = 0
    for tier in tiers:
        up_to = tier.get("up_to")
        price = int(tier.get("price_per_1000_events_minor") or 0)
        ceiling = billable if up_to is None else min(billable, int(up_to))
        in_tier = max(0, ceiling - floor)
        blocks = -(-in_tier // EVENTS_PER_BLOCK)  # ceiling division without floats
        if in_tier:
            shares.append(TierCharge(up_to, in_tier, blocks, price, blocks * price))
        if up_to is None or billable <= int(up_to):
            break
        floor = int(up_to)
    return EventsCharge(
        billable_events=billable,
        blocks=sum(share.blocks for share in shares),
        amount_minor=sum(share.amount_minor for share in shares),
        tiers=tuple(shares),
    )


@dataclass(frozen=True)
class BandwidthCharge:
    """Bytes over the plan's ``included_bytes`` in one period at ``price_per_gb_minor`` per GB
    (10^9 bytes), pro rata, rounded up to the next minor unit."""

    bytes: int
    over: int
    unit_amount_minor: int
    amount_minor: int


def bandwidth_charge(*, plan: BusinessPlan, size: int) -> BandwidthCharge:
    """Price ``size`` delivered bytes (direction ``out``) under ``plan``'s bandwidth price:
    ``ceil(max(0, size - included_bytes) × price_per_gb_minor / 10^9)``. One byte over at any
    price costs one minor unit. Integer arithmetic only; raises nothing. Rule: docs/billing.md ›
    Pricing."""
    over = max(0, size - plan.included_bytes)
    price = plan.price_per_gb_minor
    return BandwidthCharge(
        bytes=size, over=over, unit_amount_minor=price, amount_minor=-(-(over * price) // BYTES_PER_GB)
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


# Periods -------------------------------------------------------------------------------------------


def billing_period_containing(moment: datetime, kind: str = "month") -> tuple[datetime, datetime]:
    """The billing period (``kind``: ``BusinessPlan.BillingPeriod``, "month" or "year"; calendar
    periods in UTC) containing ``moment``, as ``(start, end)``; ``end`` is exclusive."""
    moment = moment.astimezone(UTC)
    if kind == BusinessPlan.BillingPeriod.YEAR:
        start = moment.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
        return start, start.replace(year=start.year + 1)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def period_kind(period_start: datetime, period_end: datetime) -> str:
    """ "year" for a calendar year (UTC), else "month": the plans whose subscriptions a period
    bills (``BusinessPlan.billing_period``). Operators' custom periods bill monthly plans."""
    start, end = billing_period_containing(period_start, BusinessPlan.BillingPeriod.YEAR)
    if (start, end) == (period_start.astimezone(UTC), period_end.astimezone(UTC)):
        return BusinessPlan.BillingPeriod.YEAR
    return BusinessPlan.BillingPeriod.MONTH


def last_closed_period(
    *, now: datetime, grace: timedelta | None = None, kind: str = "month"
) -> tuple[datetime, datetime]:
    """The most recent calendar month (or year, ``kind``; UTC) that ended at least ``grace``
    before ``now``.

    ``grace`` defaults to ``settings.BILLING_GRACE_SECONDS`` (seconds) or one hour, so usage that
    gateway processes flush late still lands on the invoice.
    """
    current_start, _ = billing_period_containing(now - (grace if grace is not None else grace_period()), kind)
    return billing_period_containing(current_start - timedelta(days=1), kind)


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
    *, period_start: datetime, period_end: datetime, owner: Any = None, kind: str | None = None
) -> list[Subscription]:
    """Subscriptions whose plan's flat fee ``[period_start, period_end)`` charges: live at some
    moment of the period (``Subscription.live_between``: activated before it ended, not ended
    before it began; suspended counts as live) and now on a paid plan (of billing period
    ``kind``, when given); only ``owner``'s applications' when given.

    Free plans are skipped: they never produce a charge, and billing them would create Stripe
    customers and zero invoices for consumers who never pay. A plan without flat fee and event
    price that bills overage (``bills_overage``) is paid: it is billed when usage exceeds a quota.
    Usage is billed from the ledger whatever the subscription's plan or status is now
    (``invoice_period_close``).
    """
    subscriptions = Subscription.objects.filter(activated_at__lt=period_end).filter(
        Q(ended_at__isnull=True) | Q(ended_at__gt=period_start)
    )
    if owner is not None:
        subscriptions = subscriptions.filter(application__owner=owner)
    if kind is not None:
        subscriptions = subscriptions.filter(plan__billing_period=kind)
    return [
        subscription
        for subscription in subscriptions.select_related("plan", "api", "application__owner").order_by(
            "application__owner_id", "pk"
        )
        if not subscription.plan.is_free
    ]


@dataclass(frozen=True)
class PeriodEstimate:
    """What the current billing period would be invoiced if it ended now, for one consumer:
    ``lines`` (unsaved ``InvoiceLine``s, as ``invoice_period_close`` would build them from the
    usage recorded so far) and their totals per currency (minor units)."""

    period_start: datetime
    period_end: datetime
    lines: list[InvoiceLine]
    totals: dict[str, int]
    # Unspent credits per currency (minor units, > 0): the next invoices take them off.
    credits: dict[str, int] = field(default_factory=dict)

    @property
    def due(self) -> dict[str, int]:
        """Per currency, the total less the unspent credits, never below 0: what the invoice
        would ask for."""
        return {
            currency: max(0, total - self.credits.get(currency.lower(), 0))
            for currency, total in self.totals.items()
        }


def period_estimate(*, user: Any, now: datetime) -> PeriodEstimate:
    """The running estimate of the billing period holding ``now`` for ``user``'s active
    subscriptions on paid plans: the same lines and prices as the invoice
    (``_lines_for_subscription``), from the usage analytics has so far (the numbers the ledger's
    windows are made of), so it grows into the invoice. Yearly plans count from the start of the
    year. ``period_start``/``period_end`` are the calendar month's. One usage read per period
    kind in use; nothing is stored."""
    period_start, period_end = billing_period_containing(now)
    subscriptions = [
        subscription
        for subscription in billable_subscriptions(
            period_start=period_start, period_end=period_end, owner=user
        )
        if subscription.status == Subscription.Status.ACTIVE
    ]
    usage: dict[tuple[int, Any, str], UsageTotals] = {}
    for kind in {subscription.plan.billing_period for subscription in subscriptions}:
        start, _end = billing_period_containing(now, kind)
        ids = [s.pk for s in subscriptions if s.plan.billing_period == kind]
        usage.update(usage_by_subscription(start=start, end=now, subscriptions=ids))
    lines: list[InvoiceLine] = []
    for subscription in subscriptions:
        by_direction = {
            direction: usage.get((subscription.pk, None, direction), UsageTotals())
            for direction in ("out", "in")
        }
        counted = [by_direction[direction] for direction in subscription.plan.directions_counted]
        subscription_lines = _lines_for_subscription(
            subscription=subscription,
            usage=by_direction["out"],
            counted=UsageTotals(events=sum(c.events for c in counted), bytes=sum(c.bytes for c in counted)),
        )
        if subscription.plan.billing_period == BusinessPlan.BillingPeriod.YEAR:
            # Invoiced at the year's end: say so, on a page that speaks of this month.
            for line in subscription_lines:
                line.description = _truncate(f"{line.description} · yearly plan, {now:%Y} so far")
        lines.extend(subscription_lines)
    totals: dict[str, int] = {}
    for line in lines:
        currency = line.plan.currency
        totals[currency] = totals.get(currency, 0) + line.amount_minor
    credits: dict[str, int] = {}
    for currency, amount in Credit.objects.filter(account__owner=user, invoice__isnull=True).values_list(
        "currency", "amount_minor"
    ):
        credits[currency.lower()] = credits.get(currency.lower(), 0) + amount
    return PeriodEstimate(
        period_start=period_start, period_end=period_end, lines=lines, totals=totals, credits=credits
    )


def invoice_period_close(
    *, period_start: datetime, period_end: datetime, allow_open: bool = False
) -> list[Invoice]:
    """Issue the invoices of the billing period ``[period_start, period_end)`` (aware datetimes)
    from the usage ledger (``billing.ledger``).

    The ledger's usage windows up to ``period_end`` are closed first (``ledger_close_windows``).
    Then one invoice per (billing account, period, currency): a billing account is a consumer
    user who owns applications with billable subscriptions (``billable_subscriptions``, on plans
    whose ``billing_period`` is the period's kind, ``period_kind``). Lines, per subscription:

    - base fee (plans with a flat fee; a cancelled or suspended subscription only if it has
      usage in the period) — ``quantity`` 1;
    - events over the included amount (plans that price events, ``events_charge``, tiers too);
    - bandwidth over the included bytes (plans with a price per GB, ``bandwidth_charge``);
    - events and bytes overage (plans whose ``quota_action`` is "overage");
    - late usage: adjustment entries of windows in periods already invoiced, priced at what they
      add to that period's charges (``_adjustment_line``).

    and one negative ``credit`` line per unspent ``Credit`` of the account and currency, as far
    as the invoice's total stays ≥ 0 (the rest of a credit carries over).

    Each invoice, its lines, the ledger entries it bills and the credits it spends are one
    transaction; entries are claimed with a conditional update (``invoice IS NULL``), and the
    invoice by ``unique_invoice_per_period``, so a second run, a concurrent run or a retry after
    a crash bills nothing twice. Issued invoices are immutable.

    A period that has not ended ``grace_period()`` ago is refused: its invoice would be issued
    before all its usage is in. ``allow_open=True`` closes it anyway (operators' tests and
    demos; later usage in it becomes an adjustment on the next invoice). A period that overlaps
    an invoiced period of any account without being that same period is refused too.

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
    until = window_ceil(period_end)
    while (frontier() or period_start) < until:
        if not ledger_close_windows(until=until, begin=period_start):
            break

    kind = period_kind(period_start, period_end)
    with_fee = billable_subscriptions(period_start=period_start, period_end=period_end, kind=kind)
    with_usage = Subscription.objects.filter(
        pk__in=_unbilled_entries(start=period_start, end=period_end, kind=kind).values("subscription_id")
    ).select_related("plan", "api", "application__owner")
    by_owner: dict[int, dict[int, Subscription]] = defaultdict(dict)
    for subscription in [*with_fee, *with_usage]:
        by_owner[subscription.application.owner_id][subscription.pk] = subscription

    created: list[Invoice] = []
    fee_ids = {subscription.pk for subscription in with_fee}
    for subscriptions in by_owner.values():
        created.extend(
            _invoice_account_period(
                subscriptions=list(subscriptions.values()),
                fee_ids=fee_ids,
                start=period_start,
                end=period_end,
                kind=kind,
            )
        )
    logger.info("Closed billing period %s – %s: %d new invoices", period_start, period_end, len(created))
    return created


def _check_no_overlap(*, period_start: datetime, period_end: datetime) -> None:
    """Raise ``ValueError`` naming an invoiced period of the same kind (``period_kind``) that
    overlaps ``[period_start, period_end)`` but is not exactly it (the same period again is
    fine: closing is idempotent)."""
    kind = period_kind(period_start, period_end)
    overlapping = [
        invoice
        for invoice in Invoice.objects.filter(period_start__lt=period_end, period_end__gt=period_start)
        .exclude(period_start=period_start, period_end=period_end)
        .order_by("period_start", "pk")
        if period_kind(invoice.period_start, invoice.period_end) == kind
    ]
    if overlapping:
        overlapping_invoice = overlapping[0]
        raise ValueError(
            f"The billing period {_utc(period_start)} – {_utc(period_end)} UTC overlaps the period "
            f"{_utc(overlapping_invoice.period_start)} – {_utc(overlapping_invoice.period_end)} UTC "
            f"already invoiced (invoice {overlapping_invoice.pk}): closing it would bill flat fees and "
            "events a second time. Close that same period, or one that starts where it ends."
        )


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M}"


def invoice_closed_periods(*, now: datetime, grace: timedelta | None = None) -> list[Invoice]:
    """Close every calendar month (UTC) that ended at least ``grace`` before ``now`` and is not
    invoiced yet, and likewise calendar years for yearly plans (``BusinessPlan.billing_period``):
    from the newest invoiced period of that kind (again, for the accounts a crashed run left
    out; at most ``CATCH_UP_PERIODS`` back, so a beat stopped for months catches up) to the
    latest closed one.

    Run hourly by Celery beat; every run after the first for a period creates nothing.
    Returns the invoices created by this run.
    """
    created = []
    for kind in BusinessPlan.BillingPeriod.values:
        last_start, last_end = last_closed_period(now=now, grace=grace, kind=kind)
        newest = (
            Invoice.objects.filter(period_end__lte=last_end)
            .order_by("-period_end")
            .values_list("period_start", "period_end")
        )
        start = last_start
        for invoiced_start, invoiced_end in newest[:50]:  # custom periods aside, the first matches
            if period_kind(invoiced_start, invoiced_end) == kind:
                # Again from the newest invoiced period: a run that crashed part way through it
                # left some accounts without their invoice (closing is idempotent).
                oldest = billing_period_containing(last_start - CATCH_UP_PERIODS[kind], kind)[0]
                start = min(max(invoiced_start, oldest), last_start)
                break
        periods = []
        while start <= last_start:
            periods.append(billing_period_containing(start, kind))
            start = periods[-1][1]
        for period_start, period_end in periods:
            try:
                created.extend(invoice_period_close(period_start=period_start, period_end=period_end))
            except ValueError as error:  # e.g. an operator invoiced an overlapping custom period
                logger.warning("Billing period %s – %s not closed: %s", period_start, period_end, error)
    return created


@dataclass
class _Usage:
    """Ledger sums of one subscription: delivered and counted events and bytes."""

    events: int = 0
    bytes: int = 0
    counted_events: int = 0
    counted_bytes: int = 0

    @property
    def delivered(self) -> UsageTotals:
        return UsageTotals(events=max(0, self.events), bytes=max(0, self.bytes))

    @property
    def counted(self) -> UsageTotals:
        return UsageTotals(events=max(0, self.counted_events), bytes=max(0, self.counted_bytes))

    def __bool__(self) -> bool:
        return any((self.events, self.bytes, self.counted_events, self.counted_bytes))


def _unbilled_entries(*, start: datetime, end: datetime, kind: str) -> Any:
    """Ledger entries an invoice of ``[start, end)`` bills: not billed yet, at a plan of billing
    period ``kind``, of a subscription that went live, of windows in the period, or adjustments
    of windows before it (late usage of periods already invoiced)."""
    entries = LedgerEntry.objects.filter(
        invoice__isnull=True,
        window_start__lt=end,
        plan__billing_period=kind,
        subscription__activated_at__isnull=False,  # usage of a subscription never live is void
    )
    return entries.exclude(kind=LedgerEntry.Kind.USAGE, window_start__lt=start)  # an earlier period's own


def _invoice_account_period(
    *, subscriptions: list[Subscription], fee_ids: set[int], start: datetime, end: datetime, kind: str
) -> list[Invoice]:
    """Create one account's invoices for one period, one per currency of the plans involved (the
    fee-paying subscriptions' plans now, and the plans their unbilled usage was recorded at);
    returns the new ones."""
    ids = [subscription.pk for subscription in subscriptions]
    currencies = {s.plan.currency.lower() for s in subscriptions if s.pk in fee_ids}
    currencies |= {
        currency.lower()
        for currency in _unbilled_entries(start=start, end=end, kind=kind)
        .filter(subscription_id__in=ids)
        .values_list("plan__currency", flat=True)
        .distinct()
    }
    owner = subscriptions[0].application.owner
    created = []
    for currency in sorted(currencies):
        invoice = _issue_invoice(
            owner=owner,
            start=start,
            end=end,
            kind=kind,
            currency=currency,
            subscriptions=subscriptions,
            fee_ids={s.pk for s in subscriptions if s.pk in fee_ids and s.plan.currency.lower() == currency},
        )
        if invoice is not None:
            created.append(invoice)
    return created


class _NothingToBill(Exception):
    """The invoice would charge nothing: roll it back."""


def _issue_invoice(
    *,
    owner: Any,
    start: datetime,
    end: datetime,
    kind: str,
    currency: str,
    subscriptions: list[Subscription],
    fee_ids: set[int],
) -> Invoice | None:
    """One transaction: the invoice (unique per account, period, currency), the ledger entries
    it bills — claimed first, with ``UPDATE … SET invoice WHERE invoice IS NULL``, so an entry a
    concurrent run claimed is never billed twice — the lines built from exactly the claimed
    entries (at the plans they were recorded at) and the flat fees of ``fee_ids``, and the
    credits it spends. None if the invoice already existed or would charge nothing (a usage-only
    plan without usage: no $0 invoices)."""
    by_id = {subscription.pk: subscription for subscription in subscriptions}
    try:
        with transaction.atomic():
            account, _ = BillingAccount.objects.get_or_create(owner=owner)
            invoice, was_created = Invoice.objects.get_or_create(
                account=account,
                period_start=start,
                period_end=end,
                currency=currency,
                defaults={"issued_at": timezone.now()},
            )
            if not was_created:
                return None
            _unbilled_entries(start=start, end=end, kind=kind).filter(
                subscription_id__in=by_id, plan__currency__iexact=currency
            ).update(invoice=invoice)
            lines = _lines_for_invoice(invoice=invoice, by_id=by_id, fee_ids=fee_ids)
            if not any(line.amount_minor for line in lines):
                raise _NothingToBill
            subtotal = sum(line.amount_minor for line in lines)
            lines += _credit_lines(account=account, currency=currency, invoice=invoice, room=subtotal)
            for line in lines:
                line.invoice = invoice
            InvoiceLine.objects.bulk_create(lines)
            invoice.subtotal_minor = sum(line.amount_minor for line in lines)
            invoice.tax_minor = 0
            invoice.total_minor = invoice.subtotal_minor
            invoice.save(update_fields=["subtotal_minor", "tax_minor", "total_minor"])
    except _NothingToBill:
        return None
    return invoice


_SUMS = {"e": Sum("events"), "b": Sum("bytes"), "ce": Sum("counted_events"), "cb": Sum("counted_bytes")}


def _lines_for_invoice(
    *, invoice: Invoice, by_id: dict[int, Subscription], fee_ids: set[int]
) -> list[InvoiceLine]:
    """The lines of ``invoice``: per subscription and plan, the period's charges from the ledger
    entries it claimed, at the plan each entry was recorded at (a plan's flat fee when the
    subscription used the plan in the period, or is in ``fee_ids`` and on it now: no
    proration), and one adjustment line per plan for late usage of earlier periods."""
    claimed = LedgerEntry.objects.filter(invoice=invoice)
    in_period = {
        (row["subscription_id"], row["plan_id"]): _Usage(row["e"], row["b"], row["ce"], row["cb"])
        for row in claimed.filter(window_start__gte=invoice.period_start)
        .values("subscription_id", "plan_id")
        .annotate(**_SUMS)
        .order_by()
    }
    late_rows = list(
        claimed.filter(window_start__lt=invoice.period_start)
        .values("subscription_id", "plan_id", "window_start")
        .annotate(**_SUMS)
        .order_by()
    )
    groups = set(in_period) | {(pk, by_id[pk].plan_id) for pk in fee_ids}
    plans = BusinessPlan.objects.in_bulk(
        {plan_id for _, plan_id in groups} | {r["plan_id"] for r in late_rows}
    )
    late: dict[tuple[int, int], dict[tuple[datetime, datetime], _Usage]] = defaultdict(
        lambda: defaultdict(_Usage)
    )
    for row in late_rows:
        plan = plans[row["plan_id"]]
        usage = late[(row["subscription_id"], plan.pk)][
            billing_period_containing(row["window_start"], plan.billing_period)
        ]
        usage.events += row["e"]
        usage.bytes += row["b"]
        usage.counted_events += row["ce"]
        usage.counted_bytes += row["cb"]

    lines: list[InvoiceLine] = []
    for subscription_id, plan_id in sorted(groups):
        subscription, plan = by_id[subscription_id], plans[plan_id]
        usage = in_period.get((subscription_id, plan_id), _Usage())
        counted = usage.counted if bills_overage(plan) else UsageTotals()
        fee = (subscription_id, plan_id) in in_period or (
            subscription_id in fee_ids and plan_id == subscription.plan_id
        )
        lines.extend(
            _lines_for_subscription(
                subscription=subscription, plan=plan, usage=usage.delivered, counted=counted, fee=fee
            )
        )
    for (subscription_id, plan_id), periods in sorted(late.items()):
        line = _adjustment_line(
            subscription=by_id[subscription_id], plan=plans[plan_id], late=periods, invoice=invoice
        )
        if line is not None:
            lines.append(line)
    return lines


def _credit_lines(
    *, account: BillingAccount, currency: str, invoice: Invoice, room: int
) -> list[InvoiceLine]:
    """Spend the account's unspent credits in ``currency`` (oldest first) on ``invoice``, up to
    ``room`` (the subtotal, so the total stays ≥ 0); a credit that does not fit whole is split
    and its remainder carries over as a new ``Credit``. Runs in the caller's transaction; the
    credits are locked so two invoices never spend one."""
    lines = []
    for credit in (
        Credit.objects.select_for_update()
        .filter(account=account, currency__iexact=currency, invoice__isnull=True)
        .order_by("created", "pk")
    ):
        if room <= 0:
            break
        amount = min(credit.amount_minor, room)
        if amount < credit.amount_minor:
            Credit.objects.create(
                account=account,
                currency=credit.currency,
                amount_minor=credit.amount_minor - amount,
                reason=_truncate(f"Rest of credit #{credit.pk}: {credit.reason}"),
                created_by=credit.created_by,
            )
            credit.amount_minor = amount
        credit.invoice = invoice
        credit.save(update_fields=["invoice", "amount_minor"])
        room -= amount
        lines.append(
            InvoiceLine(
                kind=InvoiceLine.Kind.CREDIT,
                credit=credit,
                subscription=None,
                description=_truncate(f"Credit: {credit.reason}"),
                quantity=1,
                unit_amount_minor=-amount,
                amount_minor=-amount,
            )
        )
    return lines


def issue_credit(
    *, account: BillingAccount, amount_minor: int, currency: str, reason: str, by: Any
) -> Credit:
    """Record a credit of ``amount_minor`` (> 0, minor units of ``currency``) for ``account``,
    spent on its next invoice(s) in that currency. ``by`` must be a platform admin.

    Raises ``PermissionDenied`` for anyone else or for an admin's own account;
    ``ValidationError`` (fields ``amount_minor``, ``currency``, ``reason``) for a non-positive
    amount, a currency no business plan is priced in (it could never be spent) or an empty
    reason.
    """
    from django.core.exceptions import PermissionDenied, ValidationError

    if not (getattr(by, "is_active", False) and getattr(by, "is_staff", False)):
        raise PermissionDenied("Only platform admins can issue credits.")
    if account.owner_id == by.pk:
        raise PermissionDenied("Admins cannot credit their own billing account: ask another admin.")
    errors = {}
    if not isinstance(amount_minor, int) or amount_minor <= 0:
        errors["amount_minor"] = "A credit is a positive amount in minor units (cents), e.g. 500 for 5.00."
    elif amount_minor > 10**12:
        errors["amount_minor"] = "A credit is at most 10^12 minor units."
    currency = (currency or "").strip().lower()
    in_use = sorted({code.lower() for code in BusinessPlan.objects.values_list("currency", flat=True)})
    if len(currency) != 3 or not currency.isascii() or not currency.isalpha():
        errors["currency"] = "A currency is a three-letter ISO 4217 code, e.g. usd."
    elif currency not in in_use:
        errors["currency"] = (
            f"No business plan is priced in {currency.upper()}, so a credit in it could never be spent. "
            f"Currencies in use: {', '.join(code.upper() for code in in_use) or 'none'}."
        )
    reason = (reason or "").strip()
    if not reason:
        errors["reason"] = "Say why the account is credited: the consumer sees it on the invoice."
    if errors:
        raise ValidationError(errors)
    return Credit.objects.create(
        account=account, amount_minor=amount_minor, currency=currency, reason=reason[:300], created_by=by
    )


def _adjustment_line(
    *,
    subscription: Subscription,
    plan: BusinessPlan,
    late: dict[tuple[datetime, datetime], _Usage],
    invoice: Invoice,
) -> InvoiceLine | None:
    """One line for a subscription's late usage at ``plan`` in periods already invoiced
    (``late``: the adjustment sums per period), priced as what it adds to each period's charges:
    the charges of (billed + late) minus the charges of what that period billed at that plan
    (``LedgerEntry`` rows billed by other invoices than ``invoice``). None when there is nothing
    to show."""
    amount = 0
    events = size = 0
    parts = []
    for (start, end), usage in sorted(late.items()):
        sums = (
            LedgerEntry.objects.filter(
                subscription=subscription,
                plan=plan,
                window_start__gte=start,
                window_start__lt=end,
                invoice__isnull=False,
            )
            .exclude(invoice=invoice)
            .aggregate(**_SUMS)
        )
        billed = _Usage(sums["e"] or 0, sums["b"] or 0, sums["ce"] or 0, sums["cb"] or 0)
        after = _Usage(
            billed.events + usage.events,
            billed.bytes + usage.bytes,
            billed.counted_events + usage.counted_events,
            billed.counted_bytes + usage.counted_bytes,
        )
        amount += _usage_charges(plan, after) - _usage_charges(plan, billed)
        events += usage.events
        size += usage.bytes
        label = f"{start:%B %Y}" if plan.billing_period == BusinessPlan.BillingPeriod.MONTH else f"{start:%Y}"
        parts.append(f"{label}: {usage.events:+,} events, {usage.bytes:+,} bytes")
    if not parts:
        return None
    return InvoiceLine(
        subscription=subscription,
        plan=plan,
        kind=InvoiceLine.Kind.ADJUSTMENT,
        description=_truncate(
            f"{_label(subscription, plan)}: late usage of earlier periods ({'; '.join(parts)})"
        ),
        quantity=1,
        unit_amount_minor=amount,
        amount_minor=amount,
        events=max(0, events),
        bytes=max(0, size),
    )


def _usage_charges(plan: BusinessPlan, usage: _Usage) -> int:
    """What ``usage`` costs under ``plan`` in one period, base fee excluded (minor units)."""
    amount = 0
    if plan.prices_events:
        amount += events_charge(plan=plan, events=max(0, usage.events)).amount_minor
    if plan.price_per_gb_minor:
        amount += bandwidth_charge(plan=plan, size=max(0, usage.bytes)).amount_minor
    if bills_overage(plan):
        for charge in (
            events_overage_charge(plan=plan, events=max(0, usage.counted_events)),
            bytes_overage_charge(plan=plan, size=max(0, usage.counted_bytes)),
        ):
            amount += charge.amount_minor if charge is not None else 0
    return amount


def _label(subscription: Subscription, plan: BusinessPlan | None = None) -> str:
    plan = plan or subscription.plan
    return f"{subscription.api.name} — {plan.name} ({subscription.application.name})"


def _lines_for_subscription(
    *,
    subscription: Subscription,
    usage: UsageTotals,
    counted: UsageTotals,
    plan: BusinessPlan | None = None,
    fee: bool = True,
) -> list[InvoiceLine]:
    """Unsaved invoice lines for one subscription's period: base fee, events and bandwidth
    (from ``usage``, direction "out") as ``plan`` (default: the subscription's) prices them,
    then events and/or bytes overage (from ``counted``, the plan's counted directions) when they
    charge something. ``fee=False`` leaves the base fee out."""
    plan = plan or subscription.plan
    label = _label(subscription, plan)
    common = {"subscription": subscription, "plan": plan, "events": usage.events, "bytes": usage.bytes}
    lines = []
    if fee and plan.flat_fee_minor:
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
    if plan.prices_events:
        charge = events_charge(plan=plan, events=usage.events)
        tiered = bool(plan.price_tiers)
        tiers = ""
        if tiered:
            tiers = (
                " ("
                + ", ".join(
                    f"{share.blocks:,} at {format_money(share.price_minor, plan.currency)}"
                    for share in charge.tiers
                )
                + ")"
                if charge.tiers
                else ""
            )
        lines.append(
            InvoiceLine(
                kind=InvoiceLine.Kind.EVENTS,
                description=_truncate(
                    f"{label}: {usage.events:,} events, {plan.included_events:,} included, "
                    f"{charge.blocks:,} × 1,000 events over{tiers}"
                ),
                quantity=charge.blocks,
                # Tiered: the average price per 1,000 (the tiers are in the description).
                unit_amount_minor=(charge.amount_minor // charge.blocks if charge.blocks else 0)
                if tiered
                else plan.price_per_1000_events_minor,
                amount_minor=charge.amount_minor,
                **common,
            )
        )
    if plan.price_per_gb_minor:
        bandwidth = bandwidth_charge(plan=plan, size=usage.bytes)
        price = format_money(plan.price_per_gb_minor, plan.currency)
        lines.append(
            InvoiceLine(
                kind=InvoiceLine.Kind.BANDWIDTH,
                description=_truncate(
                    f"{label}: bandwidth, {human_bytes(usage.bytes)} delivered, "
                    f"{human_bytes(plan.included_bytes)} included, {bandwidth.over:,} bytes over "
                    f"at {price} per GB, pro rata"
                ),
                quantity=bandwidth.over,
                unit_amount_minor=plan.price_per_gb_minor,
                amount_minor=bandwidth.amount_minor,
                **common,
            )
        )
    lines.extend(_overage_lines(subscription=subscription, plan=plan, label=label, counted=counted))
    return lines


def _overage_lines(
    *, subscription: Subscription, plan: BusinessPlan, label: str, counted: UsageTotals
) -> list[InvoiceLine]:
    """Unsaved events- and bytes-overage lines of one subscription's period; a line only when it
    charges something (usage over the quota and a non-zero overage price)."""
    directions = str(
        dict(BusinessPlan.CountedDirections.choices).get(plan.counted_directions, plan.counted_directions)
    ).lower()
    common = {"subscription": subscription, "plan": plan, "events": counted.events, "bytes": counted.bytes}
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
