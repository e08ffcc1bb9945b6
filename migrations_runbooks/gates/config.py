"""Gate configuration of a ramp step: the defaults per step kind, validation, and what each needs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Gates of a live (treated) step; the last step with a control group adds ``ship_decision``.
DEFAULT_RAMP_GATES: dict[str, Any] = {
    "srm": True,
    "guardrails": True,
    "primary": True,
    "latency": {"metric": "latency_p99"},
    "capacity": True,
    "parity": False,
}
#: Gates of a shadow step: parity thresholds on the aggregated shadow comparison.
#: The 100% step has no control group left to compare with (every unit is treated, and units first
#: exposed as control have crossed over), so it bakes on serving health of the target stack: p99
#: latency within the SLO and error/fallback rates, plus capacity. The ship decision that lets a
#: runbook reach 100% is taken on the last step that still has a control group.
DEFAULT_BAKE_GATES: dict[str, Any] = {
    "srm": False,
    "guardrails": False,
    "primary": False,
    "ship_decision": False,
    "latency": {"serving_key": "p99_ms"},
    "serving": {"error_rate": {"max": 0.01}, "fallback_rate": {"max": 0.02}},
    "capacity": True,
    "parity": False,
}
#: Keys are those of ``controlplane.serving.selectors.shadow_parity_daily`` rows.
DEFAULT_PARITY_THRESHOLDS: dict[str, dict[str, float]] = {
    "overlap_10": {"min": 0.2},
    "rbo": {"min": 0.3},
    "calibration_diff": {"max": 0.05},
    "error_rate": {"max": 0.01},
}
DEFAULT_SHADOW_GATES: dict[str, Any] = {
    "srm": False,
    "guardrails": False,
    "primary": False,
    "latency": {"parity_key": "shadow_p99_ms"},
    "capacity": True,
    "parity": DEFAULT_PARITY_THRESHOLDS,
}


def gate_on(config: Mapping[str, Any], name: str) -> Any:
    """The gate's setting when it is on (true or a mapping), else None."""
    value = config.get(name, False)
    return value if value not in (None, False) else None


_SWITCHES = ("srm", "guardrails", "primary", "capacity", "ship_decision")


def validate_config(config: Any) -> dict[str, Any]:
    """Check a step's gate config; returns it as a dict or raises ValueError naming the key."""
    if not isinstance(config, Mapping):
        raise ValueError("gates must be an object")
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in _SWITCHES:
            if not isinstance(value, bool):
                raise ValueError(f"gates.{key} must be true or false")
        elif key == "latency":
            if value is not False and not (
                isinstance(value, Mapping)
                and set(value) <= {"metric", "parity_key", "serving_key"}
                and len(value) == 1
                and all(isinstance(v, str) and v for v in value.values())
            ):
                raise ValueError('gates.latency must be false or {"metric"|"parity_key"|"serving_key": key}')
        elif key == "serving":
            if value is not False and not _bounds_ok(value):
                raise ValueError("gates.serving must be false or {key: {min|max: number}}")
        elif key == "parity":
            if isinstance(value, bool):
                value = DEFAULT_PARITY_THRESHOLDS if value else False
            elif isinstance(value, Mapping):
                for name, bound in value.items():
                    if not (
                        isinstance(bound, Mapping)
                        and len(bound) == 1
                        and set(bound) <= {"min", "max"}
                        and all(
                            isinstance(v, int | float) and not isinstance(v, bool) for v in bound.values()
                        )
                    ):
                        raise ValueError(
                            f'gates.parity.{name} must be {{"min": number}} or {{"max": number}}'
                        )
            else:
                raise ValueError("gates.parity must be false, true or {key: {min|max: number}}")
        else:
            raise ValueError(f"unknown gate {key!r}; known: {[*_SWITCHES, 'latency', 'parity', 'serving']}")
        out[key] = value
    return out


def _bounds_ok(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(bound, Mapping)
        and len(bound) == 1
        and set(bound) <= {"min", "max"}
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in bound.values())
        for bound in value.values()
    )


def needs_serving(config: Mapping[str, Any]) -> bool:
    latency = config.get("latency") or {}
    return bool(gate_on(config, "serving")) or (isinstance(latency, Mapping) and "serving_key" in latency)


def needs_analysis(config: Mapping[str, Any]) -> bool:
    """Whether a step's gates read the experiment analysis (a shadow step's do not)."""
    latency = config.get("latency") or {}
    return any(gate_on(config, g) for g in ("srm", "guardrails", "primary", "ship_decision")) or (
        isinstance(latency, Mapping) and "metric" in latency
    )


def needs_parity(config: Mapping[str, Any]) -> bool:
    return bool(gate_on(config, "parity"))
