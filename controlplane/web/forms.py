"""Forms of the pages. Field validation here; business rules stay in the services, whose
``ApplicationError(field=...)`` is mapped back onto the form field it names (``form_apply_error``)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms

from controlplane.core.errors import ApplicationError

REASON_HELP = "Recorded in the audit log with your name."


class ReasonForm(forms.Form):
    """Every state change from a page carries a reason (the audit log's "why")."""

    reason = forms.CharField(
        label="Reason",
        help_text=REASON_HELP,
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=2000,
        strip=True,
    )

    def clean_reason(self) -> str:
        reason: str = self.cleaned_data["reason"]
        if len(reason) < 3:
            raise forms.ValidationError("Give a reason of at least 3 characters.")
        return reason


class AuditFilterForm(forms.Form):
    actor = forms.ChoiceField(label="Actor", required=False)
    surface = forms.ChoiceField(label="Surface", required=False)
    verb = forms.CharField(
        label="Verb",
        required=False,
        max_length=64,
        help_text="Prefix match, e.g. allocation or runbook.",
        widget=forms.TextInput(attrs={"list": "verb-suggestions", "autocomplete": "off"}),
    )
    since = forms.DateField(
        label="From (UTC)", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    until = forms.DateField(
        label="To (UTC, inclusive)", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )

    def __init__(self, *args: Any, choices: dict[str, list[str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        actor_field: Any = self.fields["actor"]
        surface_field: Any = self.fields["surface"]
        actor_field.choices = [("", "Anyone"), *[(a, a) for a in choices["actors"]]]
        surface_field.choices = [("", "Any surface"), *[(s, s) for s in choices["surfaces"]]]
        self.verb_suggestions = choices["verbs"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("since"), data.get("until")
        if since and until and until < since:
            self.add_error("until", "The end date is before the start date.")
        return data


PERCENT = {"max_digits": 5, "decimal_places": 2, "min_value": Decimal(0), "max_value": Decimal(100)}


class AllocationChangeForm(ReasonForm):
    """A manual allocation change (operators). Percentages here; basis points in the service."""

    treatment_stack = forms.ChoiceField(label="Treatment stack", required=False)
    treatment_pct = forms.DecimalField(label="Treatment share (% of units)", **PERCENT)  # type: ignore[arg-type]
    shadow_stack = forms.ChoiceField(label="Shadow stack", required=False)
    shadow_pct = forms.DecimalField(label="Shadow sample (% of requests)", **PERCENT)  # type: ignore[arg-type]
    holdout_pct = forms.DecimalField(label="Long-term holdout (% of units)", **PERCENT)  # type: ignore[arg-type]
    expected_version = forms.IntegerField(widget=forms.HiddenInput, required=False)

    field_order = [
        "treatment_stack",
        "treatment_pct",
        "shadow_stack",
        "shadow_pct",
        "holdout_pct",
        "reason",
        "expected_version",
    ]

    # The service names its fields in basis points; the form shows percentages.
    SERVICE_FIELDS = {
        "treatment_bp": "treatment_pct",
        "shadow_bp": "shadow_pct",
        "holdout_bp": "holdout_pct",
        "treatment_stack": "treatment_stack",
        "shadow_stack": "shadow_stack",
        "reason": "reason",
        "expected_version": None,
        "populations": None,
        "salt": None,
    }

    def __init__(self, *args: Any, stacks: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("treatment_stack", "shadow_stack"):
            choice_field: Any = self.fields[name]
            choice_field.choices = [("", "None"), *stacks]


def pct_to_bp(value: Decimal) -> int:
    return int((value * 100).to_integral_value())


def form_apply_error(form: forms.Form, error: ApplicationError, mapping: dict[str, str | None]) -> None:
    """Show a service's refusal next to the field it names (or above the form when none)."""
    placed = False
    for service_field, messages in (error.errors or {}).items():
        target = mapping.get(service_field, service_field if service_field in form.fields else None)
        for message in messages:
            # Strip the service's "field: " prefix; the message now sits beside that field.
            text = message.split(": ", 1)[1] if message.startswith(f"{service_field}: ") else message
            form.add_error(target if target in form.fields else None, text)
            placed = True
    if not placed:
        form.add_error(None, error.message)
