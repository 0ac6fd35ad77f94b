"""Forms of the billing pages (``billing.views``) and the checks the REST API shares with them
(``billing.api``): billing periods in query strings, the admin's invoice filters, re-running a
usage window, issuing a credit and approving paying by invoice.

Amounts typed by people are major units ("12.50"); they become integer minor units with
``Decimal`` only, never ``float`` (``amount_to_minor``). Times are UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.db.models import Q
from django.utils import timezone

from billing.ledger import WINDOW
from billing.models import Invoice
from billing.services import billing_period_containing
from portal.models import API, User
from portal.money import ZERO_DECIMAL_CURRENCIES, format_money

# Usage windows and billing periods before this are refused: the platform holds nothing older,
# and arithmetic on a window near year 1 would overflow a datetime.
EARLIEST_WINDOW = datetime(2000, 1, 1, tzinfo=UTC)
MAX_CREDIT_MINOR = 10**12  # billing.services.issue_credit's upper bound
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_YEAR = re.compile(r"^(\d{4})$")
# ASCII digits (\d would admit other scripts' digits), one optional dot and decimals.
_AMOUNT = re.compile(r"^([0-9]+)(?:\.([0-9]+))?$")


# --- periods ---------------------------------------------------------------------------------


def parse_period(value: str) -> tuple[datetime, datetime]:
    """A billing period from a query string: ``"2026-10"`` → October 2026, ``"2026"`` → the
    calendar year 2026 (yearly plans), both UTC, as ``(start, end)`` with ``end`` exclusive
    (``billing.services.billing_period_containing``). Raises ``ValueError`` with a message for
    people for anything else, or a year before 2000 or after 9998."""
    text = (value or "").strip().replace("\x00", "")  # echoed in the error: no NUL characters
    month, year = _MONTH.match(text), _YEAR.match(text)
    try:
        if month:
            start = datetime(int(month[1]), int(month[2]), 1, tzinfo=UTC)
            kind = "month"
        elif year:
            start = datetime(int(year[1]), 1, 1, tzinfo=UTC)
            kind = "year"
        else:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"“{text[:40]}” is not a billing period: a month as YYYY-MM (2026-10) or a year as YYYY (2026)."
        ) from None
    if not 2000 <= start.year <= 9998:
        raise ValueError("A billing period lies between the years 2000 and 9998.")
    return billing_period_containing(start, kind)


def period_value(start: datetime, end: datetime) -> str:
    """What ``parse_period`` reads back for a calendar month (``"2026-10"``) or year
    (``"2026"``); ``""`` for an operator's custom period, which has no short name."""
    start = start.astimezone(UTC)
    if billing_period_containing(start, "month") == (start, end.astimezone(UTC)):
        return f"{start:%Y-%m}"
    if billing_period_containing(start, "year") == (start, end.astimezone(UTC)):
        return f"{start:%Y}"
    return ""


def period_starts_within(start: datetime, end: datetime, *, prefix: str = "") -> Q:
    """Invoices (``prefix="invoice__"``: invoice lines) whose billing period starts in
    ``[start, end)``: for ``parse_period("2026")`` every monthly and the yearly invoice of 2026,
    for ``"2026-10"`` those of October 2026 (UTC; ``end`` exclusive)."""
    return Q(**{f"{prefix}period_start__gte": start, f"{prefix}period_start__lt": end})


class PeriodField(forms.CharField):
    """An optional billing period, ``YYYY-MM`` or ``YYYY``; ``cleaned_data`` holds
    ``(start, end)`` or None."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("max_length", 20)
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> tuple[datetime, datetime] | None:  # type: ignore[override]
        text = super().to_python(value)
        if not text:
            return None
        try:
            return parse_period(text)
        except ValueError as error:
            raise forms.ValidationError(str(error)) from None


# --- the admin's invoice list ------------------------------------------------------------------


class InvoiceFilterForm(forms.Form):
    """Filters of the admin's invoice list (page and ``/api/v1/billing/admin/invoices/``):
    ``status`` (an ``Invoice.Status``), ``period`` (``YYYY-MM`` or ``YYYY``), ``email`` (part of
    the account owner's email, case-insensitive)."""

    status = forms.ChoiceField(
        choices=[("", "Any status"), *Invoice.Status.choices],
        required=False,
        widget=forms.Select(attrs={"aria-label": "Status"}),
    )
    period = PeriodField(label="Period", help_text="YYYY-MM, or YYYY for yearly plans")
    email = forms.CharField(required=False, max_length=254, label="Account email")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "filter_%s")
        super().__init__(*args, **kwargs)

    def filter(self, invoices: Any) -> Any:
        """``invoices`` narrowed to the valid filters (call after ``is_valid()``); a period is
        ``period_starts_within``: a year finds its monthly invoices too."""
        data = self.cleaned_data
        if data.get("status"):
            invoices = invoices.filter(status=data["status"])
        if data.get("period"):
            invoices = invoices.filter(period_starts_within(*data["period"]))
        if data.get("email"):
            invoices = invoices.filter(account__owner__email__icontains=data["email"])
        return invoices


# --- the provider's revenue ----------------------------------------------------------------------


class RevenueFilterForm(forms.Form):
    """Filters of the revenue page and ``/api/v1/billing/revenue/``: ``period`` (``YYYY-MM`` or
    ``YYYY``; default: the periods that ended in the last 12 months) and ``api`` (the slug of
    one of the APIs ``user`` manages: ``API.objects.managed_by``)."""

    period = PeriodField(label="Period", help_text="YYYY-MM, or YYYY for yearly plans")
    api = forms.ChoiceField(required=False, label="API")

    def __init__(self, data: Any = None, *, user: Any, **kwargs: Any) -> None:
        super().__init__(data, **kwargs)
        self.apis = {api.slug: api for api in API.objects.managed_by(user).order_by("name")}
        self.fields["api"].choices = [
            ("", "All APIs"),
            *((slug, api.name) for slug, api in self.apis.items()),
        ]
        self.fields["api"].error_messages["invalid_choice"] = "“%(value)s” is not one of your APIs."

    def clean_api(self) -> API | None:
        slug = self.cleaned_data.get("api") or ""
        return self.apis.get(slug)


# --- re-running a usage window ---------------------------------------------------------------------


def check_window_start(start: datetime, *, now: datetime | None = None) -> datetime:
    """``start`` (aware) as UTC if it can start a usage window to re-run: on the hour, from
    2000 on, and ended by ``now``. Raises ``ValueError`` saying which; the ledger's own checks
    (grace period, older than the ledger) follow in ``billing.ledger.window_rerun``."""
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    start = start.astimezone(UTC)
    if start < EARLIEST_WINDOW:
        raise ValueError("A usage window starts in the year 2000 or later.")
    if start != start.replace(minute=0, second=0, microsecond=0):
        raise ValueError(f"A usage window starts on the hour (UTC); {start:%Y-%m-%d %H:%M:%S} does not.")
    now = now or timezone.now()
    if start > now - WINDOW:  # (not start + WINDOW: 9999-12-31 23:00 would overflow)
        raise ValueError(
            f"The window {start:%Y-%m-%d %H:%M} UTC has not ended yet: only past windows can be re-run."
        )
    return start


class WindowRerunForm(forms.Form):
    """Re-run one usage window (``billing.ledger.window_rerun``): the day and hour (UTC) it
    starts, and why (stored on the adjustment entries it writes)."""

    date = forms.DateField(label="Day (UTC)", widget=forms.DateInput(attrs={"type": "date"}))
    hour = forms.TypedChoiceField(
        label="Hour (UTC)", coerce=int, choices=[(hour, f"{hour:02d}:00") for hour in range(24)]
    )
    reason = forms.CharField(
        max_length=250,
        label="Reason",
        help_text="Stored on the adjustment entries; the consumer sees it under the invoice line.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The billing desk shows this form beside the credit form: ids of their own.
        kwargs.setdefault("auto_id", "rerun_%s")
        super().__init__(*args, **kwargs)

    def clean_date(self) -> date:
        day = self.cleaned_data["date"]
        if day < EARLIEST_WINDOW.date():
            raise forms.ValidationError("A usage window starts in the year 2000 or later.")
        if day > timezone.now().astimezone(UTC).date():
            raise forms.ValidationError("This day is in the future: only past windows can be re-run.")
        return day

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        day, hour = cleaned.get("date"), cleaned.get("hour")
        if day is not None and hour is not None:
            start = datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
            try:
                cleaned["start"] = check_window_start(start)
            except ValueError as error:
                self.add_error("hour", str(error))
        return cleaned


# --- issuing a credit --------------------------------------------------------------------------------


def minor_unit_exponent(currency: str) -> int:
    """Digits after the decimal point of ``currency``'s major unit: 0 for Stripe's zero-decimal
    currencies (JPY, ...), else 2 (Stripe docs: Currencies › Zero-decimal currencies)."""
    return 0 if (currency or "").lower() in ZERO_DECIMAL_CURRENCIES else 2


def amount_to_minor(text: str, currency: str) -> int:
    """``"12.50"``, ``"usd"`` → ``1250``; ``"500"``, ``"jpy"`` → ``500``. Exact: ``Decimal``, no
    float. Accepts ASCII digits with an optional single dot and at most the currency's minor
    digits (``minor_unit_exponent``). Raises ``ValueError`` with a message for people: a comma
    (``"1,50"``: "Use a dot for the decimal part"; never read as 150), anything else that is not
    a positive amount, more decimals than the currency has (``"1.005"`` in USD), or more than
    ``MAX_CREDIT_MINOR`` minor units ("too large")."""
    text = (text or "").strip()
    code = (currency or "usd").upper()
    digits = minor_unit_exponent(currency)
    example = "500" if digits == 0 else "12.50"
    if "," in text:
        if digits == 0:
            raise ValueError(f"{code} amounts are whole numbers without separators, e.g. {example}.")
        raise ValueError("Use a dot for the decimal part, e.g. 1.50")
    if text.startswith("-"):
        raise ValueError(f"A credit is a positive amount in {code}, e.g. {example}.")
    match = _AMOUNT.fullmatch(text)
    if not match:
        raise ValueError(f"Enter an amount in {code} with digits and a decimal point, e.g. {example}.")
    fraction = match[2] or ""
    if len(fraction) > digits:
        places = "no decimals" if digits == 0 else f"at most {digits} decimals"
        raise ValueError(f"{code} amounts have {places}: {text} is not a whole number of minor units.")
    minor = Decimal(f"{match[1]}.{fraction or '0'}").scaleb(digits)
    if minor <= 0:
        raise ValueError(f"A credit is a positive amount in {code}, e.g. {example}.")
    if minor > MAX_CREDIT_MINOR:
        raise ValueError(
            f"{text} {code} is too large: a credit is at most {format_money(MAX_CREDIT_MINOR, currency)} "
            f"({MAX_CREDIT_MINOR:,} minor units)."
        )
    return int(minor)


def clean_currency(value: str) -> str:
    """A three-letter ISO 4217 code, lower case (``"USD"`` → ``"usd"``); ``ValueError`` otherwise."""
    code = (value or "").strip().lower()
    if len(code) != 3 or not code.isascii() or not code.isalpha():
        raise ValueError("A currency is a three-letter ISO 4217 code, e.g. usd.")
    return code


def user_for_account(value: str) -> User:
    """The consumer a credit goes to, by email (case-insensitive) or by billing account id.
    Raises ``ValueError`` saying no such account exists."""
    text = (value or "").strip()
    if text.isdigit():
        user = User.objects.filter(billing_account__pk=int(text)).first() if len(text) < 19 else None
        if user is None:
            raise ValueError(f"No billing account has the id {text}.")
        return user
    if "\x00" in text:
        raise ValueError("An email address has no NUL characters.")
    user = User.objects.filter(email__iexact=text).first()
    if user is None:
        raise ValueError(f"No user has the email address “{text[:254]}”.")
    return user


class CreditForm(forms.Form):
    """Issue a credit (``billing.services.issue_credit``): the consumer's email, the amount in
    major units of ``currency`` ("12.50"), and the reason the consumer will read on the invoice.
    ``cleaned_data`` gets ``user`` and ``amount_minor``."""

    account = forms.CharField(
        max_length=254, label="Account email", widget=forms.TextInput(attrs={"autocomplete": "off"})
    )
    amount = forms.CharField(
        max_length=30, label="Amount", help_text="In the currency's major unit, e.g. 12.50"
    )
    currency = forms.CharField(max_length=3, initial="usd", label="Currency")
    reason = forms.CharField(
        max_length=300, label="Reason", help_text="Shown to the consumer on the invoice's credit line."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "credit_%s")
        super().__init__(*args, **kwargs)

    def clean_account(self) -> str:
        value = self.cleaned_data["account"]
        try:
            self.cleaned_data["user"] = user_for_account(value)
        except ValueError as error:
            raise forms.ValidationError(str(error)) from None
        return value

    def clean_currency(self) -> str:
        try:
            return clean_currency(self.cleaned_data["currency"])
        except ValueError as error:
            raise forms.ValidationError(str(error)) from None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if "amount" in cleaned:
            try:
                cleaned["amount_minor"] = amount_to_minor(cleaned["amount"], cleaned.get("currency") or "usd")
            except ValueError as error:
                self.add_error("amount", str(error))
        return cleaned


# --- paying by invoice ----------------------------------------------------------------------------


class InvoicingForm(forms.Form):
    """Approve or withdraw paying by invoice (``billing.payments.invoicing_approve`` /
    ``invoicing_revoke``) for the consumer with this email (case-insensitive), who may have no
    billing account yet. ``cleaned_data`` gets ``user``."""

    APPROVE, WITHDRAW = "approve", "withdraw"

    email = forms.CharField(
        max_length=254, label="Consumer email", widget=forms.TextInput(attrs={"autocomplete": "off"})
    )
    action = forms.ChoiceField(
        choices=[(APPROVE, "Approve paying by invoice"), (WITHDRAW, "Withdraw the approval")],
        initial=APPROVE,
        widget=forms.RadioSelect,
        label="",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "invoicing_%s")
        super().__init__(*args, **kwargs)

    def clean_email(self) -> str:
        text = self.cleaned_data["email"].strip()
        if "\x00" in text:
            raise forms.ValidationError("An email address has no NUL characters.")
        user = User.objects.filter(email__iexact=text).first()
        if user is None:
            raise forms.ValidationError(f"No user has the email address “{text[:254]}”.")
        self.cleaned_data["user"] = user
        return text


def twelve_months_before(moment: datetime) -> datetime:
    """The start of the calendar month (UTC) twelve months before the one holding ``moment``: the
    revenue page's default range holds the periods that ended after it."""
    start, _ = billing_period_containing(moment, "month")
    for _ in range(12):
        start, _ = billing_period_containing(start - timedelta(days=1), "month")
    return start
