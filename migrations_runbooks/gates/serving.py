"""Gates on serving evidence: shadow parity, the target stack's served health and latency, capacity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from migrations_runbooks.capacity import CapacityCheck
from migrations_runbooks.gates.base import HOLD, PASS, WAIT, Gate, StepFacts, bound_check
from migrations_runbooks.gates.config import DEFAULT_PARITY_THRESHOLDS


def capacity_gate(check: CapacityCheck, *, subject: str) -> Gate:
    if not check.computable:
        return Gate("capacity", HOLD, f"capacity plan not computable: {check.reason}", subject=subject)
    # Report the tighter of the two fleet limits as value/threshold.
    if check.gpu_limit is not None and (
        check.cpu_limit is None
        or check.gpu_needed / max(check.gpu_limit, 1) >= check.cpu_needed / max(check.cpu_limit, 1)
    ):
        value, threshold, unit = float(check.gpu_needed), float(check.gpu_limit), "GPU"
    elif check.cpu_limit is not None:
        value, threshold, unit = float(check.cpu_needed), float(check.cpu_limit), "CPU"
    else:
        value, threshold, unit = float(check.gpu_needed), None, "GPU"
    return Gate(
        "capacity",
        PASS if check.ok else HOLD,
        check.reason,
        subject=f"{subject} ({unit} replicas)",
        value=value,
        threshold=threshold,
        comparator="<=",
    )


def latency_from_parity(parity: Mapping[str, Any] | None, key: str, slo_ms: float, mature: bool) -> Gate:
    value = (parity or {}).get(key)
    if value is None:
        return Gate("latency_slo", HOLD if mature else WAIT, f"no shadow {key} yet", subject=key)
    value = float(value)
    return Gate(
        "latency_slo",
        PASS if value <= slo_ms else HOLD,
        f"shadow {key} {value:.1f} ms {'within' if value <= slo_ms else 'over'} the {slo_ms:.0f} ms SLO",
        subject=key,
        value=value,
        threshold=slo_ms,
        comparator="<=",
    )


def serving_gates(
    serving: Mapping[str, Any] | None, error: str, cfg: Mapping[str, Any], facts: StepFacts, mature: bool
) -> list[Gate]:
    soft = HOLD if mature else WAIT
    if not serving or not serving.get("requests"):
        return [Gate("serving", soft, f"no serving samples of the target stack: {error or 'none yet'}")]
    n = int(serving["requests"])
    out = [
        Gate(
            "min_units",
            PASS if n >= facts.min_units else WAIT,
            f"{n} requests served by the target stack; need {facts.min_units}",
            subject="serving",
            value=float(n),
            threshold=float(facts.min_units),
            comparator=">=",
        )
    ]
    out += bound_gates(
        "serving", serving, cfg.get("serving") or {}, soft, source="serving health", label="served "
    )
    latency = cfg.get("latency") or {}
    if isinstance(latency, Mapping) and "serving_key" in latency:
        key = latency["serving_key"]
        value = serving.get(key)
        if value is None:
            out.append(Gate("latency_slo", soft, f"no served {key} yet", subject=key))
        else:
            value = float(value)
            out.append(
                Gate(
                    "latency_slo",
                    PASS if value <= facts.slo_ms else HOLD,
                    f"served {key} {value:.1f} ms {'within' if value <= facts.slo_ms else 'over'} the "
                    f"{facts.slo_ms:.0f} ms SLO",
                    subject=key,
                    value=value,
                    threshold=facts.slo_ms,
                    comparator="<=",
                )
            )
    return out


def bound_gates(
    name: str,
    values: Mapping[str, Any],
    bounds: Mapping[str, Any],
    soft: str,
    *,
    source: str,
    label: str = "",
) -> list[Gate]:
    """One gate per configured bound: PASS when ``values[key]`` meets it, HOLD when it misses,
    ``soft`` when ``source`` has no such value yet."""
    out = []
    for key, bound in bounds.items():
        value = values.get(key)
        if value is None:
            out.append(Gate(name, soft, f"{source} has no {key}", subject=key))
            continue
        value = float(value)
        ok, threshold, cmp = bound_check(value, bound)
        out.append(
            Gate(
                name,
                PASS if ok else HOLD,
                f"{label}{key} {value:.4g} {'meets' if ok else 'misses'} {cmp} {threshold:.4g}",
                subject=key,
                value=value,
                threshold=threshold,
                comparator=cmp,
            )
        )
    return out


def parity_gates(
    parity: Mapping[str, Any] | None,
    error: str,
    thresholds: Any,
    facts: StepFacts,
    mature: bool,
) -> list[Gate]:
    soft = HOLD if mature else WAIT
    if not parity:
        return [Gate("parity", soft, f"no shadow parity data: {error or 'nothing compared yet'}")]
    n = int(parity.get("n") or 0)
    out = [
        Gate(
            "min_units",
            PASS if n >= facts.min_units else WAIT,
            f"{n} shadow comparisons; need {facts.min_units}",
            subject="shadow",
            value=float(n),
            threshold=float(facts.min_units),
            comparator=">=",
        )
    ]
    if not isinstance(thresholds, Mapping):
        thresholds = DEFAULT_PARITY_THRESHOLDS
    out += bound_gates("parity", parity, thresholds, soft, source="shadow parity")
    return out


def aggregate_parity(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine per-day shadow parity rows: n-weighted means; worst day for p99 latencies."""
    total = sum(int(r.get("n") or 0) for r in rows)
    out: dict[str, Any] = {"n": total, "days": len(rows)}
    if not total:
        return out
    keys = {k for r in rows for k, v in r.items() if isinstance(v, int | float) and k not in ("n",)}
    for key in keys:
        vals = [(float(r[key]), int(r.get("n") or 0)) for r in rows if isinstance(r.get(key), int | float)]
        if not vals:
            continue
        if "p99" in key or key.endswith("_max"):
            out[key] = max(v for v, _ in vals)
        elif key in ("errors", "timeouts", "compared"):
            out[key] = sum(v for v, _ in vals)
        else:
            weight = sum(w for _, w in vals) or 1
            out[key] = sum(v * w for v, w in vals) / weight
    if "errors" in out:
        # Recompute the overall rate from the summed counts (exact, not a mean of daily rates).
        out["error_rate"] = (float(out["errors"]) + float(out.get("timeouts", 0.0))) / total
    return out
