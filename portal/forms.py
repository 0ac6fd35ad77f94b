"""Forms of the portal's HTML pages. They parse input; the services decide."""

from __future__ import annotations

from decimal import Decimal
from pathlib import PurePath
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from portal.asyncapi import MAX_DOCUMENT_BYTES
from portal.models import API, Application, BusinessPlan, User

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
    """An AsyncAPI document, uploaded as a file or pasted as text.

    ``cleaned_data["document"]`` is the upload's bytes or the pasted text; ``["filename"]`` names it.
    """

    file = forms.FileField(
        required=False,
        label="AsyncAPI document",
        help_text="YAML or JSON, AsyncAPI 2.x or 3.x.",
        widget=forms.ClearableFileInput(attrs={"accept": ",".join(DOCUMENT_EXTENSIONS)}),
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
            if not upload.name.lower().endswith(DOCUMENT_EXTENSIONS):
                self.add_error("file", "Upload a .yaml, .yml or .json file.")
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
    """A business plan; prices are entered in major units (dollars) and stored in minor units."""

    name = forms.CharField(max_length=100, widget=forms.TextInput(attrs={"placeholder": "e.g. Gold"}))
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
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
    # Not to be confused with the plan's own approval, which every new plan needs.
    requires_approval = forms.BooleanField(
        required=False,
        label="Subscriptions need an admin's approval",
        help_text="Consumers who pick this plan wait until an admin approves their subscription.",
    )

    def plan_fields(self) -> dict[str, Any]:
        """The cleaned data as ``BusinessPlan`` field values (minor units)."""
        data = self.cleaned_data
        return {
            "name": data["name"],
            "description": data["description"],
            "flat_fee_minor": int(data["flat_fee"] * 100),
            "included_events": data["included_events"],
            "price_per_1000_events_minor": int(data["price_per_1000_events"] * 100),
            "requires_approval": data["requires_approval"],
        }
