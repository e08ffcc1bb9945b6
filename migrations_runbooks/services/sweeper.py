"""The beat sweeper: every due runbook evaluated on fresh evidence and moved at most one step."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from controlplane.core import telemetry
from controlplane.core.services import Actor
from controlplane.core.updates import model_update
from migrations_runbooks import gates
from migrations_runbooks.models import Approval, RampStep, Runbook, StepEvaluation
from migrations_runbooks.notifications import notify
from migrations_runbooks.services._base import SYSTEM_BEAT, _snapshot, save_transition
from migrations_runbooks.services.approvals import _open_approval, _request_approval
from migrations_runbooks.services.evaluation import (
    Evaluation,
    _capacity_check,
    _gate_details,
    _record_evaluation,
    _steps,
    _sweep,
    _SweepCache,
    runbook_evaluate,
)
from migrations_runbooks.services.lifecycle import dependency_status
from migrations_runbooks.services.promotion import _promote
from migrations_runbooks.services.transitions import _enter_step, _rollback, _start

log = logging.getLogger("migrations_runbooks.services")


@dataclass(frozen=True)
class TickOutcome:
    runbook_id: int
    surface: str
    before: str
    after: str
    step: int
    outcome: str
    reason: str


def tick_budget_s() -> float:
    """Wall-clock budget of one sweep (``RUNBOOKS_TICK_BUDGET_S``, default 1.5 s; 0 = unbounded).

    Ramps still due when it runs out stay due and go first in the next sweep (oldest
    ``next_check_at`` first): deferred, never skipped, so the every-minute beat stays on time.
    """
    from django.conf import settings

    return float(getattr(settings, "RUNBOOKS_TICK_BUDGET_S", 1.5) or 0)


def ramps_advance_due(
    *, now: dt.datetime, limit: int = 500, budget_s: float | None = None
) -> list[TickOutcome]:
    """One sweep: every due runbook, each in its own transaction under a skip-locked row lock.

    Safe to run twice at once (a second sweeper skips rows the first holds, and re-reads
    ``next_check_at`` under the lock so a runbook is acted on once per due time) and safe to kill
    (a runbook's transition commits whole or not at all; the next sweep redoes the rest).
    Late sweeps never skip anything: one tick moves a runbook at most one step, after its gates.
    """
    due = list(
        Runbook.objects.filter(status__in=Runbook.ACTIVE, next_check_at__lte=now)
        .order_by("next_check_at", "pk")
        .values_list("pk", "plan_version", "experiment_key")[:limit]
    )
    outcomes = []
    budget = tick_budget_s() if budget_s is None else budget_s
    started = time.perf_counter()
    # Registry facts and plans read once (a plan edited since falls back to a fresh read under the lock).
    cache = _SweepCache(due) if due else None
    token = _sweep.set(cache)
    runs_token = gates.latest_runs.set(cache.runs if cache else {})
    experiments_token = gates.sweep_experiments.set(cache.experiments if cache else {})
    try:
        for done, (pk, *_) in enumerate(due):
            # At least one ramp per sweep, so a tiny budget can slow the sweep but never stall it.
            if done and budget and time.perf_counter() - started > budget:
                log.warning(
                    "sweep budget of %.1f s spent; %d due ramps deferred to the next tick",
                    budget,
                    len(due) - done,
                )
                break
            outcome = _tick_one(pk, now)
            if outcome is not None:
                outcomes.append(outcome)
    finally:
        _sweep.reset(token)
        gates.latest_runs.reset(runs_token)
        gates.sweep_experiments.reset(experiments_token)
    try:
        from migrations_runbooks.notifications import notifications_redeliver_due

        notifications_redeliver_due(now=now)
    except Exception:
        log.exception("webhook redelivery sweep failed")
    telemetry.tick_finished(seconds=time.perf_counter() - started)
    return outcomes


def _tick_one(pk: int, now: dt.datetime) -> TickOutcome | None:
    try:
        return runbook_tick(runbook_id=pk, now=now)
    except Exception:
        # One broken runbook must not starve the others; its transaction rolled back.
        log.exception("tick of runbook %s failed", pk)
        return None


@transaction.atomic
def runbook_tick(*, runbook_id: int, now: dt.datetime) -> TickOutcome | None:
    """Evaluate one runbook if it is still due; None when another sweeper holds it or it is not due."""
    rb = (
        Runbook.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("surface", "target_stack")  # depends_on: read only while scheduled
        .filter(pk=runbook_id, status__in=Runbook.ACTIVE, next_check_at__lte=now)
        .first()
    )
    if rb is None:
        return None
    before_status = rb.status
    rb.ticks += 1
    rb.last_tick_at = now
    if rb.status == Runbook.Status.SCHEDULED:
        outcome, reason = _tick_scheduled(rb, now)
    else:
        outcome, reason = _tick_live(rb, now)
    if rb.status in Runbook.ACTIVE and rb.next_check_at is not None and rb.next_check_at <= now:
        rb.next_check_at = now + dt.timedelta(seconds=rb.check_interval_s)
    Runbook.objects.filter(pk=rb.pk).update(
        ticks=rb.ticks,
        last_tick_at=now,
        next_check_at=rb.next_check_at if rb.status in Runbook.ACTIVE else None,
        last_evaluation=rb.last_evaluation,
    )
    return TickOutcome(rb.pk, rb.surface.key, before_status, rb.status, rb.current_step, outcome, reason)


def _tick_scheduled(rb: Runbook, now: dt.datetime) -> tuple[str, str]:
    ok, why = dependency_status(rb, now)
    if not ok:
        _record_evaluation(rb, None, [], outcome=StepEvaluation.Outcome.BLOCKED, reason=why, now=now)
        model_update(instance=rb, data={"status_reason": f"waiting on dependency: {why}"}, now=now)
        return StepEvaluation.Outcome.BLOCKED, why
    if Runbook.objects.filter(surface=rb.surface, status__in=Runbook.LIVE).exclude(pk=rb.pk).exists():
        why = f"{rb.surface.key} has another live runbook"
        _record_evaluation(rb, None, [], outcome=StepEvaluation.Outcome.BLOCKED, reason=why, now=now)
        return StepEvaluation.Outcome.BLOCKED, why
    steps = _steps(rb)
    check = _capacity_check(rb, steps[0])
    if not check.ok:
        gate = gates.capacity_gate(check, subject=steps[0].name)
        _record_evaluation(
            rb, None, [gate], outcome=StepEvaluation.Outcome.BLOCKED, reason=gate.reason, now=now
        )
        return StepEvaluation.Outcome.BLOCKED, gate.reason
    reason = f"scheduled start ({why})"
    _start(rb, actor=SYSTEM_BEAT, reason=reason, now=now)
    _record_evaluation(rb, steps[0], [], outcome=StepEvaluation.Outcome.START, reason=reason, now=now)
    return StepEvaluation.Outcome.START, reason


def _tick_live(rb: Runbook, now: dt.datetime) -> tuple[str, str]:
    steps = _steps(rb)
    step = steps[rb.current_step]
    ev = runbook_evaluate(rb, step, steps, now=now)
    outcome = ev.outcome
    reason = "; ".join(ev.reasons) or "all gates pass"
    Outcome = StepEvaluation.Outcome

    if outcome == gates.ROLLBACK:
        ev.record(rb, step, Outcome.ROLLBACK, reason=reason, now=now)
        _rollback(
            rb,
            actor=SYSTEM_BEAT,
            reason=f"guardrail breach at step {step.name}: {reason}",
            now=now,
            details={"gates": _gate_details(ev.gates)},
        )
        return Outcome.ROLLBACK, reason

    if rb.status == Runbook.Status.PAUSED:
        ev.record(rb, step, Outcome.MONITOR, reason=f"paused; {reason}", now=now)
        return Outcome.MONITOR, reason

    if outcome == gates.WAIT:
        ev.record(rb, step, Outcome.WAIT, reason=reason, now=now)
        return Outcome.WAIT, reason

    if outcome == gates.HOLD:
        return _hold(rb, step, ev, reason=reason, now=now)

    # Gates pass. Remember a ship verdict taken here; then: a pending jump, the next step, or promotion.
    _remember_ship_decision(rb, step, ev, now)
    is_last = step.index == len(steps) - 1
    target = rb.pending_step if rb.pending_step is not None else (None if is_last else step.index + 1)
    approval = _open_approval(rb)
    if target is None:
        if not rb.ship_decision:
            missing = gates.Gate(
                "ship_decision", gates.HOLD, "no ship decision was recorded on a step with a control group"
            )
            return _hold(rb, step, ev, reason=missing.reason, now=now, extra=[missing])
        if rb.promotion_needs_approval:
            if approval is None or approval.kind != Approval.Kind.PROMOTION:
                return _wait_for_approval(rb, step, ev, kind=Approval.Kind.PROMOTION, target=None, now=now)
            if approval.status != Approval.Status.APPROVED:
                return _still_waiting(rb, step, ev, reason="waiting for promotion approval", now=now)
        ev.record(rb, step, Outcome.PROMOTE, reason=reason, now=now)
        _promote(
            rb,
            actor=SYSTEM_BEAT,
            reason=f"all gates pass at {step.name} with a ship decision",
            now=now,
            analysis=ev.analysis,
            gate_list=ev.gates,
            approval=approval,
        )
        return Outcome.PROMOTE, reason

    next_step = steps[target]
    check = _capacity_check(rb, next_step)
    cap_gate = gates.capacity_gate(check, subject=f"→ {next_step.name}")
    if not check.ok:
        return _hold(rb, step, ev, reason=cap_gate.reason, now=now, extra=[cap_gate])
    jump = rb.pending_step is not None
    if next_step.needs_approval or jump:
        kind = Approval.Kind.JUMP if jump else Approval.Kind.STEP
        if approval is None or approval.step_index != target:
            return _wait_for_approval(rb, step, ev, kind=kind, target=target, now=now)
        if approval.status != Approval.Status.APPROVED:
            return _still_waiting(
                rb, step, ev, reason=f"waiting for approval of {next_step.name}", now=now, extra=[cap_gate]
            )
        model_update(instance=approval, data={"status": Approval.Status.CONSUMED})
    ev.record(rb, step, Outcome.ADVANCE, reason=f"{reason} → {next_step.name}", now=now, extra=[cap_gate])
    _enter_step(
        rb,
        steps,
        target,
        actor=SYSTEM_BEAT,
        reason=f"gates of {step.name} pass ({reason})",
        now=now,
        verb="runbook.advance",
        before=_snapshot(rb),
    )
    return Outcome.ADVANCE, f"→ {next_step.name}"


def _remember_ship_decision(rb: Runbook, step: RampStep, ev: Evaluation, now: dt.datetime) -> None:
    if not any(g.gate == "ship_decision" and g.outcome == gates.PASS for g in ev.gates) or not ev.analysis:
        return
    rb.ship_decision = {
        "step_index": step.index,
        "step": step.name,
        "decided_at": now.isoformat(),
        "analysis_run_id": ev.analysis.analysis_run_id,
        "computed_at": ev.analysis.computed_at,
        "reasons": list(ev.analysis.recommendation.reasons),
        "analysis": ev.analysis.to_dict(),
    }
    rb.save(update_fields=["ship_decision"])


def _hold(
    rb: Runbook,
    step: RampStep,
    ev: Evaluation,
    *,
    reason: str,
    now: dt.datetime,
    extra: Sequence[gates.Gate] = (),
) -> tuple[str, str]:
    ev.record(rb, step, StepEvaluation.Outcome.HOLD, reason=reason, now=now, extra=extra)
    if rb.status != Runbook.Status.HELD or rb.status_reason != reason:
        was_held = rb.status == Runbook.Status.HELD
        _beat_status(rb, Runbook.Status.HELD, verb="runbook.hold", reason=reason, now=now)
        if not was_held:  # notify on entering the hold, not on every minute it lasts
            details = {"gates": _gate_details([*ev.gates, *extra])}
            notify(runbook=rb, event="hold", reason=reason, now=now, details=details)
    return StepEvaluation.Outcome.HOLD, reason


def _still_waiting(
    rb: Runbook,
    step: RampStep,
    ev: Evaluation,
    *,
    reason: str,
    now: dt.datetime,
    extra: Sequence[gates.Gate] = (),
) -> tuple[str, str]:
    """Gates pass but the approval is still pending: (back to) waiting, e.g. after a hold cleared."""
    ev.record(rb, step, StepEvaluation.Outcome.APPROVAL, reason=reason, now=now, extra=extra)
    if rb.status != Runbook.Status.WAITING_APPROVAL:
        _beat_status(
            rb, Runbook.Status.WAITING_APPROVAL, verb="runbook.wait_approval", reason=reason, now=now
        )
    return StepEvaluation.Outcome.APPROVAL, reason


def _wait_for_approval(
    rb: Runbook, step: RampStep, ev: Evaluation, *, kind: str, target: int | None, now: dt.datetime
) -> tuple[str, str]:
    what = "promotion" if target is None else f"step {target}"
    reason = f"gates of {step.name} pass; {what} needs an approver"
    ev.record(rb, step, StepEvaluation.Outcome.APPROVAL, reason=reason, now=now)
    before = _snapshot(rb)
    requester: Actor = rb.started_by if rb.started_by is not None else (rb.started_by_label or SYSTEM_BEAT)
    _request_approval(rb, kind=kind, step_index=target, requested_by=requester, reason=reason, now=now)
    rb.pending_step = target if kind == Approval.Kind.JUMP else None
    _beat_status(
        rb,
        Runbook.Status.WAITING_APPROVAL,
        verb="runbook.wait_approval",
        reason=reason,
        now=now,
        before=before,
        fields=["status", "status_reason", "pending_step"],
    )
    return StepEvaluation.Outcome.APPROVAL, reason


def _beat_status(
    rb: Runbook,
    status: str,
    *,
    verb: str,
    reason: str,
    now: dt.datetime,
    before: dict[str, Any] | None = None,
    fields: Sequence[str] = ("status", "status_reason"),
) -> None:
    """The sweeper moves the runbook to ``status`` for ``reason`` (saved and audited)."""
    before = _snapshot(rb) if before is None else before
    rb.status, rb.status_reason = status, reason
    save_transition(rb, actor=SYSTEM_BEAT, verb=verb, reason=reason, now=now, before=before, fields=fields)
