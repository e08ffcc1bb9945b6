"""An operator's hand on a live ramp: pause, resume, jump, roll back, abort.

Each is an :func:`~migrations_runbooks.services._base.operator_action` (role, reason, row lock,
idempotent retry, status check) whose middle changes the row, then
:func:`~migrations_runbooks.services._base.save_transition` saves and audits it.
"""

from __future__ import annotations

import datetime as dt

from controlplane.core.errors import ApplicationError
from controlplane.core.services import Actor
from migrations_runbooks.models import Approval, Runbook, StepEvaluation
from migrations_runbooks.services._base import (
    NOT_TERMINAL,
    _snapshot,
    operator_action,
    save_finished,
    save_transition,
)
from migrations_runbooks.services.approvals import _close_approvals, _request_approval
from migrations_runbooks.services.evaluation import _current_step, _record_evaluation, _steps
from migrations_runbooks.services.transitions import _enter_step, _reset_traffic, _rollback


@operator_action(
    allowed=(Runbook.Status.RUNNING, Runbook.Status.HELD, Runbook.Status.WAITING_APPROVAL),
    refusal="only a live runbook can pause",
    done=(Runbook.Status.PAUSED,),
)
def runbook_pause(rb: Runbook, *, actor: Actor, reason: str, now: dt.datetime) -> Runbook:
    """Freeze advancement. A paused runbook is still monitored: a guardrail breach rolls it back."""
    before = _snapshot(rb)
    rb.status, rb.status_reason = Runbook.Status.PAUSED, reason
    return save_transition(
        rb,
        actor=actor,
        verb="runbook.pause",
        reason=reason,
        now=now,
        before=before,
        fields=["status", "status_reason"],
    )


@operator_action(
    allowed=(Runbook.Status.PAUSED, Runbook.Status.HELD),
    refusal="only a paused or held runbook resumes",
    done=(Runbook.Status.RUNNING,),
)
def runbook_resume(rb: Runbook, *, actor: Actor, reason: str, now: dt.datetime) -> Runbook:
    """paused → running (or back to waiting for its open approval); the next tick re-checks gates."""
    before = _snapshot(rb)
    open_approval = rb.approvals.filter(status=Approval.Status.PENDING).exists()
    rb.status = Runbook.Status.WAITING_APPROVAL if open_approval else Runbook.Status.RUNNING
    rb.status_reason, rb.next_check_at = reason, now
    return save_transition(
        rb,
        actor=actor,
        verb="runbook.resume",
        reason=reason,
        now=now,
        before=before,
        fields=["status", "status_reason", "next_check_at"],
    )


@operator_action(allowed=Runbook.LIVE, refusal="only a live runbook can jump")
def runbook_jump(rb: Runbook, *, to_step: int, actor: Actor, reason: str, now: dt.datetime) -> Runbook:
    """Back: immediate (less exposure). Forward: needs an approver, and the gates still decide."""
    steps = _steps(rb)
    if not 0 <= to_step < len(steps):
        raise ApplicationError(f"step {to_step} does not exist (0..{len(steps) - 1})", field="to_step")
    if to_step == rb.current_step:
        raise ApplicationError(f"the runbook is already at step {to_step}", field="to_step")
    before = _snapshot(rb)
    _close_approvals(rb, now)
    if to_step < rb.current_step:
        return _enter_step(
            rb, steps, to_step, actor=actor, reason=reason, now=now, verb="runbook.jump", before=before
        )
    # Forward: never skip gates or approvals. Ask a second person; the tick moves once gates pass.
    _request_approval(
        rb, kind=Approval.Kind.JUMP, step_index=to_step, requested_by=actor, reason=reason, now=now
    )
    rb.pending_step = to_step
    rb.status = Runbook.Status.WAITING_APPROVAL
    rb.status_reason = f"jump to step {to_step} ({steps[to_step].name}) requested: {reason}"
    return save_transition(
        rb, actor=actor, verb="runbook.jump_request", reason=reason, now=now, before=before
    )


@operator_action(
    allowed=Runbook.LIVE,
    refusal="only a live runbook can roll back",
    done=(Runbook.Status.ROLLED_BACK,),
)
def runbook_rollback(rb: Runbook, *, actor: Actor, reason: str, now: dt.datetime) -> Runbook:
    _record_evaluation(
        rb,
        _current_step(rb),
        [],
        outcome=StepEvaluation.Outcome.ROLLBACK,
        reason=reason,
        now=now,
        actor=actor,
    )
    return _rollback(rb, actor=actor, reason=reason, now=now)


@operator_action(allowed=NOT_TERMINAL, refusal="it cannot be aborted", done=(Runbook.Status.ABORTED,))
def runbook_abort(rb: Runbook, *, actor: Actor, reason: str, now: dt.datetime) -> Runbook:
    """Cancel the plan; a live one hands all traffic back to the legacy stacks."""
    before = _snapshot(rb)
    after: dict[str, int] = {}
    if rb.status in Runbook.LIVE:
        allocation = _reset_traffic(
            rb, actor=actor, reason=f"abort: {reason}", now=now, verb="allocation.abort"
        )
        after["allocation_version"] = allocation.version
    _close_approvals(rb, now)
    return save_finished(
        rb,
        Runbook.Status.ABORTED,
        actor=actor,
        verb="runbook.abort",
        reason=reason,
        now=now,
        before=before,
        **after,
    )
