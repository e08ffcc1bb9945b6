"""Gates of the current step, the sweep's shared reads, and the evaluation record (history rows)."""

from __future__ import annotations

import contextvars
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from controlplane.core import telemetry
from controlplane.core.models import SurfacePopulation
from controlplane.core.services import Actor
from experiments.outcome import AnalysisOutcome, analysis_outcome
from migrations_runbooks import capacity, gates
from migrations_runbooks.allocation_drift import allocation_drift_gates
from migrations_runbooks.gates import Gate
from migrations_runbooks.models import GateResult, RampStep, Runbook, StepEvaluation
from migrations_runbooks.services._base import SYSTEM_BEAT, _label


class _SweepCache:
    """Facts read once per sweep instead of once per ramp: prices, stack specs, loads, plans, the
    due runbooks' experiments and (when analyses may be reused) their latest analysis runs.

    ``due`` holds (runbook id, plan version, experiment key). A transition updates its surface's
    load in place, so later ramps in the same sweep see it.
    """

    def __init__(self, due: Sequence[tuple[int, int, str]]) -> None:
        self.plan_versions = {pk: plan for pk, plan, _ in due}
        keys = sorted({key for _, _, key in due if key})
        self.prices = capacity.prices_current()
        self.specs = capacity.stack_specs()
        self.loads = capacity.current_loads()
        self.steps: dict[int, list[RampStep]] = {}
        for step in RampStep.objects.filter(runbook_id__in=self.plan_versions).order_by(
            "runbook_id", "index"
        ):
            self.steps.setdefault(step.runbook_id, []).append(step)
        self.experiments = gates.experiments_by_key(keys) if keys else {}
        self.runs: dict[str, Any] = {}
        if keys and gates.analysis_max_age_s() > 0:
            self.runs = gates.latest_analysis_runs(keys)


_sweep: contextvars.ContextVar[_SweepCache | None] = contextvars.ContextVar("runbook_sweep", default=None)


def _capacity_check(rb: Runbook, step: RampStep) -> capacity.CapacityCheck:
    """Fleet-wide plan with this surface at ``step`` and every other surface as it is now."""
    cache = _sweep.get()
    prices = cache.prices if cache else capacity.prices_current()
    loads = dict(cache.loads) if cache else capacity.current_loads()
    current = loads.get(rb.surface_id)
    populations = (
        current.populations
        if current
        else tuple(
            (p.population, p.stack.label, p.share_bp)
            for p in SurfacePopulation.objects.filter(surface=rb.surface).select_related("stack")
        )
    )
    loads[rb.surface_id] = capacity.SurfaceLoad(
        rb.surface.key,
        rb.surface.peak_qps,
        populations,
        treatment_stack=rb.target_stack.label if step.treatment_bp else None,
        treatment_bp=step.treatment_bp,
        shadow_stack=rb.target_stack.label if step.shadow_bp else None,
        shadow_bp=step.shadow_bp,
    )
    plan = capacity.plan_fleet(list(loads.values()), cache.specs if cache else capacity.stack_specs(), prices)
    return capacity.check_limits(plan, prices)


def _current_step(rb: Runbook) -> RampStep | None:
    return rb.steps.filter(index=rb.current_step).first() if rb.current_step >= 0 else None


def _steps(rb: Runbook) -> list[RampStep]:
    cache = _sweep.get()
    if cache is not None and cache.plan_versions.get(rb.pk) == rb.plan_version and rb.pk in cache.steps:
        return cache.steps.pop(rb.pk)  # read in bulk before the sweep; the plan has not changed since
    return list(rb.steps.order_by("index"))


@dataclass
class Evaluation:
    gates: list[Gate]
    outcome: str
    analysis: AnalysisOutcome | None = None
    reasons: list[str] = field(default_factory=list)

    def record(
        self,
        rb: Runbook,
        step: RampStep,
        outcome: str,
        *,
        reason: str,
        now: dt.datetime,
        extra: Sequence[Gate] = (),
        actor: Actor = SYSTEM_BEAT,
    ) -> StepEvaluation | None:
        """Record this look (its gates plus ``extra`` ones) as ``outcome``; see :func:`_record_evaluation`."""
        return _record_evaluation(
            rb,
            step,
            [*self.gates, *extra],
            outcome=outcome,
            reason=reason,
            now=now,
            analysis=self.analysis,
            actor=actor,
        )


def runbook_evaluate(rb: Runbook, step: RampStep, steps: list[RampStep], *, now: dt.datetime) -> Evaluation:
    """The current step's gates on fresh analysis/parity (no writes besides the analysis run)."""
    config = step.gates or {}
    analysis: AnalysisOutcome | None = None
    analysis_error = ""
    if gates.needs_analysis(config):
        fresh, analysis_error = gates.fresh_analysis(runbook=rb, now=now)
        analysis = analysis_outcome(fresh)
    parity, parity_error = (None, "")
    if gates.needs_parity(config):
        parity, parity_error = gates.fresh_parity(runbook=rb, since=step.started_at)
    serving, serving_error = (None, "")
    if gates.needs_serving(config):
        serving, serving_error = gates.fresh_serving(runbook=rb, since=step.started_at, until=now)
    facts = gates.StepFacts(
        name=step.name,
        treatment_bp=step.treatment_bp,
        shadow_bp=step.shadow_bp,
        min_duration_s=step.min_duration.total_seconds(),
        min_units=step.min_units,
        gates=config,
        elapsed_s=(now - (step.started_at or now)).total_seconds(),
        slo_ms=rb.target_stack.latency_slo_ms,
        is_last=step.index == len(steps) - 1,
    )
    # The capacity of the step being held stays a gate too (limits may have been lowered).
    check = _capacity_check(rb, step) if config.get("capacity") else None
    result = gates.evaluate(
        facts,
        analysis=analysis,
        analysis_error=analysis_error,
        parity=parity,
        parity_error=parity_error,
        serving=serving,
        serving_error=serving_error,
        capacity=check,
    )
    result = [*result, *allocation_drift_gates(runbook=rb, step=step)]  # live split == the step's
    outcome = gates.summarize(result)
    return Evaluation(result, outcome, analysis, [g.reason for g in gates.blocking(result)])


def _record_evaluation(
    rb: Runbook,
    step: RampStep | None,
    result: Sequence[Gate],
    *,
    outcome: str,
    reason: str,
    now: dt.datetime,
    analysis: AnalysisOutcome | None = None,
    actor: Actor = SYSTEM_BEAT,
) -> StepEvaluation | None:
    """Keep the latest look on the runbook row; add a history row when something changed.

    The sweeper looks every minute; a waiting ramp whose gates say the same thing as last time
    only refreshes ``Runbook.last_evaluation`` (values and times), so history stays readable and
    the tick stays cheap. Holds, rollbacks, advances and any change of a gate's outcome are rows.
    """
    signature = [
        step.index if step else rb.current_step,
        outcome,
        sorted([g.gate, g.subject, g.outcome] for g in result),
    ]
    telemetry.evaluation_recorded(outcome=outcome, gates=[(g.gate, g.outcome) for g in result])
    computed_at = analysis.computed_at if analysis is not None else ""
    decision = str(analysis.recommendation.verdict or "") if analysis is not None else ""
    previous = rb.last_evaluation or {}
    repeat = outcome in (
        StepEvaluation.Outcome.WAIT,
        StepEvaluation.Outcome.MONITOR,
        StepEvaluation.Outcome.APPROVAL,
    ) and (previous.get("signature") == signature and previous.get("evaluation_id"))
    rb.last_evaluation = {
        "evaluated_at": now.isoformat(),
        "step_index": step.index if step else rb.current_step,
        "outcome": outcome,
        "reason": reason[:4000],
        "actor": _label(actor),
        "analysis_computed_at": computed_at,
        "decision": decision,
        "gates": [{**g.to_dict(), "passed": g.outcome == gates.PASS} for g in result],
        "signature": signature,
        "evaluation_id": previous.get("evaluation_id") if repeat else None,
    }
    if repeat:
        return None
    evaluation = StepEvaluation.objects.create(
        runbook=rb,
        step=step,
        step_index=step.index if step else rb.current_step,
        evaluated_at=now,
        outcome=outcome,
        reason=reason[:4000],
        analysis_computed_at=computed_at[:40],
        decision=decision[:12],
        actor_label=_label(actor),
    )
    GateResult.objects.bulk_create(
        [
            GateResult(
                evaluation=evaluation,
                gate=g.gate,
                subject=g.subject[:80],
                outcome=g.outcome,
                value=g.value,
                threshold=g.threshold,
                comparator=g.comparator,
                reason=g.reason,
            )
            for g in result
        ]
    )
    rb.last_evaluation["evaluation_id"] = evaluation.pk
    return evaluation


def _gate_details(result: Sequence[Gate]) -> list[dict[str, Any]]:
    return [g.to_dict() for g in gates.blocking(result)]
