"""What every analytics dashboard, CSV export and REST endpoint shares: the date range a user
picked (``DateRangeForm``) and CSV responses.

Query parameters (pages, CSV and REST alike):

- ``range``: a preset, ``1h``, ``6h``, ``24h`` (default), ``7d``, ``30d`` or ``90d``, ending now;
- or ``from`` and ``to``: dates (``YYYY-MM-DD``, UTC, ``to`` inclusive) or ISO 8601 date-times
  (``to`` exclusive); ``to`` defaults to now;
- ``step``: ``minute``, ``hour`` or ``day``; by default the finest that gives at most ~400 points
  (minute up to 6 hours, hour up to 14 days, day beyond).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django import forms
from django.http import HttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from analytics.queries import RESOLUTIONS, STEP, ceil, floor

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


def _moment(value: str, *, end: bool) -> datetime | None:
    """A date (UTC midnight; the day after for an inclusive ``to``) or an ISO date-time."""
    try:
        day = parse_date(value) if len(value) == 10 else None
    except ValueError:
        return None
    if day is not None:
        return datetime.combine(day + timedelta(days=1) if end else day, time(), tzinfo=UTC)
    try:
        moment = parse_datetime(value)
    except ValueError:
        return None
    if moment is None:
        return None
    return moment.astimezone(UTC) if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)


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
            start = _moment(raw_from, end=False) if raw_from else None
            if raw_from and start is None:
                self.add_error("from_", f'"{raw_from}" is not a date (YYYY-MM-DD) or date-time (ISO 8601)')
            if not raw_from:
                self.add_error("from_", "give a start date with the end date (or choose a preset range)")
            end = _moment(raw_to, end=True) if raw_to else self.now
            if raw_to and end is None:
                self.add_error("to", f'"{raw_to}" is not a date (YYYY-MM-DD) or date-time (ISO 8601)')
            if start is not None and end is not None and end <= start:
                self.add_error(
                    "to", f"the end ({end:%Y-%m-%d %H:%M}) must be after the start ({start:%Y-%m-%d %H:%M})"
                )
            preset = ""
        else:
            preset = preset or DEFAULT_PRESET
            end = self.now
            start = end - PRESETS[preset][0]
        if self.errors:
            return cleaned
        assert start is not None and end is not None
        step = cleaned.get("step") or _auto_step(end - start)
        label = PRESETS[preset][1] if preset else f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} UTC"
        result = DateRange(start=start, end=end, step=step, preset=preset, label=label)
        if result.steps() > MAX_POINTS:
            self.add_error(
                "step",
                f"{result.steps():,} {step}s are too many points (max {MAX_POINTS:,}): pick a larger step",
            )
            return cleaned
        cleaned["date_range"] = result
        return cleaned

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


def csv_response(filename: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> HttpResponse:
    """A ``text/csv`` download named ``filename`` (RFC 4180: CRLF line ends, quoted as needed)
    with a header row; datetimes are written in ISO 8601 (UTC), dates as ``YYYY-MM-DD``."""
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(header)
    for row in rows:
        writer.writerow([value.isoformat() if isinstance(value, datetime | date) else value for value in row])
    return response
