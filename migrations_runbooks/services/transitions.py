"""Moving traffic: entering a step (allocation published), resetting traffic, rolling back."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from controlplane.core import services as core
from controlplane.core.errors import ConflictError
from controlplane.core.services import Actor
from controlplane.core.updates import model_update
from migrations_runbooks import capacity, gates
from migrations_runbooks.models import RampStep, Runbook
from migrations_runbooks.notifications import notify
from migrations_runbooks.services._base import _snapshot, save_finished, save_transition
from migrations_runbooks.services.approvals import _close_approvals
from migrations_runbooks.services.evaluation import _capacity_check, _steps, _sweep


def _publish(rb: Runbook, *, actor: Actor, reason: str, now: dt.datetime, verb: str, **split: Any) -> Any:
    """Publish the allocation a transition implies; a sweep in progress sees the surface's new load."""
    allocation = core.allocation_change(
        surface=rb.surface, actor=actor, reason=reason, verb=verb, now=now, **split
    )
    cache = _sweep.get()
    if cache is not None:
        cache.loads[rb.surface_id] = capacity.load_from_allocation(allocation, rb.surface.peak_qps)
    return allocation


def _allocation_for_step(rb: Runbook, step: RampStep, *, actor: Actor, reason: str, now: dt.datetime) -> Any:
    kwargs: dict[str, Any] = {
        "treatment_stack": rb.target_stack if step.treatment_bp else None,
        "treatment_bp": step.treatment_bp,
        "shadow_stack": rb.target_stack if step.shadow_bp else None,
        "shadow_bp": step.shadow_bp,
    }
    if step.treatment_bp and not rb.salt:
        # A fresh salt when treatment first starts: the experiment's exposures begin clean, and
        # later steps keep it so raising the share only adds units (monotone, sticky ramps).
        rb.salt = f"{rb.surface.key}-rb{rb.pk}-{secrets.token_hex(3)}"
    if rb.salt:
        kwargs["salt"] = rb.salt
    return _publish(
        rb,
        actor=actor,
        reason=f"runbook {rb.pk} step {step.index} ({step.name}): {reason}",
        now=now,
        verb="allocation.ramp",
        **kwargs,
    )


def _enter_step(
    rb: Runbook,
    steps: list[RampStep],
    index: int,
    *,
    actor: Actor,
    reason: str,
    now: dt.datetime,
    verb: str,
    before: dict[str, Any],
) -> Runbook:
    step = steps[index]
    if 0 <= rb.current_step < len(steps) and rb.current_step != index:
        RampStep.objects.filter(pk=steps[rb.current_step].pk).update(completed_at=now)
    allocation = _allocation_for_step(rb, step, actor=actor, reason=reason, now=now)
    if (
        step.treatment_bp
        and rb.salt
        and not rb.experiment_key
        and any(gates.needs_analysis(s.gates or {}) for s in steps)
    ):
        rb.experiment_key = gates.experiment_attach(runbook=rb, actor=actor, now=now)
    model_update(instance=step, data={"started_at": now, "completed_at": None})
    if rb.ship_decision and index <= int(rb.ship_decision.get("step_index", -1)):
        rb.ship_decision = None  # back at (or before) the decision step: the decision is taken again
    rb.current_step, rb.step_started_at, rb.pending_step = index, now, None
    rb.status, rb.status_reason = Runbook.Status.RUNNING, reason
    rb.next_check_at = now + dt.timedelta(seconds=rb.check_interval_s)
    return save_transition(
        rb,
        actor=actor,
        verb=verb,
        reason=reason,
        now=now,
        before=before,
        step=step.name,
        treatment_bp=step.treatment_bp,
        allocation_version=allocation.version,
    )


def _reset_traffic(rb: Runbook, *, actor: Actor, reason: str, now: dt.datetime, verb: str) -> Any:
    return _publish(
        rb,
        actor=actor,
        reason=f"runbook {rb.pk}: {reason}",
        now=now,
        verb=verb,
        treatment_stack=None,
        treatment_bp=0,
        shadow_stack=None,
        shadow_bp=0,
    )


def _rollback(
    rb: Runbook, *, actor: Actor, reason: str, now: dt.datetime, details: dict[str, Any] | None = None
) -> Runbook:
    before = _snapshot(rb)
    allocation = _reset_traffic(
        rb, actor=actor, reason=f"rollback: {reason}", now=now, verb="allocation.rollback"
    )
    _close_approvals(rb, now)
    save_finished(
        rb,
        Runbook.Status.ROLLED_BACK,
        actor=actor,
        verb="runbook.rollback",
        reason=reason,
        now=now,
        before=before,
        allocation_version=allocation.version,
    )
    notify(
        runbook=rb,
        event="rollback",
        reason=reason,
        now=now,
        details={"allocation_version": allocation.version, **(details or {})},
    )
    return rb


def _start(rb: Runbook, *, actor: Actor, reason: str, now: dt.datetime) -> Runbook:
    steps = _steps(rb)
    check = _capacity_check(rb, steps[0])
    if not check.ok:
        raise ConflictError(f"not enough capacity for step {steps[0].name}: {check.reason}", field="capacity")
    before = _snapshot(rb)
    rb.started_at = now
    _enter_step(rb, steps, 0, actor=actor, reason=reason, now=now, verb="runbook.start", before=before)
    return rb
