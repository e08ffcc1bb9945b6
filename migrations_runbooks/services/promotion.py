"""Promotion: the target stack becomes the surface's production stack; unused legacy stacks retire."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from controlplane.core import services as core
from controlplane.core.errors import ApplicationError, ConflictError
from controlplane.core.models import RankingStack, Surface, SurfacePopulation
from controlplane.core.services import Actor
from controlplane.core.updates import model_update
from experiments.outcome import AnalysisOutcome
from migrations_runbooks import gates
from migrations_runbooks.models import Approval, RampStep, Runbook, StepEvaluation
from migrations_runbooks.notifications import notify
from migrations_runbooks.services._base import _snapshot, operator_action, save_finished
from migrations_runbooks.services.approvals import _open_approval
from migrations_runbooks.services.evaluation import _steps, runbook_evaluate
from migrations_runbooks.services.transitions import _reset_traffic


def _promote(
    rb: Runbook,
    *,
    actor: Actor,
    reason: str,
    now: dt.datetime,
    analysis: AnalysisOutcome | None,
    gate_list: Sequence[gates.Gate],
    approval: Approval | None,
) -> Runbook:
    before = _snapshot(rb)
    surface = rb.surface
    legacy = {p.stack for p in SurfacePopulation.objects.filter(surface=surface).select_related("stack")} - {
        rb.target_stack
    }
    rb.final_readout = {
        "frozen_at": now.isoformat(),
        "analysis": analysis.to_dict() if analysis else (rb.ship_decision or {}).get("analysis"),
        "ship_decision": {k: v for k, v in (rb.ship_decision or {}).items() if k != "analysis"} or None,
        "gates": [g.to_dict() for g in gate_list],
        "approval": {
            "id": approval.pk,
            "by": approval.decided_by.get_username() if approval.decided_by else None,
            "reason": approval.decision_reason,
        }
        if approval
        else None,
    }
    rb.final_readout.update(
        gates.experiment_freeze(
            runbook=rb,
            actor=actor,
            reason=reason,
            now=now,
            analysis_run_id=(rb.ship_decision or {}).get("analysis_run_id"),
        )
    )
    if rb.target_stack.status != RankingStack.Status.ACTIVE:
        core.stack_set_status(
            stack=rb.target_stack,
            status=RankingStack.Status.ACTIVE,
            actor=actor,
            reason=f"promoted on {surface.key}",
        )
    core.surface_promote_stack(surface=surface, stack=rb.target_stack, actor=actor, reason=reason, now=now)
    allocation = _reset_traffic(
        rb,
        actor=actor,
        reason=f"promotion: {rb.target_stack.label} serves every population",
        now=now,
        verb="allocation.promote",
    )
    retired = []
    for stack in legacy:
        still_used = (
            SurfacePopulation.objects.filter(stack=stack).exists()
            or Surface.objects.filter(production_stack=stack).exists()
        )
        if not still_used and stack.status != RankingStack.Status.RETIRED:
            core.stack_set_status(
                stack=stack,
                status=RankingStack.Status.RETIRED,
                actor=actor,
                reason=f"no surface uses it after {surface.key} promoted {rb.target_stack.label}",
            )
            retired.append(stack.label)
    if approval is not None:
        model_update(instance=approval, data={"status": Approval.Status.CONSUMED})
    RampStep.objects.filter(runbook=rb, index=rb.current_step).update(completed_at=now)
    save_finished(
        rb,
        Runbook.Status.PROMOTED,
        actor=actor,
        verb="runbook.promote",
        reason=reason,
        now=now,
        before=before,
        allocation_version=allocation.version,
        retired=sorted(retired),
        production_stack=rb.target_stack.label,
    )
    notify(
        runbook=rb,
        event="promotion",
        reason=reason,
        now=now,
        details={"allocation_version": allocation.version, "retired": sorted(retired)},
    )
    return rb


@operator_action(
    allowed=(Runbook.Status.RUNNING, Runbook.Status.WAITING_APPROVAL, Runbook.Status.HELD),
    refusal="it cannot be promoted",
    done=(Runbook.Status.PROMOTED,),
)
def runbook_promote(rb: Runbook, *, actor: Actor, reason: str, now: dt.datetime) -> Runbook:
    """Promote now (an operator's action): at the last step, gates pass on fresh analysis incl. ship.

    Same checks as the sweeper: nothing is skipped because a person asked.
    """
    steps = _steps(rb)
    step = steps[rb.current_step]
    if step.index != len(steps) - 1 or step.treatment_bp != 10000:
        raise ConflictError(f"promotion happens at the 100% step; runbook {rb.pk} is at {step.name}")
    approval = _open_approval(rb)
    if rb.promotion_needs_approval and (
        approval is None
        or approval.kind != Approval.Kind.PROMOTION
        or approval.status != Approval.Status.APPROVED
    ):
        raise ConflictError("promotion needs an approved promotion approval (four-eyes)", field="approval")
    if (
        approval is not None
        and approval.decided_by_id is not None
        and actor is not None
        and not isinstance(actor, str)
        and approval.decided_by_id == actor.pk
    ):
        raise ApplicationError(
            "four-eyes: the approver cannot also carry out the promotion", code="four_eyes", http_status=403
        )
    if not rb.ship_decision:
        raise ConflictError(
            "promotion needs a ship decision recorded on a step with a control group", field="ship_decision"
        )
    ev = runbook_evaluate(rb, step, steps, now=now)
    if ev.outcome != gates.PASS:
        failing = "; ".join(ev.reasons)
        refused = f"promotion refused: {failing}"
        ev.record(rb, step, StepEvaluation.Outcome.HOLD, reason=refused, now=now, actor=actor)
        raise ConflictError(f"promotion refused, gates do not pass: {failing}", field="gates")
    ev.record(rb, step, StepEvaluation.Outcome.PROMOTE, reason=reason, now=now, actor=actor)
    return _promote(
        rb, actor=actor, reason=reason, now=now, analysis=ev.analysis, gate_list=ev.gates, approval=approval
    )
