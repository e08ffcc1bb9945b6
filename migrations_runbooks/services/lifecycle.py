"""A runbook's life before and around its ramp: create, edit the plan, schedule, start."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from django.db import transaction

from controlplane.core.errors import ApplicationError, ConflictError
from controlplane.core.models import RankingStack, Surface
from controlplane.core.permissions import OPERATOR
from controlplane.core.services import Actor
from controlplane.core.updates import model_update
from migrations_runbooks.models import Milestone, RampStep, Runbook, RunbookTemplate, StepEvaluation
from migrations_runbooks.services._base import (
    DAY,
    NOT_TERMINAL,
    _label,
    _require_role,
    _snapshot,
    _user_or_none,
    audit,
    operator_action,
    save_transition,
)
from migrations_runbooks.services.evaluation import _steps
from migrations_runbooks.services.plans import DEFAULT_STEPS, _step_rows, normalize_steps, step_spec
from migrations_runbooks.services.transitions import _start


@transaction.atomic
def runbook_create(
    *,
    surface: Surface,
    target_stack: RankingStack,
    actor: Actor,
    now: dt.datetime,
    name: str = "",
    template: RunbookTemplate | None = None,
    steps: Sequence[Mapping[str, Any]] | None = None,
    milestone: Milestone | None = None,
    depends_on: Runbook | None = None,
    depends_on_bp: int = 5000,
    depends_on_hold_s: int = DAY,
    check_interval_s: int | None = None,
    promotion_needs_approval: bool | None = None,
    reason: str = "",
) -> Runbook:
    """A draft runbook from a template, explicit steps, or the standard plan."""
    _require_role(actor, OPERATOR)
    if target_stack.kind != RankingStack.Kind.UNIFIED_MTL:
        raise ApplicationError("a runbook migrates a surface to a unified stack", field="target_stack")
    if target_stack.status == RankingStack.Status.RETIRED:
        raise ApplicationError(f"{target_stack.label} is retired", field="target_stack")
    if surface.production_stack_id == target_stack.pk:
        raise ConflictError(f"{surface.key} already runs {target_stack.label} in production", field="surface")
    if depends_on is not None and depends_on.surface_id == surface.pk:
        raise ApplicationError("a runbook cannot depend on a runbook of its own surface", field="depends_on")
    if not 0 < depends_on_bp <= 10000:
        raise ApplicationError("depends_on_bp must be within 1..10000", field="depends_on_bp")
    specs = normalize_steps(steps if steps is not None else (template.steps if template else DEFAULT_STEPS))
    rb = Runbook.objects.create(
        surface=surface,
        target_stack=target_stack,
        name=name or f"{surface.key} → {target_stack.label}",
        template=template,
        milestone=milestone,
        depends_on=depends_on,
        depends_on_bp=depends_on_bp,
        depends_on_hold_s=depends_on_hold_s,
        check_interval_s=check_interval_s or (template.check_interval_s if template else 60),
        promotion_needs_approval=(
            promotion_needs_approval
            if promotion_needs_approval is not None
            else (template.promotion_needs_approval if template else True)
        ),
        created_by=_user_or_none(actor),
        created_at=now,
        updated_at=now,
    )
    RampStep.objects.bulk_create(_step_rows(rb, specs))
    audit(
        actor=actor,
        verb="runbook.create",
        target=rb,
        after={"status": rb.status, "steps": specs, "target_stack": target_stack.label},
        reason=reason,
        now=now,
    )
    return rb


@operator_action(allowed=NOT_TERMINAL, refusal="its plan is final")
def runbook_update_steps(
    rb: Runbook, *, steps: Sequence[Mapping[str, Any]], actor: Actor, reason: str, now: dt.datetime
) -> Runbook:
    """Edit the plan. Before start: all steps. While live: only steps after the current one."""
    existing = _steps(rb)
    keep = existing[: rb.current_step + 1] if rb.status in Runbook.LIVE else []
    specs = normalize_steps([step_spec(s) for s in keep] + list(steps))
    before = [step_spec(s) for s in existing]
    RampStep.objects.filter(runbook=rb, index__gte=len(keep)).delete()
    RampStep.objects.bulk_create(_step_rows(rb, specs[len(keep) :], start_index=len(keep)))
    pending = None if rb.pending_step is not None and rb.pending_step >= len(specs) else rb.pending_step
    model_update(instance=rb, data={"pending_step": pending, "plan_version": rb.plan_version + 1}, now=now)
    audit(
        actor=actor,
        verb="runbook.steps",
        target=rb,
        before={"steps": before},
        after={"steps": specs},
        reason=reason,
        now=now,
    )
    return rb


@operator_action(
    allowed=(Runbook.Status.DRAFT, Runbook.Status.SCHEDULED), refusal="only a draft can be scheduled"
)
def runbook_schedule(
    rb: Runbook, *, start_at: dt.datetime, actor: Actor, reason: str, now: dt.datetime
) -> Runbook:
    """draft → scheduled: the sweeper starts it at ``start_at`` once its dependency is met."""
    if rb.status == Runbook.Status.SCHEDULED and rb.start_at == start_at:
        return rb
    _check_no_other_active(rb)
    before = _snapshot(rb)
    rb.status, rb.start_at, rb.next_check_at = Runbook.Status.SCHEDULED, start_at, start_at
    rb.started_by, rb.started_by_label = _user_or_none(actor), _label(actor)
    rb.status_reason = reason
    return save_transition(
        rb,
        actor=actor,
        verb="runbook.schedule",
        reason=reason,
        now=now,
        before=before,
        start_at=start_at.isoformat(),
    )


def _check_no_other_active(rb: Runbook) -> None:
    other = Runbook.objects.filter(surface=rb.surface, status__in=Runbook.ACTIVE).exclude(pk=rb.pk).first()
    if other is not None:
        raise ConflictError(f"{rb.surface.key} already has an active runbook ({other.pk}, {other.status})")


def dependency_status(rb: Runbook, now: dt.datetime) -> tuple[bool, str]:
    """Whether the runbook this one depends on reached ``depends_on_bp`` and held there cleanly.

    Cleanly: it has been at or beyond that share for ``depends_on_hold_s`` and no evaluation since it
    got there held or rolled back (and it is not held, paused or finished badly now).
    """
    dep = rb.depends_on
    if dep is None:
        return True, "no dependency"
    if dep.status == Runbook.Status.PROMOTED:
        return True, f"runbook {dep.pk} ({dep.surface.key}) is promoted"
    if dep.status not in (Runbook.Status.RUNNING, Runbook.Status.WAITING_APPROVAL):
        return False, f"runbook {dep.pk} ({dep.surface.key}) is {dep.status}"
    first = dep.steps.filter(treatment_bp__gte=rb.depends_on_bp).order_by("index").first()
    if first is None or first.started_at is None or first.index > dep.current_step:
        return False, f"runbook {dep.pk} ({dep.surface.key}) has not reached {rb.depends_on_bp / 100:g}% yet"
    held_for = (now - first.started_at).total_seconds()
    if held_for < rb.depends_on_hold_s:
        return False, (
            f"runbook {dep.pk} ({dep.surface.key}) reached {rb.depends_on_bp / 100:g}% "
            f"{held_for / 3600:.1f} h ago; needs {rb.depends_on_hold_s / 3600:.1f} h"
        )
    dirty = dep.evaluations.filter(
        evaluated_at__gte=first.started_at,
        outcome__in=[StepEvaluation.Outcome.HOLD, StepEvaluation.Outcome.ROLLBACK],
    ).first()
    if dirty is not None:
        return (
            False,
            f"runbook {dep.pk} ({dep.surface.key}) was held at {dirty.evaluated_at:%Y-%m-%d %H:%M}: {dirty.reason}",
        )
    return (
        True,
        f"runbook {dep.pk} ({dep.surface.key}) held {rb.depends_on_bp / 100:g}% cleanly for {held_for / 3600:.1f} h",
    )


@operator_action(
    allowed=(Runbook.Status.DRAFT, Runbook.Status.SCHEDULED),
    refusal="it cannot start",
    done=Runbook.LIVE,  # idempotent: already started
)
def runbook_start(rb: Runbook, *, actor: Actor, reason: str, now: dt.datetime) -> Runbook:
    """draft/scheduled → running at step 0 (dependency and capacity checked; allocation published)."""
    _check_no_other_active(rb)
    ok, why = dependency_status(rb, now)
    if not ok:
        raise ConflictError(f"dependency not met: {why}", field="depends_on")
    if not isinstance(actor, str) or rb.started_by_id is None:
        rb.started_by, rb.started_by_label = _user_or_none(actor), _label(actor)
    return _start(rb, actor=actor, reason=reason, now=now)
