"""What a gate is: its outcome, value, threshold and the sentence a PM reads; how gates sum up."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

PASS, WAIT, HOLD, ROLLBACK = "pass", "wait", "hold", "rollback"
SRM_THRESHOLD = 0.001  # DESIGN.md: flag SRM when the χ² p-value is below 0.001


@dataclass(frozen=True, slots=True)
class Gate:
    gate: str
    outcome: str
    reason: str
    subject: str = ""
    value: float | None = None
    threshold: float | None = None
    comparator: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class StepFacts:
    """What the gates of one step look at."""

    name: str
    treatment_bp: int
    shadow_bp: int
    min_duration_s: float
    min_units: int
    gates: Mapping[str, Any]
    elapsed_s: float
    slo_ms: float
    is_last: bool = False


def summarize(gates: Sequence[Gate]) -> str:
    """Rollback beats everything; then a young step waits; then any hold holds; else pass."""
    outcomes = {g.outcome for g in gates}
    for outcome in (ROLLBACK, WAIT, HOLD):
        if outcome in outcomes:
            return outcome
    return PASS


def blocking(gates: Sequence[Gate]) -> list[Gate]:
    """The gates that decide the summary outcome (what a held step shows)."""
    outcome = summarize(gates)
    return [g for g in gates if g.outcome == outcome] if outcome != PASS else []


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def bound_check(value: float, bound: Mapping[str, Any]) -> tuple[bool, float, str]:
    """(ok, threshold, comparator) of a ``{"min": x}`` or ``{"max": x}`` bound."""
    if "min" in bound:
        return value >= float(bound["min"]), float(bound["min"]), ">="
    return value <= float(bound["max"]), float(bound["max"]), "<="
