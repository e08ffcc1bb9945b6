"""All gates of one ramp step, from the facts of the step and the evidence read for it. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from experiments.outcome import AnalysisOutcome, analysis_outcome
from migrations_runbooks.capacity import CapacityCheck
from migrations_runbooks.gates.analysis import (
    latency_from_analysis,
    metric_gates,
    ship_gate,
    srm_gates,
    units_gate,
)
from migrations_runbooks.gates.base import HOLD, PASS, WAIT, Gate, StepFacts, hours
from migrations_runbooks.gates.config import gate_on, needs_analysis, needs_serving
from migrations_runbooks.gates.serving import capacity_gate, latency_from_parity, parity_gates, serving_gates


def evaluate(
    facts: StepFacts,
    *,
    analysis: AnalysisOutcome | Mapping[str, Any] | None,
    analysis_error: str = "",
    parity: Mapping[str, Any] | None = None,
    parity_error: str = "",
    serving: Mapping[str, Any] | None = None,
    serving_error: str = "",
    capacity: CapacityCheck | None = None,
) -> list[Gate]:
    """All gates of a step: evidence in, :class:`Gate` list out.

    ``analysis`` is an outcome, or a stored result of any schema (read through the one adapter).
    """
    outcome = analysis_outcome(analysis)
    cfg = facts.gates
    gates: list[Gate] = [
        Gate(
            "min_duration",
            PASS if facts.elapsed_s >= facts.min_duration_s else WAIT,
            f"{hours(facts.elapsed_s)} on step {facts.name} of the required {hours(facts.min_duration_s)}",
            value=round(facts.elapsed_s, 1),
            threshold=float(facts.min_duration_s),
            comparator=">=",
        )
    ]
    mature = facts.elapsed_s >= facts.min_duration_s
    if needs_analysis(cfg) and outcome is None:
        # A failed or missing analysis never lets a ramp through; it waits, then holds.
        gates.append(
            Gate(
                "analysis",
                HOLD if mature else WAIT,
                f"no fresh analysis: {analysis_error or 'not available'}",
            )
        )
    if outcome is not None:
        gates.append(units_gate(facts, outcome))
        mature = mature and gates[-1].outcome == PASS
        if gate_on(cfg, "srm"):
            gates.extend(srm_gates(outcome))
        if gate_on(cfg, "guardrails"):
            gates.extend(metric_gates(outcome, role="guardrail", mature=mature))
        if gate_on(cfg, "primary"):
            gates.extend(metric_gates(outcome, role="primary", mature=mature))
        latency_cfg = cfg.get("latency") or {}
        if latency_cfg and "metric" in latency_cfg:
            gates.append(latency_from_analysis(outcome, latency_cfg["metric"], facts.slo_ms, mature))
        if gate_on(cfg, "ship_decision"):
            gates.append(ship_gate(outcome, mature))
    elif (
        facts.min_units and not needs_analysis(cfg) and not gate_on(cfg, "parity") and not needs_serving(cfg)
    ):
        gates.append(Gate("min_units", WAIT, "no analysis to count units yet", threshold=facts.min_units))
    parity_cfg = gate_on(cfg, "parity")
    if parity_cfg:
        gates.extend(parity_gates(parity, parity_error, parity_cfg, facts, mature))
        latency_cfg = cfg.get("latency") or {}
        if latency_cfg and "parity_key" in latency_cfg:
            gates.append(latency_from_parity(parity, latency_cfg["parity_key"], facts.slo_ms, mature))
    if needs_serving(cfg):
        gates.extend(serving_gates(serving, serving_error, cfg, facts, mature))
    if gate_on(cfg, "capacity") and capacity is not None:
        gates.append(capacity_gate(capacity, subject=facts.name))
    return gates
