"""Forms of the portal's HTML pages. They parse input; the services decide."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import PurePath
from typing import Any

from django import forms
from django.core.exceptions import PermissionDenied, ValidationError

from portal.asyncapi import MAX_DOCUMENT_BYTES
from portal.models import API, Application, BusinessPlan, User
from portal.plans import (
    MAX_PRICE_PER_1000_MINOR,
    MAX_PRICE_TIERS,
    PlanTemplate,
    PriceModel,
    TierError,
    plan_fields_validate,
    price_tiers_errors,
)

NEW_APPLICATION = "new"
DOCUMENT_EXTENSIONS = (".yaml", ".yml", ".json")


def add_service_errors(
    form: forms.Form, error: ValidationError, field_map: dict[str, str] | None = None
) -> None:
    """Attach a service's ``ValidationError`` to ``form``, renaming service fields to form fields.

    Errors on fields the form does not have become non-field errors, so nothing turns into a 500.
    """
    field_map = field_map or {}
    if not hasattr(error, "error_dict"):
        form.add_error(None, error)
        return
    for name, errors in error.error_dict.items():
        target = field_map.get(name, name)
        form.add_error(target if target in form.fields else None, errors)


def service_error_text(error: ValidationError | PermissionDenied) -> str:
    """A service's refusal as one line for a flash message: a ``ValidationError``'s messages
    joined, or a ``PermissionDenied``'s text."""
    if isinstance(error, ValidationError):
        return " ".join(error.messages)
    return str(error)


class ApplicationForm(forms.Form):
    name = forms.CharField(
        max_length=100, widget=forms.TextInput(attrs={"placeholder": "e.g. Trading dashboard"})
    )
    description = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 2, "placeholder": "What does it do? (optional)"})
    )


class SubscribeForm(forms.Form):
    """Subscribe one of the user's applications (or a new one, named here) to an API under a plan."""

    application = forms.ChoiceField(
        label="Application", widget=forms.Select(attrs={"data-new-application": "#new-application-name"})
    )
    new_application_name = forms.CharField(
        label="New application name", max_length=100, required=False, initial="My first app"
    )
    plan = forms.ModelChoiceField(
        queryset=BusinessPlan.objects.none(), widget=forms.RadioSelect, empty_label=None, label="Plan"
    )

    def __init__(self, *args: Any, user: User, api: API, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.applications = list(Application.objects.filter(owner=user)) if user.is_authenticated else []
        choices = [(str(app.pk), app.name) for app in self.applications]
        self.fields["application"].choices = [*choices, (NEW_APPLICATION, "+ New application…")]
        self.fields["application"].initial = choices[0][0] if choices else NEW_APPLICATION
        plans = api.plans.filter(is_approved=True)
        self.fields["plan"].queryset = plans
        first = plans.first()
        if first is not None:
            self.fields["plan"].initial = first.pk

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if (
            data.get("application") == NEW_APPLICATION
            and not (data.get("new_application_name") or "").strip()
        ):
            self.add_error("new_application_name", "Name the new application.")
        return data

    def selected_application(self) -> Application | None:
        """The chosen existing application, or None when a new one should be created."""
        chosen = self.cleaned_data["application"]
        return next((app for app in self.applications if str(app.pk) == chosen), None)


class ImportForm(forms.Form):
    """An AsyncAPI document, uploaded as a file (or a .zip of it and the files it refers to) or
    pasted as text.

    ``cleaned_data["document"]`` is the upload's bytes or the pasted text; ``["filename"]`` names it.
    The importer tells a zip from a document by its bytes; the name only steers the file picker.
    """

    EXTENSIONS = (*DOCUMENT_EXTENSIONS, ".zip")

    file = forms.FileField(
        required=False,
        label="AsyncAPI document",
        help_text="YAML or JSON, AsyncAPI 2.x or 3.x; or a .zip of the document and the files its "
        "$refs point to.",
        widget=forms.ClearableFileInput(attrs={"accept": ",".join(EXTENSIONS)}),
    )
    content = forms.CharField(
        required=False,
        label="…or paste it here",
        widget=forms.Textarea(
            attrs={
                "rows": 10,
                "spellcheck": "false",
                "class": "font-monospace",
                "placeholder": "asyncapi: 3.0.0\ninfo:\n  title: …",
            }
        ),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        upload = data.get("file")
        pasted = (data.get("content") or "").strip()
        if upload and pasted:
            raise ValidationError("Upload a file or paste a document, not both.")
        if not upload and not pasted:
            raise ValidationError("Choose a file to upload or paste a document.")
        if upload:
            if not upload.name.lower().endswith(self.EXTENSIONS):
                self.add_error(
                    "file", "Upload a .yaml, .yml or .json file, or a .zip of the document and its files."
                )
                return data
            if upload.size > MAX_DOCUMENT_BYTES:
                self.add_error("file", f"The file is larger than {MAX_DOCUMENT_BYTES // (1024 * 1024)} MB.")
                return data
            # Raw bytes: the importer decodes them and reports undecodable input itself.
            data["document"] = upload.read()
            data["filename"] = PurePath(upload.name).name
        else:
            data["document"] = data["content"]
            data["filename"] = "pasted document"
        return data


class PlanForm(forms.Form):
    """A business plan: price model, billing period and prices (entered in dollars, stored in
    cents; graduated tiers one per line, ``parse_price_tiers``; included bandwidth in MB or GB
    and its price per GB), its
    throttling policy (empty = unlimited; bandwidth entered in MB or GB, stored in bytes,
    decimal units as everywhere in Eventgate; the connection duration in seconds, minutes or
    hours, stored in seconds; what counts, what happens at the quota, how a stopped client is
    told, the overage prices), and whether subscriptions need approval.

    Coherence (a "free" plan with a fee, a burst without a rate, overage billing without a
    quota) is ``portal.plans``' rule, the same the REST API applies; its errors land on the
    fields entered here.
    """

    BYTES_PER_UNIT = {"MB": 10**6, "GB": 10**9}
    # The model's defaults of the pricing's optional fields (``plan_fields`` leaves them out).
    PRICING_DEFAULTS: dict[str, Any] = {
        "price_tiers": [],
        "included_bytes": 0,
        "price_per_gb_minor": 0,
        "billing_period": BusinessPlan.BillingPeriod.MONTH,
    }
    SECONDS_PER_UNIT = {"seconds": 1, "minutes": 60, "hours": 3600}
    # Service field → form field, for errors.
    FIELD_MAP = {
        "flat_fee_minor": "flat_fee",
        "price_per_1000_events_minor": "price_per_1000_events",
        "quota_bytes": "bandwidth_quota",
        "max_connection_seconds": "max_connection_duration",
        "overage_price_per_1000_events_minor": "overage_price_per_1000_events",
        "overage_price_per_gb_minor": "overage_price_per_gb",
        "included_bytes": "included_bandwidth",
        "price_per_gb_minor": "price_per_gb",
    }

    name = forms.CharField(max_length=100, widget=forms.TextInput(attrs={"placeholder": "e.g. Gold"}))
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    # Optional for clients that post amounts only (the amounts then decide, as for the REST API).
    price_model = forms.ChoiceField(
        label="Price model",
        choices=PriceModel.CHOICES,
        initial=PriceModel.FREE,
        required=False,
        widget=forms.RadioSelect,
    )
    # Upper bounds keep minor units inside the model's integer columns (PositiveIntegerField:
    # 2,147,483,647 cents; PositiveBigIntegerField for events).
    billing_period = forms.ChoiceField(
        label="Billing period",
        choices=BusinessPlan.BillingPeriod.choices,
        initial=BusinessPlan.BillingPeriod.MONTH,
        required=False,
        widget=forms.RadioSelect,
        help_text="How often the flat fee is charged and the included events, included bandwidth and "
        "quotas start again.",
    )
    flat_fee = forms.DecimalField(
        label="Flat fee per billing period ($)",
        min_value=Decimal(0),
        max_value=Decimal("1000000.00"),
        max_digits=10,
        decimal_places=2,
        initial=Decimal(0),
    )
    included_events = forms.IntegerField(
        label="Included events per billing period", min_value=0, max_value=10**15, initial=0
    )
    price_per_1000_events = forms.DecimalField(
        label="Price per 1,000 further events ($)",
        min_value=Decimal(0),
        max_value=Decimal("100000.00"),
        max_digits=10,
        decimal_places=2,
        initial=Decimal(0),
        help_text="Per started block of 1,000 events over the included ones. Leave at 0 when you enter "
        "graduated prices below.",
    )
    price_tiers = forms.CharField(
        label="…or graduated prices per 1,000 events ($)",
        required=False,
        max_length=2000,
        widget=forms.Textarea(
            attrs={
                "rows": 3,
                "spellcheck": "false",
                "class": "font-monospace",
                "placeholder": "100000 1.50\nabove 1.00",
            }
        ),
        help_text="One tier per line: up to how many events over the included ones, then its price per "
        "1,000; the last line starts with “above”. “100000 1.50” then “above 1.00” charges $1.50 per "
        "1,000 for the first 100,000 events over the included ones and $1.00 per 1,000 beyond. "
        f"At most {MAX_PRICE_TIERS} lines; empty for the single price above.",
    )
    included_bandwidth = forms.DecimalField(
        label="Included bandwidth per billing period",
        required=False,
        min_value=Decimal(0),
        max_value=Decimal(10**6),
        max_digits=12,
        decimal_places=3,
        help_text="Delivered before the bandwidth price applies.",
    )
    included_bandwidth_unit = forms.ChoiceField(
        label="unit", choices=[("MB", "MB"), ("GB", "GB")], initial="GB", required=False
    )
    price_per_gb = forms.DecimalField(
        label="Bandwidth price per GB ($)",
        required=False,
        min_value=Decimal(0),
        max_value=Decimal("100000.00"),
        max_digits=10,
        decimal_places=2,
        initial=Decimal(0),
        help_text="Per GB (10^9 bytes) delivered over the included bandwidth, pro rata, rounded up to the "
        "cent. 0 for none.",
    )
    rate_limit_events = forms.IntegerField(
        label="Rate limit (events)",
        required=False,
        min_value=1,
        max_value=2**31 - 1,
        help_text="Empty for no rate limit.",
    )
    rate_limit_unit = forms.ChoiceField(
        label="per",
        choices=BusinessPlan.RateUnit.choices,
        initial=BusinessPlan.RateUnit.MINUTE,
        required=False,
    )
    burst_events = forms.IntegerField(
        label="Burst (events above the rate)",
        required=False,
        min_value=1,
        max_value=2**31 - 1,
        help_text="Empty for no burst.",
    )
    quota_events = forms.IntegerField(
        label="Event quota per billing period",
        required=False,
        min_value=1,
        max_value=10**15,
        help_text="Empty for unlimited.",
    )
    bandwidth_quota = forms.DecimalField(
        label="Bandwidth quota per billing period",
        required=False,
        min_value=Decimal("0.001"),
        max_value=Decimal(10**6),
        max_digits=12,
        decimal_places=3,
        help_text="Empty for unlimited.",
    )
    bandwidth_unit = forms.ChoiceField(
        label="unit", choices=[("MB", "MB"), ("GB", "GB")], initial="GB", required=False
    )
    max_connections = forms.IntegerField(
        label="Max connections per subscription",
        required=False,
        min_value=1,
        max_value=100_000,
        help_text="Concurrent connections per subscription; empty for unlimited.",
    )
    max_connections_per_application = forms.IntegerField(
        label="Max connections per application",
        required=False,
        min_value=1,
        max_value=100_000,
        help_text="Over all the application's subscriptions; empty for unlimited.",
    )
    max_webhook_subscriptions = forms.IntegerField(
        label="Max webhook subscriptions",
        required=False,
        min_value=1,
        max_value=100_000,
        help_text="Per subscription; empty for unlimited.",
    )
    max_connection_duration = forms.IntegerField(
        label="Max duration",
        required=False,
        min_value=1,
        max_value=100_000,
        help_text="Per connection: longer ones are closed (4408) and may reconnect. Empty for no limit.",
    )
    max_connection_duration_unit = forms.ChoiceField(
        label="unit",
        choices=[("seconds", "seconds"), ("minutes", "minutes"), ("hours", "hours")],
        initial="hours",
        required=False,
    )
    counted_directions = forms.ChoiceField(
        label="What counts against the rate and quotas",
        choices=BusinessPlan.CountedDirections.choices,
        initial=BusinessPlan.CountedDirections.BOTH,
        required=False,
    )
    quota_action = forms.ChoiceField(
        label="At the quota",
        choices=BusinessPlan.QuotaAction.choices,
        initial=BusinessPlan.QuotaAction.STOP,
        required=False,
        widget=forms.RadioSelect,
    )
    limit_notice = forms.ChoiceField(
        label="When events are stopped",
        choices=BusinessPlan.LimitNotice.choices,
        initial=BusinessPlan.LimitNotice.NOTIFY,
        required=False,
        help_text="A notice tells the client why and when it may continue.",
    )
    overage_price_per_1000_events = forms.DecimalField(
        label="Overage price per 1,000 events ($)",
        required=False,
        min_value=Decimal(0),
        max_value=Decimal("100000.00"),
        max_digits=10,
        decimal_places=2,
        initial=Decimal(0),
        help_text="Over the events quota, when the overage is billed.",
    )
    overage_price_per_gb = forms.DecimalField(
        label="Overage price per GB ($)",
        required=False,
        min_value=Decimal(0),
        max_value=Decimal("100000.00"),
        max_digits=10,
        decimal_places=2,
        initial=Decimal(0),
        help_text="Over the bandwidth quota, when the overage is billed.",
    )
    # Not to be confused with the plan's own approval, which every new plan needs.
    requires_approval = forms.BooleanField(
        required=False,
        label="Subscriptions need an admin's approval",
        help_text="Consumers who pick this plan wait until an admin approves their subscription.",
    )

    @classmethod
    def initial_from_template(cls, template: PlanTemplate) -> dict[str, Any]:
        """Form initial values for ``template`` (a ``portal.plans.PlanTemplate``)."""
        fields = template.fields
        initial: dict[str, Any] = {"name": template.name, "description": template.description}
        for name in (
            "rate_limit_events",
            "rate_limit_unit",
            "burst_events",
            "quota_events",
            "max_connections",
            "max_connections_per_application",
            "max_webhook_subscriptions",
            "counted_directions",
            "quota_action",
            "limit_notice",
        ):
            if name in fields:
                initial[name] = fields[name]
        if fields.get("max_connection_seconds"):
            seconds = fields["max_connection_seconds"]
            unit = next(u for u in ("hours", "minutes", "seconds") if seconds % cls.SECONDS_PER_UNIT[u] == 0)
            initial["max_connection_duration"] = seconds // cls.SECONDS_PER_UNIT[unit]
            initial["max_connection_duration_unit"] = unit
        for name in ("overage_price_per_1000_events", "overage_price_per_gb"):
            initial[name] = Decimal(fields.get(f"{name}_minor", 0)) / 100
        if fields.get("quota_bytes"):
            unit = "GB" if fields["quota_bytes"] % cls.BYTES_PER_UNIT["GB"] == 0 else "MB"
            initial["bandwidth_quota"] = Decimal(fields["quota_bytes"]) / cls.BYTES_PER_UNIT[unit]
            initial["bandwidth_unit"] = unit
        initial["flat_fee"] = Decimal(fields.get("flat_fee_minor", 0)) / 100
        initial["price_per_1000_events"] = Decimal(fields.get("price_per_1000_events_minor", 0)) / 100
        initial["included_events"] = fields.get("included_events", 0)
        initial["billing_period"] = fields.get("billing_period", BusinessPlan.BillingPeriod.MONTH)
        initial["price_tiers"] = price_tiers_text(fields.get("price_tiers") or [])
        initial["price_per_gb"] = Decimal(fields.get("price_per_gb_minor", 0)) / 100
        if fields.get("included_bytes"):
            unit = "GB" if fields["included_bytes"] % cls.BYTES_PER_UNIT["GB"] == 0 else "MB"
            initial["included_bandwidth"] = Decimal(fields["included_bytes"]) / cls.BYTES_PER_UNIT[unit]
            initial["included_bandwidth_unit"] = unit
        initial["price_model"] = BusinessPlan(
            flat_fee_minor=fields.get("flat_fee_minor", 0),
            price_per_1000_events_minor=fields.get("price_per_1000_events_minor", 0),
            price_tiers=fields.get("price_tiers") or [],
            price_per_gb_minor=fields.get("price_per_gb_minor", 0),
        ).price_model
        initial["requires_approval"] = fields.get("requires_approval", False)
        return initial

    def clean_price_tiers(self) -> list[dict[str, Any]]:
        """The textarea's tiers as ``BusinessPlan.price_tiers`` (minor units); every fault is
        an error naming its line (``parse_price_tiers``)."""
        tiers, problems = parse_price_tiers(self.cleaned_data.get("price_tiers") or "")
        if problems:
            raise ValidationError(problems)
        return tiers

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:
            return data
        try:
            plan_fields_validate(self.plan_fields(), price_model=data.get("price_model") or None)
        except ValidationError as error:
            add_service_errors(self, error, self.FIELD_MAP)
        return data

    def plan_fields(self) -> dict[str, Any]:
        """The cleaned data as ``BusinessPlan`` field values (minor units, bytes, seconds, None =
        unlimited). The pricing's optional fields (``PRICING_DEFAULTS``) are left out at their
        defaults, which ``plan_create`` gives them anyway."""
        data = self.cleaned_data
        bandwidth = data.get("bandwidth_quota")
        included_bandwidth = data.get("included_bandwidth")
        duration = data.get("max_connection_duration")
        duration_unit = data.get("max_connection_duration_unit") or "hours"
        included_unit = self.BYTES_PER_UNIT[data.get("included_bandwidth_unit") or "GB"]
        pricing = {
            "price_tiers": data.get("price_tiers") or [],
            "included_bytes": int(included_bandwidth * included_unit) if included_bandwidth else 0,
            "price_per_gb_minor": int((data.get("price_per_gb") or 0) * 100),
            "billing_period": data.get("billing_period") or BusinessPlan.BillingPeriod.MONTH,
        }
        return {
            **{name: value for name, value in pricing.items() if value != self.PRICING_DEFAULTS[name]},
            "name": data["name"],
            "description": data["description"],
            "flat_fee_minor": int(data["flat_fee"] * 100),
            "included_events": data["included_events"],
            "price_per_1000_events_minor": int(data["price_per_1000_events"] * 100),
            "requires_approval": data["requires_approval"],
            "rate_limit_events": data.get("rate_limit_events"),
            "rate_limit_unit": data.get("rate_limit_unit") or BusinessPlan.RateUnit.MINUTE,
            "burst_events": data.get("burst_events"),
            "quota_events": data.get("quota_events"),
            "quota_bytes": int(bandwidth * self.BYTES_PER_UNIT[data["bandwidth_unit"]])
            if bandwidth
            else None,
            "max_connections": data.get("max_connections"),
            "max_connections_per_application": data.get("max_connections_per_application"),
            "max_webhook_subscriptions": data.get("max_webhook_subscriptions"),
            "max_connection_seconds": duration * self.SECONDS_PER_UNIT[duration_unit] if duration else None,
            "counted_directions": data.get("counted_directions") or BusinessPlan.CountedDirections.BOTH,
            "quota_action": data.get("quota_action") or BusinessPlan.QuotaAction.STOP,
            "limit_notice": data.get("limit_notice") or BusinessPlan.LimitNotice.NOTIFY,
            "overage_price_per_1000_events_minor": int(
                (data.get("overage_price_per_1000_events") or 0) * 100
            ),
            "overage_price_per_gb_minor": int((data.get("overage_price_per_gb") or 0) * 100),
        }


# Words that start the last line of the tiers textarea: the tier with no upper bound.
OPEN_TIER_WORDS = ("above", "beyond", "rest", "*")
_TIER_PRICE = re.compile(r"^\$?(\d+(\.\d*)?|\.\d+)$")


def parse_price_tiers(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The plan form's graduated prices, one tier per line, as ``(tiers, problems)``.

    A line is ``<events> <price>`` (``"100000 1.50"``: up to 100,000 events over the included
    ones at $1.50 per 1,000; ``100,000``, ``100_000`` and ``$1.50`` are read too) or, for the
    last tier, ``above <price>`` (``beyond``, ``rest`` or ``*`` also work). Blank lines are
    skipped. ``tiers`` are ``BusinessPlan.price_tiers`` values (``up_to`` in events, price in
    cents); ``problems`` name the line of each fault (``"Line 2: …"``), from reading the line
    or from ``portal.plans.price_tiers_errors``. Empty text → ``([], [])``.
    """
    tiers: list[dict[str, Any]] = []
    lines: list[int] = []  # the line number of each tier
    problems: list[str] = []
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        return [], [
            "Write one tier per line (“100000 1.50”, the last one “above 1.00”), not JSON; the REST API "
            "takes JSON tiers in cents."
        ]
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        tier = _tier_line_parse(line, number, problems)
        if tier is not None:
            tiers.append(tier)
            lines.append(number)
    if problems:
        return [], problems
    for error in price_tiers_errors(tiers):
        problems.append(_tier_problem(error, lines))
    return ([], problems) if problems else (tiers, [])


def _tier_line_parse(line: str, number: int, problems: list[str]) -> dict[str, Any] | None:
    words = line.replace(":", " ").split()
    if len(words) < 2:
        problems.append(
            f"Line {number}: write the events the tier runs up to and its price per 1,000 events, e.g. "
            "“100000 1.50”, or “above 1.00” for the last tier."
        )
        return None
    bound_words = words[:-1]
    if [word.lower() for word in bound_words[:2]] == ["up", "to"]:  # "up to 100,000 1.50"
        bound_words = bound_words[2:] or bound_words
    bound_text, price_text = "".join(bound_words), words[-1]
    if bound_text.lower() in OPEN_TIER_WORDS:
        up_to = None
    elif re.fullmatch(r"\d[\d,_]*", bound_text):
        up_to = int(bound_text.replace(",", "").replace("_", ""))
    else:
        problems.append(
            f"Line {number}: “{' '.join(words[:-1])[:40]}” is not a number of events; write it in "
            "digits (e.g. 100000), or “above” on the last line."
        )
        return None
    match = _TIER_PRICE.match(price_text)
    try:
        price = Decimal(match.group(1)) if match else None
    except InvalidOperation:
        price = None
    if price is None:
        problems.append(f"Line {number}: “{price_text[:20]}” is not a price in dollars, e.g. 1.50.")
        return None
    if price != price.quantize(Decimal("0.01")):
        problems.append(f"Line {number}: prices are in whole cents (at most 2 decimals), not {price_text}.")
        return None
    if price * 100 > MAX_PRICE_PER_1000_MINOR:
        problems.append(f"Line {number}: at most ${MAX_PRICE_PER_1000_MINOR // 100:,}.00 per 1,000 events.")
        return None
    return {"up_to": up_to, "price_per_1000_events_minor": int(price * 100)}


def _tier_problem(error: TierError, lines: list[int]) -> str:
    """A ``portal.plans.TierError`` in the form's words, naming the line of the tier."""
    if error.index is None:
        if error.code == "too_many":
            return f"Enter at most {MAX_PRICE_TIERS} lines (tiers); this has {len(lines)}."
        return error.text
    line = f"Line {lines[error.index]}"
    if error.code == "last_not_null":
        return (
            f"{line}: the last line must start with “above” (e.g. “above 1.00”), so every event has a price."
        )
    if error.code == "null_not_last":
        return f"{line}: only the last line may start with “above”; give this one a number of events."
    if error.code == "not_increasing":
        previous = lines[error.index - 1]
        return (
            f"{line}: the number of events must be greater than line {previous}'s: each line gives the "
            "events (over the included ones) its price runs up to, counted from the first."
        )
    subject = "the number of events" if error.key == "up_to" else "the price" if error.key else "the tier"
    return f"{line}: {subject} {error.text}"


def price_tiers_text(tiers: list[dict[str, Any]]) -> str:
    """``BusinessPlan.price_tiers`` as the plan form's textarea shows them, one line per tier,
    prices in dollars (``100000 1.50``, then ``above 1.00``); ``parse_price_tiers`` reads it back."""
    rows = []
    for tier in tiers:
        price = Decimal(int(tier.get("price_per_1000_events_minor") or 0)) / 100
        bound = "above" if tier.get("up_to") is None else str(tier["up_to"])
        rows.append(f"{bound} {price:.2f}")
    return "\n".join(rows)


class ReasonForm(forms.Form):
    """A reason for a lifecycle move or an approval decision; ``required`` for rejections."""

    reason = forms.CharField(
        required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}), label="Reason"
    )

    def __init__(self, *args: Any, required: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["reason"].required = required
        if required:
            self.fields["reason"].error_messages["required"] = "Give a reason: the requester sees it."


class OrganizationForm(forms.Form):
    """The name consumers see as the provider of a user's APIs (``User.organization``)."""

    organization = forms.CharField(
        max_length=100,
        required=False,
        label="Provider name shown to consumers",
        help_text="Your company or team. Left empty, consumers see your email's domain, never the address.",
        widget=forms.TextInput(attrs={"placeholder": "e.g. Acme Markets"}),
    )

    def clean_organization(self) -> str:
        # PostgreSQL text cannot hold NUL, and control characters have no place in a name.
        return "".join(char for char in self.cleaned_data["organization"] if char.isprintable()).strip()


class APIKeyForm(forms.Form):
    """A new API key: an optional name and when it expires (docs/credentials.md)."""

    EXPIRY_CHOICES = [
        ("never", "Never expires"),
        ("30", "Expires in 30 days"),
        ("90", "Expires in 90 days"),
        ("365", "Expires in 1 year"),
        ("date", "Valid until a date…"),
    ]

    name = forms.CharField(
        max_length=100,
        required=False,
        label="Name",
        widget=forms.TextInput(attrs={"placeholder": "e.g. production"}),
    )
    expires = forms.ChoiceField(choices=EXPIRY_CHOICES, initial="never", label="Expiry")
    expires_on = forms.DateField(
        required=False, label="Last day it works", widget=forms.DateInput(attrs={"type": "date"})
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("expires") == "date" and not data.get("expires_on"):
            self.add_error("expires_on", "Pick the last day the key should work.")
        return data


class APIKeyRotateForm(forms.Form):
    """How long a rotated key keeps working next to its replacement, in seconds."""

    GRACE_CHOICES = [
        (0, "End the old key now"),
        (3600, "Old key works 1 more hour"),
        (86400, "Old key works 24 more hours"),
        (7 * 86400, "Old key works 7 more days"),
    ]

    grace_seconds = forms.TypedChoiceField(choices=GRACE_CHOICES, coerce=int, initial=86400)
