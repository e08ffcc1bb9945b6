"""Ramp plans: the standard plan, step validation, templates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from django.db import transaction

from controlplane.core.errors import ApplicationError
from controlplane.core.permissions import OPERATOR
from controlplane.core.services import Actor
from migrations_runbooks import gates
from migrations_runbooks.models import RampStep, Runbook, RunbookTemplate
from migrations_runbooks.services._base import DAY, _require_role, audit

#: The standard plan: shadow → 1% → 5% → 25% → 50% → 100%.
DEFAULT_STEPS: list[dict[str, Any]] = [
    {
        "name": "shadow",
        "treatment_bp": 0,
        "shadow_bp": 1000,
        "min_duration_s": DAY,
        "min_units": 500,
        "needs_approval": False,
        "gates": gates.DEFAULT_SHADOW_GATES,
    },
    {"name": "1%", "treatment_bp": 100, "min_duration_s": DAY, "min_units": 100, "needs_approval": False},
    {"name": "5%", "treatment_bp": 500, "min_duration_s": DAY, "min_units": 500, "needs_approval": False},
    {
        "name": "25%",
        "treatment_bp": 2500,
        "min_duration_s": 2 * DAY,
        "min_units": 1000,
        "needs_approval": True,
    },
    {
        # The decision step: the most power with a control group left; it needs a ship verdict.
        "name": "50%",
        "treatment_bp": 5000,
        "min_duration_s": 3 * DAY,
        "min_units": 2000,
        "needs_approval": False,
        "gates": {**gates.DEFAULT_RAMP_GATES, "ship_decision": True},
    },
    {
        # Bake at 100% on serving health, then promote (with a second pair of eyes).
        "name": "100%",
        "treatment_bp": 10000,
        "min_duration_s": DAY,
        "min_units": 1000,
        "needs_approval": True,
        "gates": gates.DEFAULT_BAKE_GATES,
    },
]


def normalize_steps(steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate editable step specs; fill gate defaults. Raises ApplicationError naming the step."""
    if not steps:
        raise ApplicationError("a runbook needs at least one step", field="steps")
    out: list[dict[str, Any]] = []
    previous_bp = 0
    for i, raw in enumerate(steps):
        where = f"steps[{i}]"
        name = str(raw.get("name") or "").strip()
        if not name:
            raise ApplicationError(f"{where}: a step needs a name", field=f"{where}.name")
        try:
            treatment_bp = int(raw.get("treatment_bp", 0))
            shadow_bp = int(raw.get("shadow_bp", 0) or 0)
            min_duration_s = int(raw.get("min_duration_s", DAY))
            min_units = int(raw.get("min_units", 0) or 0)
        except (TypeError, ValueError) as exc:
            raise ApplicationError(f"{where}: {exc}", field=where) from exc
        for key, value in (("treatment_bp", treatment_bp), ("shadow_bp", shadow_bp)):
            if not 0 <= value <= 10000:
                raise ApplicationError(f"{where}.{key} must be within 0..10000", field=f"{where}.{key}")
        if min_duration_s < 0 or min_units < 0:
            raise ApplicationError(f"{where}: durations and units must be non-negative", field=where)
        if treatment_bp < previous_bp:
            raise ApplicationError(
                f"{where}: ramps are monotone; {treatment_bp} bp after {previous_bp} bp",
                field=f"{where}.treatment_bp",
            )
        if treatment_bp == 0 and shadow_bp == 0:
            raise ApplicationError(f"{where}: a step serves treatment or shadows (both 0)", field=where)
        default_gates = (
            gates.DEFAULT_SHADOW_GATES
            if treatment_bp == 0
            else gates.DEFAULT_BAKE_GATES
            if treatment_bp == 10000
            else gates.DEFAULT_RAMP_GATES
        )
        try:
            step_gates = gates.validate_config(raw.get("gates") or {})
        except ValueError as exc:
            raise ApplicationError(f"{where}.{exc}", field=f"{where}.gates") from exc
        merged = {**default_gates, **step_gates}
        out.append(
            {
                "name": name[:60],
                "treatment_bp": treatment_bp,
                "shadow_bp": shadow_bp,
                "min_duration_s": min_duration_s,
                "min_units": min_units,
                "needs_approval": bool(raw.get("needs_approval", False)),
                "gates": merged,
            }
        )
        previous_bp = treatment_bp
    if out[-1]["treatment_bp"] != 10000:
        raise ApplicationError("the last step must move 100% (10000 bp) to the target stack", field="steps")
    if not any(s["gates"].get("ship_decision") for s in out):
        # Promotion needs a ship decision: by default the last step that still has a control group
        # takes it (at 100% nothing is left to compare with).
        compared = [s for s in out if 0 < s["treatment_bp"] < 10000]
        if not compared:
            raise ApplicationError(
                "a plan needs a step with a control group (0 < treatment_bp < 10000) to take the ship decision",
                field="steps",
            )
        compared[-1]["gates"] = {**compared[-1]["gates"], "ship_decision": True}
    return out


def _step_rows(rb: Runbook, specs: Sequence[Mapping[str, Any]], start_index: int = 0) -> list[RampStep]:
    return [
        RampStep(
            runbook=rb,
            index=start_index + i,
            name=s["name"],
            treatment_bp=s["treatment_bp"],
            shadow_bp=s["shadow_bp"],
            min_duration=dt.timedelta(seconds=s["min_duration_s"]),
            min_units=s["min_units"],
            needs_approval=s["needs_approval"],
            gates=s["gates"],
        )
        for i, s in enumerate(specs)
    ]


def step_spec(step: RampStep) -> dict[str, Any]:
    return {
        "name": step.name,
        "treatment_bp": step.treatment_bp,
        "shadow_bp": step.shadow_bp,
        "min_duration_s": int(step.min_duration.total_seconds()),
        "min_units": step.min_units,
        "needs_approval": step.needs_approval,
        "gates": step.gates,
    }


@transaction.atomic
def runbook_template_upsert(
    *,
    key: str,
    name: str,
    actor: Actor,
    now: dt.datetime,
    steps: Sequence[Mapping[str, Any]] | None = None,
    description: str = "",
    promotion_needs_approval: bool = True,
    check_interval_s: int = 60,
) -> RunbookTemplate:
    _require_role(actor, OPERATOR)
    specs = normalize_steps(steps if steps is not None else DEFAULT_STEPS)
    template = RunbookTemplate.objects.select_for_update().filter(key=key).first()
    values = {
        "name": name,
        "description": description,
        "steps": specs,
        "promotion_needs_approval": promotion_needs_approval,
        "check_interval_s": check_interval_s,
    }
    if template is None:
        template = RunbookTemplate.objects.create(key=key, created_at=now, updated_at=now, **values)
        audit(actor=actor, verb="runbook_template.create", target=template, after=values, now=now)
        return template
    before = {k: getattr(template, k) for k in values}
    if before == values:
        return template
    for k, v in values.items():
        setattr(template, k, v)
    template.updated_at = now
    template.save()
    audit(actor=actor, verb="runbook_template.update", target=template, before=before, after=values, now=now)
    return template
