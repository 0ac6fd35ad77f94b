"""Dunning: chasing a failed payment with reminders, suspending after a grace period, and
reinstating when the invoice is paid.

A ``DunningCase`` opens at an invoice's first failed payment (``invoice.payment_failed``,
``billing.webhooks``): ``started_at`` is the failure's time, ``suspend_at`` is
``BILLING_DUNNING_GRACE_SECONDS`` later. Invoices no payment is ever attempted for — approved
invoicing (``send_invoice``), or no card on file — never fail: ``dunning_advance`` opens their case
the same way ("Payment overdue") once they are open in Stripe and unpaid ``BILLING_INVOICE_DUE_DAYS``
(default 30, Stripe's ``days_until_due`` for sent invoices) after they were issued. The consumer
is emailed at once, then every ``BILLING_DUNNING_REMINDER_SECONDS`` while the case is open and
before ``suspend_at`` (``dunning_remind``). At ``suspend_at`` every active subscription of the
billing account's owner on a paid business plan is suspended (``dunning_suspend``:
``subscription_suspend(by=None)``; the gateway closes their live connections with 4403) and
recorded as a ``DunningSuspension``. When the invoice is paid (or voided), ``dunning_resolve``
reinstates exactly the subscriptions the case suspended that are still suspended by it — a
subscription an admin suspended stays suspended.

Every step is safe to run twice or concurrently: a reminder is claimed with a conditional update
of ``next_reminder_at`` before its email goes out (so at most one worker sends it), suspension
and resolution change the case's ``state`` under row locks (invoice, then case, the order the
webhook handlers use), and their emails are sent once that transaction commits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from billing.models import DunningCase, DunningSuspension, Invoice
from portal.models import Subscription
from portal.money import format_money
from portal.services.subscriptions import subscription_reinstate, subscription_suspend

logger = logging.getLogger(__name__)

# A reminder interval below a minute would be a misconfiguration that floods the consumer.
MIN_REMINDER_SECONDS = 60
# The failure message of a case opened for an invoice unpaid past its due date (no failed payment).
OVERDUE_MESSAGE = "Payment overdue"
DEFAULT_INVOICE_DUE_DAYS = 30


def dunning_payment_failed(
    *, invoice: Invoice, failed_at: datetime, message: str = "", now: datetime
) -> DunningCase:
    """Open the invoice's dunning case at its first failed payment, or count one more failure.

    Call inside the transaction that holds ``invoice`` locked. A new case sends its first email
    once that transaction commits; a later failure only raises ``failures`` and keeps the
    newest ``message`` (the charge's failure message). A resolved case stays resolved.
    """
    case = DunningCase.objects.select_for_update().filter(invoice=invoice).first()
    if case is None:
        grace = timedelta(seconds=settings.BILLING_DUNNING_GRACE_SECONDS)
        case = DunningCase.objects.create(
            invoice=invoice,
            started_at=failed_at,
            failures=1,
            last_failure_message=message[:500],
            next_reminder_at=failed_at,
            suspend_at=failed_at + grace,
        )
        _after_commit(dunning_remind, case_pk=case.pk, now=max(now, failed_at))
        return case
    case.failures += 1
    case.last_failure_message = message[:500] or case.last_failure_message
    case.save(update_fields=["failures", "last_failure_message"])
    return case


def dunning_advance(*, now: datetime | None = None) -> dict[str, int]:
    """Suspend the cases whose ``suspend_at`` has come, send the reminders that are due, then open
    cases for overdue invoices (``dunning_overdue``; their first email goes out as a case opened
    by a failed payment's does, not counted in ``reminded``).

    Run by beat (``billing.tasks.dunning_advance_task``); ``now`` defaults to the current time.
    Returns ``{"suspended": cases suspended, "reminded": reminders sent, "overdue": cases opened
    for overdue invoices}`` by this run only.
    """
    now = now or timezone.now()
    open_cases = DunningCase.objects.filter(state=DunningCase.State.OPEN)
    due = list(open_cases.filter(suspend_at__lte=now).order_by("suspend_at").values_list("pk", flat=True))
    suspended = sum(dunning_suspend(case_pk=pk, now=now) for pk in due)
    reminders = list(
        open_cases.filter(next_reminder_at__lte=now).order_by("next_reminder_at").values_list("pk", flat=True)
    )
    reminded = sum(dunning_remind(case_pk=pk, now=now) for pk in reminders)
    overdue = sum(dunning_overdue(invoice_pk=pk, now=now) for pk in overdue_invoices(now=now))
    return {"suspended": suspended, "reminded": reminded, "overdue": overdue}


def _invoice_due_days() -> int:
    return int(getattr(settings, "BILLING_INVOICE_DUE_DAYS", DEFAULT_INVOICE_DUE_DAYS))


def overdue_invoices(*, now: datetime) -> list[int]:
    """Ids of invoices that are due but were never chased: open, for more than nothing
    (``total_minor`` > 0), pushed to Stripe (``stripe_synced_at``), issued more than
    ``BILLING_INVOICE_DUE_DAYS`` days before ``now``, and without a dunning case. Oldest first."""
    return list(
        Invoice.objects.filter(
            status=Invoice.Status.OPEN,
            total_minor__gt=0,
            stripe_synced_at__isnull=False,
            issued_at__lt=now - timedelta(days=_invoice_due_days()),
            dunning__isnull=True,
        )
        .order_by("issued_at", "pk")
        .values_list("pk", flat=True)
    )


def dunning_overdue(*, invoice_pk: int, now: datetime) -> bool:
    """Open the dunning case of an overdue invoice (``overdue_invoices``), as a failed payment
    would (``dunning_payment_failed``, message ``OVERDUE_MESSAGE``, starting ``now``); returns
    whether this call opened it. Exactly once however many run at once: the invoice row is locked
    (as the webhook handlers lock it) and the conditions checked again under the lock; the case's
    unique invoice is the backstop."""
    with transaction.atomic():
        invoice = (
            Invoice.objects.select_for_update(of=("self",))
            .filter(pk=invoice_pk, status=Invoice.Status.OPEN, total_minor__gt=0)
            .first()
        )
        if invoice is None or DunningCase.objects.filter(invoice=invoice).exists():
            return False  # paid, voided or chased meanwhile
        dunning_payment_failed(invoice=invoice, failed_at=now, message=OVERDUE_MESSAGE, now=now)
    logger.info("Invoice %s is overdue: dunning case opened", invoice_pk)
    return True


def dunning_remind(*, case_pk: int, now: datetime) -> bool:
    """Send the case's due reminder (the first one is the failure notice); returns whether this
    call sent it. Missed reminders are not sent in a burst: the next one is the first
    ``started_at + k × BILLING_DUNNING_REMINDER_SECONDS`` after ``now``, and none at or after
    ``suspend_at`` (the suspension email comes instead)."""
    case = DunningCase.objects.filter(
        pk=case_pk, state=DunningCase.State.OPEN, next_reminder_at__lte=now
    ).first()
    if case is None or case.next_reminder_at is None:
        return False
    due = case.next_reminder_at
    interval = timedelta(seconds=max(MIN_REMINDER_SECONDS, settings.BILLING_DUNNING_REMINDER_SECONDS))
    following: datetime | None = due + ((now - due) // interval + 1) * interval
    if following is not None and following >= case.suspend_at:
        following = None
    claimed = DunningCase.objects.filter(
        pk=case_pk, state=DunningCase.State.OPEN, next_reminder_at=due
    ).update(next_reminder_at=following, reminders_sent=F("reminders_sent") + 1)
    if not claimed:
        return False  # another worker sent it
    _after_commit(_email, "reminder", case_pk=case_pk, number=case.reminders_sent + 1)
    return True


def dunning_suspend(*, case_pk: int, now: datetime) -> bool:
    """Suspend the account's active subscriptions on paid plans once ``suspend_at`` has come;
    returns whether this call did it (False: not due, done already, or the invoice was paid or
    voided meanwhile — then the case is resolved instead).

    The reason each subscription shows is "Payment failed for invoice … — pay it at … to
    reinstate." A subscription that stopped being active meanwhile (an admin suspended or
    cancelled it) is skipped, and never reinstated by this case.
    """
    invoice_id = DunningCase.objects.filter(pk=case_pk).values_list("invoice_id", flat=True).first()
    if invoice_id is None:
        return False
    with transaction.atomic():
        invoice = (
            Invoice.objects.select_for_update(of=("self",))
            .select_related("account__owner")
            .get(pk=invoice_id)
        )
        case = (
            DunningCase.objects.select_for_update()
            .filter(pk=case_pk, state=DunningCase.State.OPEN, suspend_at__lte=now)
            .first()
        )
        if case is None:
            return False
        if invoice.status in (Invoice.Status.PAID, Invoice.Status.VOID):
            reason = "voided" if invoice.status == Invoice.Status.VOID else "paid"
            dunning_resolve(invoice=invoice, reason=reason, now=now)
            return False
        links = _links(invoice)
        reason = (
            f"Payment failed for invoice {invoice.pk} ({invoice.period_label}, "
            f"{format_money(invoice.total_minor, invoice.currency)}) — pay it at {links['pay_url']} "
            "to reinstate."
        )
        suspended = []
        for subscription in _paid_active_subscriptions(owner_id=invoice.account.owner_id):
            try:
                subscription = subscription_suspend(subscription=subscription, by=None, reason=reason)
            except ValidationError:
                continue  # no longer active: someone else changed it meanwhile
            DunningSuspension.objects.create(
                case=case, subscription=subscription, suspended_at=subscription.decided_at
            )
            suspended.append(subscription.pk)
        case.state, case.suspended_at, case.next_reminder_at = DunningCase.State.SUSPENDED, now, None
        case.save(update_fields=["state", "suspended_at", "next_reminder_at"])
        _after_commit(_email, "suspended", case_pk=case.pk, subscription_ids=suspended)
    logger.info("Dunning case %s: suspended subscriptions %s", case_pk, suspended)
    return True


def _paid_active_subscriptions(*, owner_id: int) -> list[Subscription]:
    subscriptions = Subscription.objects.filter(
        application__owner_id=owner_id, status=Subscription.Status.ACTIVE
    ).select_related("plan")
    return [subscription for subscription in subscriptions.order_by("pk") if not subscription.plan.is_free]


def dunning_resolve(*, invoice: Invoice, reason: str, now: datetime) -> DunningCase | None:
    """End the invoice's dunning case (``reason`` "paid" or "voided") and reinstate the
    subscriptions it suspended that are still suspended by it: suspended, by the system, at the
    moment the case recorded. One whose suspension an admin has since replaced stays suspended;
    one that another suspended case of the same account also holds is handed to that case
    instead (its own invoice is still unpaid). Returns the case, or None without an unresolved one.

    Call inside the transaction that holds ``invoice`` locked; the "resolved" email goes out
    after the commit.
    """
    case = (
        DunningCase.objects.select_for_update()
        .filter(invoice=invoice)
        .exclude(state=DunningCase.State.RESOLVED)
        .first()
    )
    if case is None:
        return None
    reinstated = []
    for suspension in case.suspensions.filter(reinstated_at__isnull=True).select_related("subscription"):
        subscription = suspension.subscription
        if not (
            subscription.status == Subscription.Status.SUSPENDED
            and subscription.decided_by_id is None
            and subscription.decided_at == suspension.suspended_at
        ):
            continue
        other = (
            DunningCase.objects.filter(
                invoice__account_id=invoice.account_id, state=DunningCase.State.SUSPENDED
            )
            .exclude(pk=case.pk)
            .order_by("started_at")
            .first()
        )
        if other is not None:
            DunningSuspension.objects.get_or_create(
                case=other, subscription=subscription, defaults={"suspended_at": suspension.suspended_at}
            )
            continue
        try:
            subscription_reinstate(
                subscription=subscription, by=None, reason=f"Invoice {invoice.pk} {reason}."
            )
        except ValidationError:
            continue  # its API was retired meanwhile
        suspension.reinstated_at = now
        suspension.save(update_fields=["reinstated_at"])
        reinstated.append(subscription.pk)
    was_suspended = case.state == DunningCase.State.SUSPENDED
    case.state, case.resolved_at, case.next_reminder_at = DunningCase.State.RESOLVED, now, None
    case.save(update_fields=["state", "resolved_at", "next_reminder_at"])
    _after_commit(
        _email,
        "resolved",
        case_pk=case.pk,
        subscription_ids=reinstated,
        reason=reason,
        was_suspended=was_suspended,
    )
    return case


def _after_commit(func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Call ``func(*args, **kwargs)`` once the current transaction commits (at once outside
    one). An error is logged, not raised: the change it follows is committed either way."""

    def call() -> None:
        func(*args, **kwargs)

    transaction.on_commit(call, robust=True)


# --- Emails ------------------------------------------------------------------------------------


def _links(invoice: Invoice) -> dict[str, str]:
    """Absolute links for emails and reasons: the invoice page here, and where to pay (Stripe's
    hosted invoice page when known, else the invoice page)."""
    base = settings.EVENTGATE_PUBLIC_URL.rstrip("/")
    invoice_url = base + invoice.get_absolute_url()
    return {
        "invoice_url": invoice_url,
        "invoices_url": base + reverse("billing:invoice_list"),
        "pay_url": invoice.hosted_invoice_url or invoice_url,
    }


def _when(moment: datetime | None) -> str:
    if moment is None:
        return ""
    moment = moment.astimezone(UTC)
    return f"{moment.day} {moment:%B %Y, %H:%M} UTC"


def _subject(kind: str, context: dict[str, Any]) -> str:
    what = f"Eventgate invoice for {context['period']} ({context['amount']})"
    if kind == "reminder" and context["first"]:
        overdue = context["failure_message"] == OVERDUE_MESSAGE
        return f"Payment overdue: {what}" if overdue else f"Payment failed: {what}"
    if kind == "reminder":
        return f"Reminder: {what} is unpaid"
    if kind == "suspended":
        return f"Subscriptions suspended: {what} is unpaid"
    if context["reason"] == "voided":
        return f"Invoice voided: {what}"
    return f"Payment received: {what}"


def _email(kind: str, *, case_pk: int, subscription_ids: list[int] | None = None, **extra: Any) -> None:
    """Email the consumer about their case: ``kind`` "reminder" (``number`` 1 is the failure
    notice), "suspended" or "resolved" (``reason``, ``was_suspended``). Text and HTML from
    ``templates/billing/email/dunning_<kind>.{txt,html}``, sent with Django's ``send_mail``."""
    case = DunningCase.objects.select_related("invoice__account__owner").get(pk=case_pk)
    invoice = case.invoice
    subscriptions = Subscription.objects.filter(pk__in=subscription_ids or []).select_related(
        "application", "api", "plan"
    )
    context = {
        "user": invoice.account.owner,
        "invoice": invoice,
        "case": case,
        "amount": format_money(invoice.total_minor, invoice.currency),
        "period": invoice.period_label,
        "suspend_at": _when(case.suspend_at),
        "failure_message": case.last_failure_message,
        "subscriptions": [
            f"{s.application.name} → {s.api.name} ({s.plan.name})" for s in subscriptions.order_by("pk")
        ],
        "first": extra.get("number") == 1,
        "due_days": _invoice_due_days(),
        **_links(invoice),
        **extra,
    }
    send_mail(
        subject=_subject(kind, context),
        message=render_to_string(f"billing/email/dunning_{kind}.txt", context),
        from_email=None,
        recipient_list=[invoice.account.owner.email],
        html_message=render_to_string(f"billing/email/dunning_{kind}.html", context),
    )
    logger.info("Dunning case %s: %s email sent to %s", case_pk, kind, invoice.account.owner.email)
