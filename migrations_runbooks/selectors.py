"""Runbook reads for the API and the web UI: lists, detail with gates, capacity plans, program view."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import Prefetch, QuerySet

from controlplane.core.models import Surface
from controlplane.core.selectors import allocation_current
from migrations_runbooks import capacity
from migrations_runbooks.models import (
    Approval,
    GateResult,
    Milestone,
    Notification,
    RampStep,
    Runbook,
    RunbookTemplate,
    StepEvaluation,
)


def runbook_list(
    *, surface: str | None = None, status: str | None = None, milestone: str | None = None
) -> QuerySet[Runbook]:
    qs = Runbook.objects.select_related(
        "surface", "target_stack", "milestone", "depends_on__surface"
    ).prefetch_related(Prefetch("steps", queryset=RampStep.objects.order_by("index")))
    if surface:
        qs = qs.filter(surface__key=surface)
    if status:
        qs = qs.filter(status__in=status.split(","))
    if milestone:
        qs = qs.filter(milestone__key=milestone)
    return qs


def template_list() -> QuerySet[RunbookTemplate]:
    return RunbookTemplate.objects.all()


def evaluation_list(*, runbook: Runbook, limit: int = 50) -> list[StepEvaluation]:
    return list(
        runbook.evaluations.prefetch_related(Prefetch("gates", queryset=GateResult.objects.order_by("id")))[
            :limit
        ]
    )


def _gate_dict(g: GateResult) -> dict[str, Any]:
    return {
        "gate": g.gate,
        "subject": g.subject,
        "outcome": g.outcome,
        "passed": g.passed,
        "value": g.value,
        "threshold": g.threshold,
        "comparator": g.comparator,
        "reason": g.reason,
    }


def evaluation_dict(ev: StepEvaluation) -> dict[str, Any]:
    return {
        "id": ev.pk,
        "step_index": ev.step_index,
        "evaluated_at": ev.evaluated_at,
        "outcome": ev.outcome,
        "reason": ev.reason,
        "decision": ev.decision,
        "analysis_computed_at": ev.analysis_computed_at,
        "actor": ev.actor_label,
        "gates": [_gate_dict(g) for g in ev.gates.all()],
    }


def approval_dict(a: Approval) -> dict[str, Any]:
    return {
        "id": a.pk,
        "kind": a.kind,
        "step_index": a.step_index,
        "status": a.status,
        "requested_by": a.requested_by_label,
        "requested_at": a.requested_at,
        "request_reason": a.request_reason,
        "decided_by": a.decided_by.get_username() if a.decided_by else None,
        "decided_at": a.decided_at,
        "decision_reason": a.decision_reason,
    }


def _step_state(rb: Runbook, step: RampStep) -> str:
    if rb.current_step < 0 or step.index > rb.current_step:
        return "pending"
    if step.index < rb.current_step or step.completed_at is not None:
        return "done"
    return "current"


def step_dict(rb: Runbook, step: RampStep) -> dict[str, Any]:
    return {
        "index": step.index,
        "name": step.name,
        "treatment_bp": step.treatment_bp,
        "shadow_bp": step.shadow_bp,
        "min_duration_s": int(step.min_duration.total_seconds()),
        "min_units": step.min_units,
        "needs_approval": step.needs_approval,
        "gates": step.gates,
        "started_at": step.started_at,
        "completed_at": step.completed_at,
        "state": _step_state(rb, step),
    }


def _last_look(rb: Runbook) -> dict[str, Any] | None:
    """The latest look at the current step's gates (refreshed every tick on the runbook row)."""
    last = rb.last_evaluation
    if not last or last.get("step_index") != rb.current_step or last.get("outcome") in ("start", "blocked"):
        return None
    return {
        "id": last.get("evaluation_id") or 0,
        "step_index": last["step_index"],
        "evaluated_at": last["evaluated_at"],
        "outcome": last["outcome"],
        "reason": last.get("reason", ""),
        "decision": last.get("decision", ""),
        "analysis_computed_at": last.get("analysis_computed_at", ""),
        "actor": last.get("actor", ""),
        "gates": [
            {
                k: g.get(k)
                for k in (
                    "gate",
                    "subject",
                    "outcome",
                    "passed",
                    "value",
                    "threshold",
                    "comparator",
                    "reason",
                )
            }
            for g in last.get("gates", [])
        ],
    }


def runbook_detail(*, runbook: Runbook, now: dt.datetime | None = None) -> dict[str, Any]:
    """Everything a PM needs on one runbook: where it is, what holds it (gate, value, threshold), next check."""
    from migrations_runbooks.services import dependency_status

    rb = runbook
    steps = list(rb.steps.order_by("index"))
    latest = rb.evaluations.prefetch_related("gates").first()
    # The latest evaluation that looked at the gates of the current step (not a bare start record).
    gate_eval = (
        rb.evaluations.filter(step_index=rb.current_step)
        .exclude(outcome__in=["start", "blocked"])
        .prefetch_related("gates")
        .first()
        if rb.current_step >= 0
        else None
    )
    holding: list[dict[str, Any]] = []
    if gate_eval is not None and rb.status in (Runbook.Status.HELD, Runbook.Status.ROLLED_BACK):
        wanted = "rollback" if rb.status == Runbook.Status.ROLLED_BACK else "hold"
        holding = [_gate_dict(g) for g in gate_eval.gates.all() if g.outcome == wanted]
    open_approval = rb.approvals.filter(
        status__in=[Approval.Status.PENDING, Approval.Status.APPROVED]
    ).first()
    allocation = allocation_current(surface=rb.surface)
    dep_ok, dep_reason = dependency_status(rb, now) if (rb.depends_on_id and now) else (True, "")
    current = steps[rb.current_step] if 0 <= rb.current_step < len(steps) else None
    return {
        "id": rb.pk,
        "name": rb.name,
        "surface": rb.surface.key,
        "target_stack": rb.target_stack.label,
        "status": rb.status,
        "status_reason": rb.status_reason,
        "current_step": rb.current_step,
        "current_step_name": current.name if current else None,
        "treatment_bp": current.treatment_bp if current else 0,
        "pending_step": rb.pending_step,
        "step_started_at": rb.step_started_at,
        "next_check_at": rb.next_check_at,
        "last_tick_at": rb.last_tick_at,
        "ticks": rb.ticks,
        "start_at": rb.start_at,
        "started_at": rb.started_at,
        "started_by": rb.started_by_label,
        "finished_at": rb.finished_at,
        "experiment_key": rb.experiment_key,
        "salt": rb.salt,
        "milestone": rb.milestone.key if rb.milestone else None,
        "template": rb.template.key if rb.template else None,
        "promotion_needs_approval": rb.promotion_needs_approval,
        "depends_on": {
            "runbook": rb.depends_on_id,
            "surface": rb.depends_on.surface.key if rb.depends_on else None,
            "bp": rb.depends_on_bp,
            "hold_s": rb.depends_on_hold_s,
            "met": dep_ok,
            "reason": dep_reason,
        }
        if rb.depends_on_id
        else None,
        "steps": [step_dict(rb, s) for s in steps],
        "current_gates": _last_look(rb) or (evaluation_dict(gate_eval) if gate_eval else None),
        "holding_gates": holding,
        "latest_evaluation": evaluation_dict(latest) if latest else None,
        "open_approval": approval_dict(open_approval) if open_approval else None,
        "approvals": [approval_dict(a) for a in rb.approvals.select_related("decided_by")[:20]],
        "allocation_version": allocation.version if allocation else None,
        "final_readout": rb.final_readout,
    }


# -- capacity -------------------------------------------------------------------------------------------
def capacity_plan(*, runbook: Runbook) -> dict[str, Any]:
    """Per step: QPS, replicas and cost per stack for this surface, savings vs its legacy baseline,
    and whether the fleet (every surface as it is now, this one at the step) fits the limits."""
    prices = capacity.prices_current()
    specs = capacity.stack_specs()
    base = capacity.baseline_loads().get(runbook.surface_id)
    if base is None:
        surface = runbook.surface
        base = capacity.SurfaceLoad(
            surface.key,
            surface.peak_qps,
            tuple(
                (p.population, p.stack.label, p.share_bp) for p in surface.populations.select_related("stack")
            ),
        )
    base = capacity.SurfaceLoad(base.surface, runbook.surface.peak_qps, base.populations)
    baseline_plan = capacity.plan_fleet([base], specs, prices)
    others = {k: v for k, v in capacity.current_loads().items() if k != runbook.surface_id}
    target = runbook.target_stack.label
    rows = []
    for step in runbook.steps.order_by("index"):
        load = capacity.SurfaceLoad(
            base.surface,
            base.peak_qps,
            base.populations,
            treatment_stack=target if step.treatment_bp else None,
            treatment_bp=step.treatment_bp,
            shadow_stack=target if step.shadow_bp else None,
            shadow_bp=step.shadow_bp,
        )
        plan = capacity.plan_fleet([load], specs, prices)
        fleet = capacity.plan_fleet([*others.values(), load], specs, prices)
        check = capacity.check_limits(fleet, prices)
        rows.append(
            {
                "index": step.index,
                "name": step.name,
                "treatment_bp": step.treatment_bp,
                "shadow_bp": step.shadow_bp,
                "plan": plan.to_dict(),
                "savings": capacity.savings(baseline_plan, plan),
                "fleet": {
                    "gpu_replicas": fleet.gpu_replicas,
                    "cpu_replicas": fleet.cpu_replicas,
                    "cost_per_hour": round(fleet.cost_per_hour, 4),
                    "fits": check.ok,
                    "reason": check.reason,
                },
            }
        )
    # After promotion every population is served by the target stack and the legacy fleet retires.
    promoted = capacity.SurfaceLoad(
        base.surface, base.peak_qps, tuple((p, target, bp) for p, _s, bp in base.populations)
    )
    promoted_plan = capacity.plan_fleet([promoted], specs, prices)
    return {
        "surface": runbook.surface.key,
        "peak_qps": runbook.surface.peak_qps,
        "target_stack": target,
        "prices": {
            "headroom": prices.headroom,
            "gpu_replica_cost_per_hour": prices.gpu_replica_cost_per_hour,
            "cpu_replica_cost_per_hour": prices.cpu_replica_cost_per_hour,
            "host_cpu_cores_per_gpu_replica": prices.host_cpu_cores_per_gpu_replica,
            "max_gpu_replicas": prices.max_gpu_replicas,
            "max_cpu_replicas": prices.max_cpu_replicas,
        },
        "baseline": baseline_plan.to_dict(),
        "steps": rows,
        "promoted": {
            "plan": promoted_plan.to_dict(),
            "savings": capacity.savings(baseline_plan, promoted_plan),
        },
    }


# -- program view ---------------------------------------------------------------------------------------
def half_start(at: dt.datetime) -> dt.datetime:
    """Start of the calendar half (H1 = Jan–Jun, H2 = Jul–Dec) containing ``at`` (UTC)."""
    month = 1 if at.month <= 6 else 7
    return dt.datetime(at.year, month, 1, tzinfo=dt.UTC)


def _half_label(at: dt.datetime) -> str:
    return f"{at.year}H{1 if at.month <= 6 else 2}"


def _program_point(
    milestone: Milestone, at: dt.datetime, specs: dict[str, capacity.StackSpec], prices: capacity.Prices
) -> dict[str, Any]:
    loads = capacity.current_loads(at=at)

    def on_target(label: str | None) -> bool:
        if label is None:
            return False
        if milestone.target_stack is not None:
            return label == milestone.target_stack.label
        spec = specs.get(label)
        return spec is not None and spec.kind == milestone.target_kind

    total_qps = target_qps = 0.0
    promoted = []
    for load in loads.values():
        total_qps += load.peak_qps
        treated = load.treatment_bp / 10000 if load.treatment_stack else 0.0
        share = treated if on_target(load.treatment_stack) else 0.0
        share += sum((1 - treated) * bp / 10000 for _p, stack, bp in load.populations if on_target(stack))
        target_qps += load.peak_qps * share
        if all(on_target(stack) for _p, stack, _bp in load.populations):
            promoted.append(load.surface)
    baseline = capacity.plan_fleet(list(capacity.baseline_loads().values()), specs, prices)
    fleet = capacity.plan_fleet(list(loads.values()), specs, prices) if loads else baseline
    saved = capacity.savings(baseline, fleet)
    return {
        "at": at,
        "traffic_share_on_target": round(target_qps / total_qps, 6) if total_qps else 0.0,
        "surfaces_total": len(loads),
        "surfaces_promoted": sorted(promoted),
        "legacy_replicas_freed": saved["legacy_replicas_freed"],
        "cost_saved_per_hour": saved["cost_saved_per_hour"],
    }


def program_progress(*, now: dt.datetime) -> dict[str, Any]:
    """Milestones with their runbooks and half-over-half progress (previous half start → this half → now)."""
    specs = capacity.stack_specs()
    prices = capacity.prices_current()
    this_half = half_start(now)
    previous_half = half_start(this_half - dt.timedelta(days=1))
    milestones = []
    for m in Milestone.objects.select_related("target_stack").prefetch_related(
        "runbooks__surface", "runbooks__steps"
    ):
        points = {
            "previous_half_start": _program_point(m, previous_half, specs, prices),
            "current_half_start": _program_point(m, this_half, specs, prices),
            "now": _program_point(m, now, specs, prices),
        }
        runbooks = []
        for rb in m.runbooks.all():
            steps = sorted(rb.steps.all(), key=lambda s: s.index)
            cur = steps[rb.current_step] if 0 <= rb.current_step < len(steps) else None
            runbooks.append(
                {
                    "id": rb.pk,
                    "surface": rb.surface.key,
                    "status": rb.status,
                    "step": cur.name if cur else None,
                    "treatment_bp": cur.treatment_bp if cur else 0,
                }
            )
        now_point, start_point = points["now"], points["current_half_start"]
        milestones.append(
            {
                "key": m.key,
                "name": m.name,
                "order": m.order,
                "target": m.target_stack.label if m.target_stack else m.target_kind,
                "due_at": m.due_at,
                "runbooks": runbooks,
                "done": bool(now_point["surfaces_total"])
                and len(now_point["surfaces_promoted"]) == now_point["surfaces_total"],
                "progress": points,
                "half_over_half": {
                    "previous_half": _half_label(previous_half),
                    "current_half": _half_label(this_half),
                    "traffic_share_delta": round(
                        now_point["traffic_share_on_target"] - start_point["traffic_share_on_target"], 6
                    ),
                    "surfaces_promoted_delta": len(now_point["surfaces_promoted"])
                    - len(start_point["surfaces_promoted"]),
                    "cost_saved_per_hour_delta": round(
                        now_point["cost_saved_per_hour"] - start_point["cost_saved_per_hour"], 4
                    ),
                },
            }
        )
    return {"now": now, "surfaces": Surface.objects.count(), "milestones": milestones}


def notification_list(*, status: str | None = None, runbook: Runbook | None = None) -> QuerySet[Notification]:
    qs = Notification.objects.select_related("endpoint")
    if status:
        qs = qs.filter(status=status)
    if runbook is not None:
        qs = qs.filter(runbook=runbook)
    return qs
