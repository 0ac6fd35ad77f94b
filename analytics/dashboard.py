"""What every analytics dashboard, CSV export and REST endpoint shares: the date range a user
picked (``DateRangeForm``) and CSV responses.

Query parameters (pages, CSV and REST alike):

- ``range``: a preset, ``1h``, ``6h``, ``24h`` (default), ``7d``, ``30d`` or ``90d``, ending now;
- or ``from`` and ``to``: dates (``YYYY-MM-DD``, UTC, ``to`` inclusive) or ISO 8601 date-times
  (``to`` exclusive); ``to`` defaults to now;
- ``step``: ``minute``, ``hour`` or ``day``; by default the finest that gives at most ~400 points
  (minute up to 6 hours, hour up to 14 days, day beyond) and whose rows are still kept for the
  whole range: a range starting before the minute (hour) rows' retention horizon
  (``ANALYTICS_RETENTION_MINUTE_DAYS``, ``ANALYTICS_RETENTION_HOUR_DAYS``) gets the next coarser
  step, and asking for that step explicitly is an error (those rows were deleted: the chart
  would show zeros, not what happened);
- ``format``: ``csv`` for the CSV export; absent for the page.

Dates go from ``FIRST_DAY`` (2000-01-01) to ``LAST_DAY`` (9998-12-31), so that every bound and
step rounding stays within what a ``datetime`` can hold.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django import forms
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from rest_framework import serializers

from analytics.models import LATENCY_BOUNDS_SECONDS
from analytics.queries import EARLIEST, LATEST, RESOLUTIONS, STEP, ceil, floor
from analytics.rollup import retention_days

PRESETS: dict[str, tuple[timedelta, str]] = {
    "1h": (timedelta(hours=1), "Last hour"),
    "6h": (timedelta(hours=6), "Last 6 hours"),
    "24h": (timedelta(hours=24), "Last 24 hours"),
    "7d": (timedelta(days=7), "Last 7 days"),
    "30d": (timedelta(days=30), "Last 30 days"),
    "90d": (timedelta(days=90), "Last 90 days"),
}
DEFAULT_PRESET = "24h"
MAX_POINTS = 1500
# The dates a range may use (inclusive): a ``to`` date's exclusive end, LAST_DAY + 1 day, is
# analytics.queries.LATEST, and rounding any moment in between up to a day stays below year 10000.
FIRST_DAY = EARLIEST.date()
LAST_DAY = (LATEST - timedelta(days=1)).date()
# What ``format`` may be: absent (the page) or one of these.
FORMATS = ("csv",)


@dataclass(frozen=True)
class DateRange:
    """A resolved range: ``[start, end)`` in UTC, the chart's ``step`` (``minute``/``hour``/
    ``day``), the preset it came from (or ``""`` for from/to) and a label for headings."""

    start: datetime
    end: datetime
    step: str
    preset: str
    label: str

    def query(self) -> str:
        """The query string that gives this range back (for CSV links and pagination)."""
        if self.preset:
            return f"range={self.preset}&step={self.step}"
        return f"from={self.start.isoformat()}&to={self.end.isoformat()}&step={self.step}".replace("+", "%2B")

    def steps(self) -> int:
        """How many ``step`` buckets the range spans."""
        return int((ceil(self.end, self.step) - floor(self.start, self.step)) / STEP[self.step])


def _auto_step(span: timedelta) -> str:
    if span <= timedelta(hours=6):
        return "minute"
    if span <= timedelta(days=14):
        return "hour"
    return "day"


def retention_horizon(step: str, now: datetime) -> datetime | None:
    """The oldest moment whose ``step`` rows (``minute``, ``hour``) are still kept at ``now``:
    ``now`` less ``ANALYTICS_RETENTION_MINUTE_DAYS`` (``..._HOUR_DAYS``); None when they are
    kept for ever (retention 0) and for ``day`` (nothing coarser to fall back on)."""
    if step == "day":
        return None
    days = retention_days(step)
    return now - timedelta(days=days) if days else None


def _moment(value: str, *, end: bool) -> datetime:
    """A date (UTC midnight; the day after for an inclusive ``to``) or an ISO date-time (UTC
    when it has no offset), between ``FIRST_DAY`` and the end of ``LAST_DAY``. Raises
    ``ValueError`` with the message for the field."""
    not_a_date = f'"{value}" is not a date (YYYY-MM-DD) or date-time (ISO 8601)'
    out_of_range = f'"{value}" is out of range: dates go from {FIRST_DAY} to {LAST_DAY}'
    try:
        day = parse_date(value) if len(value) == 10 else None
    except ValueError:
        raise ValueError(not_a_date) from None
    if day is not None:
        if not FIRST_DAY <= day <= LAST_DAY:
            raise ValueError(out_of_range)
        return datetime.combine(day + timedelta(days=1) if end else day, time(), tzinfo=UTC)
    try:
        moment = parse_datetime(value)
    except ValueError:
        raise ValueError(not_a_date) from None
    if moment is None:
        raise ValueError(not_a_date)
    try:
        # Year 1 at +05:00, or year 9999 at -05:00, is outside what a datetime can hold in UTC.
        moment = moment.astimezone(UTC) if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)
    except OverflowError:
        raise ValueError(out_of_range) from None
    if not EARLIEST <= moment <= LATEST:
        raise ValueError(out_of_range)
    return moment


def format_refusal(request: HttpRequest) -> HttpResponse | None:
    """A 400 (plain text, naming ``format``) when the request asks for a ``format`` the
    dashboards do not answer (only ``csv``, or none for the page); None when it is fine."""
    wanted = request.GET.get("format")
    if wanted is None or wanted in ("", *FORMATS):
        return None
    return HttpResponse(
        f"format: {wanted!r} is not one of {', '.join(FORMATS)} (leave it out for the page)",
        status=400,
        content_type="text/plain; charset=utf-8",
    )


class DateRangeForm(forms.Form):
    """The dashboards' date range picker (see the module docstring). ``date_range`` after
    ``is_valid()``; errors name the field (``from``, ``to``, ``range``, ``step``) and say what
    is wrong, e.g. ``from: "2026-13-01" is not a date (YYYY-MM-DD) or date-time (ISO 8601)``."""

    range = forms.ChoiceField(choices=[(key, label) for key, (_, label) in PRESETS.items()], required=False)
    from_ = forms.CharField(required=False, max_length=40)
    to = forms.CharField(required=False, max_length=40)
    step = forms.ChoiceField(choices=[(step, step) for step in RESOLUTIONS], required=False)

    def __init__(self, data: Any = None, *, now: datetime | None = None, **kwargs: Any) -> None:
        data = data.copy() if data is not None else {}
        if "from" in data:
            data["from_"] = data.get("from")
        super().__init__(data, **kwargs)
        self.now = now or timezone.now()
        self.fields["from_"].label = "From"

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        raw_from, raw_to = cleaned.get("from_") or "", cleaned.get("to") or ""
        preset = cleaned.get("range") or ""
        if raw_from or raw_to:
            start = self._parsed("from_", raw_from, end=False) if raw_from else None
            if not raw_from:
                self.add_error("from_", "give a start date with the end date (or choose a preset range)")
            end = self._parsed("to", raw_to, end=True) if raw_to else self.now
            if start is not None and end is not None and end <= start:
                self._order_error(raw_from, raw_to)
            preset = ""
        else:
            preset = preset or DEFAULT_PRESET
            end = self.now
            start = end - PRESETS[preset][0]
        if self.errors:
            return cleaned
        assert start is not None and end is not None
        step = self._step(cleaned.get("step") or "", start, end)
        if step is None:
            return cleaned
        label = PRESETS[preset][1] if preset else f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} UTC"
        cleaned["date_range"] = DateRange(start=start, end=end, step=step, preset=preset, label=label)
        return cleaned

    def _parsed(self, field: str, raw: str, *, end: bool) -> datetime | None:
        """``raw`` as a moment (``_moment``), or None after adding its error to ``field``."""
        try:
            return _moment(raw, end=end)
        except ValueError as error:
            self.add_error(field, str(error))
            return None

    def _order_error(self, raw_from: str, raw_to: str) -> None:
        """The error of an end that is not after the start, in the values the user typed (an
        inclusive ``to`` date ends at midnight after it, which is not what they wrote)."""
        if not raw_to:
            self.add_error(
                "from_",
                f"the start ({raw_from}) must be before now ({self.now:%Y-%m-%d %H:%M} UTC), "
                "or give an end date",
            )
            return
        through = ", through the end of that day" if len(raw_to) == 10 else ""
        self.add_error("to", f"the end ({raw_to}{through}) must be after the start ({raw_from})")

    def _step(self, asked: str, start: datetime, end: datetime) -> str | None:
        """The step for ``[start, end)``: ``asked``, or the finest fitting one (module
        docstring). None after adding an error to ``step``: too many points, or rows of that
        step no longer kept for the whole range."""
        step = asked or _auto_step(end - start)
        if not asked:
            while (horizon := retention_horizon(step, self.now)) is not None and start < horizon:
                step = RESOLUTIONS[RESOLUTIONS.index(step) + 1]
        points = DateRange(start=start, end=end, step=step, preset="", label="").steps()
        if points > MAX_POINTS:
            if step == "day":
                message = (
                    f"the range spans {points:,} days; at most {MAX_POINTS:,} days at a time: "
                    "pick a shorter range"
                )
            else:
                message = f"{points:,} {step}s are too many points (max {MAX_POINTS:,}): pick a larger step"
            self.add_error("step", message)
            return None
        horizon = retention_horizon(step, self.now)
        if horizon is not None and start < horizon:
            coarser = RESOLUTIONS[RESOLUTIONS.index(step) + 1]
            self.add_error(
                "step",
                f"per-{step} rows are kept {retention_days(step):,} days (back to "
                f"{horizon:%Y-%m-%d %H:%M} UTC): this range starts earlier, so choose "
                f"step={coarser} or a later start",
            )
            return None
        return step

    @property
    def date_range(self) -> DateRange:
        """The resolved range (only after ``is_valid()`` returned True)."""
        return self.cleaned_data["date_range"]

    def error_text(self) -> str:
        """All errors as one line, ``field: message; ...`` (``from_`` shown as ``from``)."""
        return "; ".join(
            f"{'from' if field == 'from_' else field}: {' '.join(messages)}"
            for field, messages in self.errors.items()
        )


# A cell starting with one of these is a formula to a spreadsheet (CSV injection, OWASP).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """One CSV cell: datetimes in ISO 8601 (UTC), dates as ``YYYY-MM-DD``, and text that a
    spreadsheet would run as a formula (an application named ``=HYPERLINK(...)``) prefixed with
    ``'`` so it stays text."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def csv_response(filename: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> HttpResponse:
    """A ``text/csv`` download named ``filename`` (RFC 4180: CRLF line ends, quoted as needed)
    with a header row; cells as ``csv_cell`` writes them."""
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(header)
    for row in rows:
        writer.writerow([csv_cell(value) for value in row])
    return response


class LatencySecondsField(serializers.FloatField):
    """A latency percentile in seconds for REST: null when nothing was measured or when the
    percentile lies in the histogram's open bucket, above its last bound (60 s; JSON has no
    infinity)."""

    def to_representation(self, value: Any) -> Any:
        return None if value is None or value == math.inf else super().to_representation(value)


def latency_text(seconds: float | None) -> str:
    """A latency percentile (a histogram bucket's upper bound, ``analytics.queries.percentiles``)
    in words: ``0.005`` → ``"≤ 5 ms"``, ``1.5`` → ``"≤ 1.5 s"``, infinity → ``"> 60 s"`` (the open
    bucket); None → ``"–"``."""
    if seconds is None:
        return "–"
    if seconds == math.inf:
        return f"> {LATENCY_BOUNDS_SECONDS[-1]:g} s"
    if seconds < 1:
        return f"≤ {seconds * 1000:g} ms"
    return f"≤ {seconds:g} s"
