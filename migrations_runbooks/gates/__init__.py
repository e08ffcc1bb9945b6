"""Gates of a ramp step, evaluated on a fresh analysis outcome, shadow parity and a capacity check.

Every gate yields a :class:`Gate` with its value, threshold and a sentence a PM can read. Outcomes:

* ``pass``;
* ``wait``: the step is too young (minimum duration or units not reached) or the evidence is not
  conclusive *yet*; never advances;
* ``hold``: the step is mature and a gate does not pass (SRM, primary significantly worse, p99 over
  the SLO, parity out of bounds, no capacity, analysis missing or not computable);
* ``rollback``: a guardrail is significantly worse — acted on in the same tick, mature or not.

A missing or failed analysis is never a pass (the Argo/GrowthBook complaint: "a failed analysis did
not stop the rollout"). The evaluation (:func:`evaluate`) reads an
:class:`experiments.outcome.AnalysisOutcome`, whose verdicts the analysis engine decided.

Modules: :mod:`.base` (Gate, outcomes), :mod:`.config` (step gate config and its validation),
:mod:`.analysis` (units, SRM, primary, guardrail, latency and ship gates on the analysis),
:mod:`.serving` (parity, served health, capacity), :mod:`.step` (all gates of a step) and
:mod:`.sources` (the only places that reach the experiments and serving apps). Callers use the names
re-exported here (``gates.fresh_analysis``…), which is also where tests replace the sources.
"""

from __future__ import annotations

from migrations_runbooks.gates.base import (
    HOLD,
    PASS,
    ROLLBACK,
    SRM_THRESHOLD,
    WAIT,
    Gate,
    StepFacts,
    blocking,
    summarize,
)
from migrations_runbooks.gates.config import (
    DEFAULT_BAKE_GATES,
    DEFAULT_PARITY_THRESHOLDS,
    DEFAULT_RAMP_GATES,
    DEFAULT_SHADOW_GATES,
    needs_analysis,
    needs_parity,
    needs_serving,
    validate_config,
)
from migrations_runbooks.gates.serving import aggregate_parity, capacity_gate
from migrations_runbooks.gates.sources import (
    analysis_max_age_s,
    experiment_attach,
    experiment_freeze,
    experiments_by_key,
    fresh_analysis,
    fresh_parity,
    fresh_serving,
    latest_analysis_runs,
    latest_runs,
    sweep_experiments,
)
from migrations_runbooks.gates.step import evaluate

__all__ = [
    "DEFAULT_BAKE_GATES",
    "DEFAULT_PARITY_THRESHOLDS",
    "DEFAULT_RAMP_GATES",
    "DEFAULT_SHADOW_GATES",
    "HOLD",
    "PASS",
    "ROLLBACK",
    "SRM_THRESHOLD",
    "WAIT",
    "Gate",
    "StepFacts",
    "aggregate_parity",
    "analysis_max_age_s",
    "blocking",
    "capacity_gate",
    "evaluate",
    "experiment_attach",
    "experiment_freeze",
    "experiments_by_key",
    "fresh_analysis",
    "fresh_parity",
    "fresh_serving",
    "latest_analysis_runs",
    "latest_runs",
    "needs_analysis",
    "needs_parity",
    "needs_serving",
    "summarize",
    "sweep_experiments",
    "validate_config",
]
