"""Forms of the portal's HTML pages. They parse input; the services decide."""

from __future__ import annotations

from decimal import Decimal
from pathlib import PurePath
from typing import Any

from django import forms
from django.core.exceptions import PermissionDenied, ValidationError

from portal.asyncapi import MAX_DOCUMENT_BYTES
from portal.models import API, Application, BusinessPlan, User
from portal.plans import PlanTemplate, PriceModel, plan_fields_validate

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
    """A business plan: price model and prices (entered in dollars, stored in cents), its
    throttling policy (empty = unlimited; bandwidth entered in MB or GB, stored in bytes,
    decimal units as everywhere in Eventgate; the connection duration in seconds, minutes or
    hours, stored in seconds; what counts, what happens at the quota, how a stopped client is
    told, the overage prices), and whether subscriptions need approval.

    Coherence (a "free" plan with a fee, a burst without a rate, overage billing without a
    quota) is ``portal.plans``' rule, the same the REST API applies; its errors land on the
    fields entered here.
    """

    BYTES_PER_UNIT = {"MB": 10**6, "GB": 10**9}
    SECONDS_PER_UNIT = {"seconds": 1, "minutes": 60, "hours": 3600}
    # Service field → form field, for errors.
    FIELD_MAP = {
        "flat_fee_minor": "flat_fee",
        "price_per_1000_events_minor": "price_per_1000_events",
        "quota_bytes": "bandwidth_quota",
        "max_connection_seconds": "max_connection_duration",
        "overage_price_per_1000_events_minor": "overage_price_per_1000_events",
        "overage_price_per_gb_minor": "overage_price_per_gb",
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
    flat_fee = forms.DecimalField(
        label="Flat fee per month ($)",
        min_value=Decimal(0),
        max_value=Decimal("1000000.00"),
        max_digits=10,
        decimal_places=2,
        initial=Decimal(0),
    )
    included_events = forms.IntegerField(
        label="Included events per month", min_value=0, max_value=10**15, initial=0
    )
    price_per_1000_events = forms.DecimalField(
        label="Price per 1,000 further events ($)",
        min_value=Decimal(0),
        max_value=Decimal("100000.00"),
        max_digits=10,
        decimal_places=2,
        initial=Decimal(0),
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
        label="Event quota per month",
        required=False,
        min_value=1,
        max_value=10**15,
        help_text="Empty for unlimited.",
    )
    bandwidth_quota = forms.DecimalField(
        label="Bandwidth quota per month",
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
        initial["price_model"] = BusinessPlan(
            flat_fee_minor=fields.get("flat_fee_minor", 0),
            price_per_1000_events_minor=fields.get("price_per_1000_events_minor", 0),
        ).price_model
        initial["requires_approval"] = fields.get("requires_approval", False)
        return initial

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
        unlimited)."""
        data = self.cleaned_data
        bandwidth = data.get("bandwidth_quota")
        duration = data.get("max_connection_duration")
        duration_unit = data.get("max_connection_duration_unit") or "hours"
        return {
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
