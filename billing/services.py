"""Billing services: closed usage periods become invoices in Eventgate's own ledger.

Billing periods are calendar months in UTC. A period is closed (invoiced) once it has ended and a
grace period for late gateway flushes has passed. Usage is read only through
``analytics.services.usage_for_subscription``, so an invoice shows the numbers of the consumer's
usage page. All amounts are integer minor units (cents) of the plan's currency; pricing follows
``portal.models.BusinessPlan``: ``flat_fee + ceil(max(0, events - included_events) / 1000) *
price_per_1000_events``.

Pushing invoices to Stripe lives in ``billing.stripe_sync``; Celery tasks in ``billing.tasks``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from analytics.services import UsageTotals, usage_for_subscription
from billing.models import BillingAccount, Invoice, InvoiceLine
from portal.models import BusinessPlan, Subscription

logger = logging.getLogger(__name__)

EVENTS_PER_BLOCK = 1000
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


def billable_subscriptions(*, period_start: datetime, period_end: datetime) -> list[Subscription]:
    """Subscriptions to bill for ``[period_start, period_end)``: on a paid plan, created before
    the period ended, and active or cancelled (pending and rejected ones never went live).

    Free plans are skipped: they never produce a charge, and billing them would create Stripe
    customers and zero invoices for consumers who never pay.
    """
    return list(
        Subscription.objects.filter(
            status__in=[Subscription.Status.ACTIVE, Subscription.Status.CANCELLED], created__lt=period_end
        )
        .exclude(plan__flat_fee_minor=0, plan__price_per_1000_events_minor=0)
        .select_related("plan", "api", "application__owner")
        .order_by("application__owner_id", "pk")
    )


def invoice_period_close(
    *, period_start: datetime, period_end: datetime, allow_open: bool = False
) -> list[Invoice]:
    """Create the invoices of the billing period ``[period_start, period_end)`` (aware datetimes).

    One invoice per (billing account, period, currency); a billing account is a consumer user who
    owns applications with billable subscriptions (see ``billable_subscriptions``). Each
    subscription gets a base-fee line (if its plan has a flat fee) and an events line (if its plan
    prices events; quantity = started blocks of 1,000 events over the included amount), both
    carrying the period's events and bytes from analytics.

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
        if subscription.status == Subscription.Status.CANCELLED and not usage.events:
            # Without a cancellation time, usage in the period is the evidence it was live then.
            continue
        lines_by_currency[subscription.plan.currency.lower()].extend(
            _lines_for_subscription(subscription=subscription, usage=usage)
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


def _lines_for_subscription(*, subscription: Subscription, usage: UsageTotals) -> list[InvoiceLine]:
    """Unsaved invoice lines for one subscription's period: base fee and/or events."""
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
    return lines


def _truncate(text: str) -> str:
    return text if len(text) <= _DESCRIPTION_MAX else text[: _DESCRIPTION_MAX - 1] + "…"
