"""Gates of a ramp step, evaluated on a fresh analysis result, shadow parity and a capacity check.

Every gate yields a :class:`Gate` with its value, threshold and a sentence a PM can read. Outcomes:

* ``pass``;
* ``wait``: the step is too young (minimum duration or units not reached) or the evidence is not
  conclusive *yet*; never advances;
* ``hold``: the step is mature and a gate does not pass (SRM, primary significantly worse, p99 over
  the SLO, parity out of bounds, no capacity, analysis missing or not computable);
* ``rollback``: a guardrail is significantly worse — acted on in the same tick, mature or not.

A missing or failed analysis is never a pass (the Argo/GrowthBook complaint: "a failed analysis did
not stop the rollout"). The pure evaluation (:func:`evaluate`) takes plain dicts shaped like
``experiments.AnalysisRun.result`` (see CONTRACTS.md); :func:`fresh_analysis` and
:func:`fresh_parity` are the only places that reach the other apps.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from migrations_runbooks.capacity import CapacityCheck

log = logging.getLogger(__name__)

PASS, WAIT, HOLD, ROLLBACK = "pass", "wait", "hold", "rollback"
SRM_THRESHOLD = 0.001  # DESIGN.md: flag SRM when the χ² p-value is below 0.001

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


def _gate_on(config: Mapping[str, Any], name: str) -> Any:
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
    return bool(_gate_on(config, "serving")) or (isinstance(latency, Mapping) and "serving_key" in latency)


def needs_analysis(config: Mapping[str, Any]) -> bool:
    """Whether a step's gates read the experiment analysis (a shadow step's do not)."""
    latency = config.get("latency") or {}
    return any(_gate_on(config, g) for g in ("srm", "guardrails", "primary", "ship_decision")) or (
        isinstance(latency, Mapping) and "metric" in latency
    )


def needs_parity(config: Mapping[str, Any]) -> bool:
    return bool(_gate_on(config, "parity"))


def evaluate(
    facts: StepFacts,
    *,
    analysis: Mapping[str, Any] | None,
    analysis_error: str = "",
    parity: Mapping[str, Any] | None = None,
    parity_error: str = "",
    serving: Mapping[str, Any] | None = None,
    serving_error: str = "",
    capacity: CapacityCheck | None = None,
) -> list[Gate]:
    """All gates of a step. Pure: dicts in, :class:`Gate` list out."""
    cfg = facts.gates
    gates: list[Gate] = [
        Gate(
            "min_duration",
            PASS if facts.elapsed_s >= facts.min_duration_s else WAIT,
            f"{_hours(facts.elapsed_s)} on step {facts.name} of the required {_hours(facts.min_duration_s)}",
            value=round(facts.elapsed_s, 1),
            threshold=float(facts.min_duration_s),
            comparator=">=",
        )
    ]
    mature = facts.elapsed_s >= facts.min_duration_s
    if needs_analysis(cfg) and analysis is None:
        # A failed or missing analysis never lets a ramp through; it waits, then holds.
        gates.append(
            Gate(
                "analysis",
                HOLD if mature else WAIT,
                f"no fresh analysis: {analysis_error or 'not available'}",
            )
        )
    if analysis is not None:
        gates.append(_units_gate(facts, analysis))
        mature = mature and gates[-1].outcome == PASS
        if _gate_on(cfg, "srm"):
            gates.extend(_srm_gates(analysis))
        if _gate_on(cfg, "guardrails"):
            gates.extend(_metric_gates(analysis, role="guardrail", mature=mature))
        if _gate_on(cfg, "primary"):
            gates.extend(_metric_gates(analysis, role="primary", mature=mature))
        latency_cfg = cfg.get("latency") or {}
        if latency_cfg and "metric" in latency_cfg:
            gates.append(_latency_from_analysis(analysis, latency_cfg["metric"], facts.slo_ms, mature))
        if _gate_on(cfg, "ship_decision"):
            gates.append(_ship_gate(analysis, mature))
    elif (
        facts.min_units and not needs_analysis(cfg) and not _gate_on(cfg, "parity") and not needs_serving(cfg)
    ):
        gates.append(Gate("min_units", WAIT, "no analysis to count units yet", threshold=facts.min_units))
    parity_cfg = _gate_on(cfg, "parity")
    if parity_cfg:
        gates.extend(_parity_gates(parity, parity_error, parity_cfg, facts, mature))
        latency_cfg = cfg.get("latency") or {}
        if latency_cfg and "parity_key" in latency_cfg:
            gates.append(_latency_from_parity(parity, latency_cfg["parity_key"], facts.slo_ms, mature))
    if needs_serving(cfg):
        gates.extend(_serving_gates(serving, serving_error, cfg, facts, mature))
    if _gate_on(cfg, "capacity") and capacity is not None:
        gates.append(capacity_gate(capacity, subject=facts.name))
    return gates


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


# -- individual gates ---------------------------------------------------------------------------------
def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def _units_gate(facts: StepFacts, analysis: Mapping[str, Any]) -> Gate:
    units = analysis.get("units") or {}
    control, treatment = int(units.get("control") or 0), int(units.get("treatment") or 0)
    smaller = min(control, treatment) if facts.treatment_bp else control + treatment
    return Gate(
        "min_units",
        PASS if smaller >= facts.min_units else WAIT,
        f"{smaller} units in the smaller arm (control {control}, treatment {treatment}); need {facts.min_units}",
        value=float(smaller),
        threshold=float(facts.min_units),
        comparator=">=",
    )


def _srm_gates(analysis: Mapping[str, Any]) -> list[Gate]:
    srm = analysis.get("srm") or {}
    if not srm:
        return [Gate("srm", HOLD, "the analysis has no sample-ratio check")]
    out = []
    for name, check in sorted(srm.items()):
        p = check.get("p_value")
        flagged = bool(check.get("flagged"))
        out.append(
            Gate(
                "srm",
                HOLD if flagged else PASS,
                (
                    f"sample ratio mismatch in {name}: χ² p = {p:.2g} < {SRM_THRESHOLD}"
                    if flagged
                    else f"{name} split matches the configured allocation (p = {p if p is None else f'{p:.3g}'})"
                ),
                subject=name,
                value=p,
                threshold=SRM_THRESHOLD,
                comparator=">=",
            )
        )
    return out


def _bad_side(metric: Mapping[str, Any]) -> int:
    """+1 when higher values are bad (lower-is-better metrics), −1 when lower values are bad."""
    return 1 if metric.get("direction") == "lower" else -1


def sequential_worse(metric: Mapping[str, Any], alpha: float = 0.05) -> bool | None:
    """Whether the always-valid (mSPRT) interval lies wholly on the bad side of zero; None if absent.

    Under continuous monitoring only an always-valid confidence sequence keeps the false-rollback
    rate at α (Johari et al., "Always valid inference", Operations Research 2022).
    """
    seq = metric.get("sequential")
    if not isinstance(seq, Mapping) or seq.get("computable") is False:
        return None
    ci = seq.get("ci")
    bad = _bad_side(metric)
    if isinstance(ci, Sequence) and len(ci) == 2 and ci[0] is not None and ci[1] is not None:
        lo, hi = float(ci[0]), float(ci[1])
        return lo > 0 if bad > 0 else hi < 0
    p, diff = seq.get("p_value"), seq.get("diff")
    if p is None or diff is None:
        return None
    return float(p) < float(seq.get("alpha") or alpha) and float(diff) * bad > 0


def _harm_beyond_margin(metric: Mapping[str, Any]) -> bool | None:
    """Whether the point estimate of harm exceeds the metric's margin; None without a margin.

    A guardrail that is significantly worse than control but whose estimated harm is within its
    tolerance is held (more data settles it); one whose estimated harm is beyond the tolerance is
    a breach and rolls back. Relative margins compare the relative lift, absolute ones the difference.
    """
    margin = metric.get("margin")
    if margin is None:
        return None
    relative = metric.get("margin_kind", "relative") == "relative"
    value = metric.get("rel_lift") if relative else metric.get("diff")
    if value is None:
        return None
    return float(value) * _bad_side(metric) > float(margin)


def _fmt_ci(ci: Any) -> str:
    if isinstance(ci, Sequence) and len(ci) == 2 and all(isinstance(v, int | float) for v in ci):
        return f"[{ci[0]:.4g}, {ci[1]:.4g}]"
    return str(ci)


def _metric_value(metric: Mapping[str, Any]) -> tuple[float | None, str]:
    if metric.get("rel_lift") is not None:
        return float(metric["rel_lift"]), "relative lift"
    if metric.get("diff") is not None:
        return float(metric["diff"]), "difference"
    return None, ""


def _margin(metric: Mapping[str, Any]) -> float | None:
    for key in ("noninferiority", "equivalence"):
        block = metric.get(key)
        if isinstance(block, Mapping):
            for name in ("margin", "margin_abs", "delta"):
                if block.get(name) is not None:
                    return float(block[name])
    return None


def _metric_gates(analysis: Mapping[str, Any], *, role: str, mature: bool) -> list[Gate]:
    metrics = [m for m in analysis.get("metrics") or [] if m.get("role") == role]
    soft = HOLD if mature else WAIT
    if not metrics:
        return [Gate(role, soft, f"the analysis has no {role} metrics")]
    out = []
    for m in metrics:
        subject = f"{m.get('metric')}/{m.get('population', 'pooled')}"
        verdict = m.get("verdict") or "inconclusive"
        value, what = _metric_value(m)
        threshold = _margin(m)
        if not m.get("computable", True) or verdict == "not_computable":
            out.append(
                Gate(role, soft, f"{subject} not computable: {m.get('reason') or 'no data'}", subject=subject)
            )
            continue
        seq_worse = sequential_worse(m)
        shown_fine = verdict in ("noninferior", "equivalent", "better")
        if seq_worse is None:
            worse = verdict in ("worse", "inferior")
        else:
            # Only an always-valid interval is trustworthy under continuous peeking; "inferior" from
            # the analysis already requires its sequential interval beyond the margin too.
            worse = (seq_worse and not shown_fine) or verdict == "inferior"
        if worse:
            how = "always-valid interval" if seq_worse is not None else f"verdict {verdict}"
            breach = role == "guardrail" and (verdict == "inferior" or _harm_beyond_margin(m) is not False)
            detail = (
                f"{subject} significantly worse ({how}; {what} {value:+.4g}, CI of the difference {_fmt_ci(m.get('ci'))})"
                if value is not None
                else f"{subject} significantly worse ({how})"
            )
            if role == "guardrail" and not breach:
                detail += f"; the estimated harm is within its margin {m.get('margin')}: held until shown non-inferior"
            out.append(
                Gate(
                    role,
                    ROLLBACK if breach else HOLD,
                    detail,
                    subject=subject,
                    value=value,
                    threshold=threshold if threshold is not None else 0.0,
                    comparator="ok",
                )
            )
            continue
        if role == "guardrail":
            ok = shown_fine or seq_worse is False
            reason = (
                f"{subject} {verdict}"
                if verdict in ("noninferior", "equivalent", "better")
                else f"{subject} not significantly worse under sequential monitoring ({verdict})"
                if ok
                else f"{subject} {verdict}: neither non-inferior nor monitored sequentially yet"
            )
            out.append(
                Gate(
                    role,
                    PASS if ok else soft,
                    reason,
                    subject=subject,
                    value=value,
                    threshold=threshold,
                    comparator="ok" if ok else "",
                )
            )
        else:
            out.append(
                Gate(
                    role,
                    PASS,
                    f"{subject} not significantly worse ({verdict})",
                    subject=subject,
                    value=value,
                    threshold=threshold,
                    comparator="ok",
                )
            )
    return out


def _latency_from_analysis(analysis: Mapping[str, Any], key: str, slo_ms: float, mature: bool) -> Gate:
    rows = [m for m in analysis.get("metrics") or [] if m.get("metric") == key]
    row = next((m for m in rows if m.get("population", "pooled") == "pooled"), rows[0] if rows else None)
    if row is None or row.get("treatment_mean") is None:
        return Gate(
            "latency_slo",
            HOLD if mature else WAIT,
            f"no {key} measurement for the treatment arm yet",
            subject=key,
        )
    value = float(row["treatment_mean"])
    return Gate(
        "latency_slo",
        PASS if value <= slo_ms else HOLD,
        f"treatment {key} {value:.1f} ms {'within' if value <= slo_ms else 'over'} the {slo_ms:.0f} ms SLO",
        subject=key,
        value=value,
        threshold=slo_ms,
        comparator="<=",
    )


def _latency_from_parity(parity: Mapping[str, Any] | None, key: str, slo_ms: float, mature: bool) -> Gate:
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


def _serving_gates(
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
    for key, bound in (cfg.get("serving") or {}).items():
        value = serving.get(key)
        if value is None:
            out.append(Gate("serving", soft, f"serving health has no {key}", subject=key))
            continue
        value = float(value)
        if "min" in bound:
            ok, threshold, cmp = value >= float(bound["min"]), float(bound["min"]), ">="
        else:
            ok, threshold, cmp = value <= float(bound["max"]), float(bound["max"]), "<="
        out.append(
            Gate(
                "serving",
                PASS if ok else HOLD,
                f"served {key} {value:.4g} {'meets' if ok else 'misses'} {cmp} {threshold:.4g}",
                subject=key,
                value=value,
                threshold=threshold,
                comparator=cmp,
            )
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


def _ship_gate(analysis: Mapping[str, Any], mature: bool) -> Gate:
    decision = analysis.get("decision") or {}
    verdict = decision.get("verdict")
    reasons = "; ".join(decision.get("reasons") or [])
    if verdict == "ship":
        return Gate(
            "ship_decision", PASS, f"analysis recommends ship: {reasons}".rstrip(": "), subject="decision"
        )
    return Gate(
        "ship_decision",
        HOLD if mature else WAIT,
        f"analysis recommends {verdict or 'nothing yet'}: {reasons}".rstrip(": "),
        subject="decision",
    )


def _parity_gates(
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
    for key, bound in thresholds.items():
        value = parity.get(key)
        if value is None:
            out.append(Gate("parity", soft, f"shadow parity has no {key}", subject=key))
            continue
        value = float(value)
        if "min" in bound:
            ok, threshold, cmp = value >= float(bound["min"]), float(bound["min"]), ">="
        else:
            ok, threshold, cmp = value <= float(bound["max"]), float(bound["max"]), "<="
        out.append(
            Gate(
                "parity",
                PASS if ok else HOLD,
                f"{key} {value:.4g} {'meets' if ok else 'misses'} {cmp} {threshold:.4g}",
                subject=key,
                value=value,
                threshold=threshold,
                comparator=cmp,
            )
        )
    return out


# -- the places that reach other apps (tests replace these to drive the gates) ------------------------
def experiment_attach(*, runbook: Any, actor: Any, now: dt.datetime) -> str:
    """Create (idempotently) the experiment that analyses this ramp's salt; returns its key or ""."""
    try:
        from experiments.services import experiment_create_for_surface  # type: ignore[attr-defined]
    except ImportError:
        log.warning("experiments.services.experiment_create_for_surface is missing; analysis gates will hold")
        return ""
    experiment = experiment_create_for_surface(
        surface=runbook.surface,
        treatment_stack=runbook.target_stack,
        salt=runbook.salt,
        actor=actor,
        now=now,
        key=f"runbook-{runbook.pk}-{runbook.surface.key}",
        hypothesis=f"{runbook.target_stack.label} is launch-neutral on {runbook.surface.key} (runbook {runbook.pk})",
    )
    return str(experiment.key)


def experiment_freeze(
    *, runbook: Any, actor: Any, reason: str, now: dt.datetime, analysis_run_id: int | None = None
) -> dict[str, Any]:
    """Record the ship decision with the experiments app (its Decision freezes the readout).

    The runbook keeps its own frozen copy (``final_readout``) either way. A refusal by the
    experiments app (e.g. nothing analysed to decide on) is recorded there, not swallowed; any
    other failure propagates, so the promotion's transaction rolls back and the next tick retries.
    """
    from controlplane.core.errors import ApplicationError

    experiment = runbook.experiment
    if experiment is None:
        return {"decision": None, "decision_error": "no experiment attached"}
    try:
        from experiments.services import experiment_decide  # type: ignore[attr-defined]
    except ImportError:
        return {"decision": None, "decision_error": "experiments decision service not installed"}
    from django.db import transaction

    kwargs: dict[str, Any] = {
        "experiment": experiment,
        "actor": actor,
        "now": now,
        "verdict": "ship",
        "note": reason,
    }
    if analysis_run_id is not None:
        from experiments.models import AnalysisRun  # type: ignore[attr-defined]

        kwargs["analysis_run"] = AnalysisRun.objects.filter(pk=analysis_run_id).first()
    try:
        with transaction.atomic():
            decision = experiment_decide(**kwargs)
    except ApplicationError as exc:
        log.warning("experiments refused the ship decision for %s: %s", experiment, exc.message)
        return {"decision": None, "decision_error": exc.message}
    return {"decision": decision.pk, "decision_error": ""}


def analysis_max_age_s() -> float:
    """How old a stored analysis may be and still count as fresh (``RUNBOOKS_ANALYSIS_MAX_AGE_S``).

    The sweeper runs every minute but evidence lands per unit-day; re-analysing every ramp every
    minute buys nothing, and it is what keeps one tick over 100 ramps within 2 s (bench/ramps.py).
    Default 300 s: a breach is acted on at most ~6 minutes after its evidence lands. 0 = analyse
    on every evaluation.
    """
    from django.conf import settings

    return float(getattr(settings, "RUNBOOKS_ANALYSIS_MAX_AGE_S", 300))


#: Latest analysis run per experiment key, read once per sweep by services.ramps_advance_due
#: (a context variable: two sweepers in two threads never see each other's).
latest_runs: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("latest_runs", default={})  # noqa: B039
#: The experiments of the sweep's due runbooks by key, read in one query by the same sweep.
#: ``experiments.services.experiment_analyze`` re-reads the row it is given, so one read at the
#: start of the sweep is as good as one per ramp.
sweep_experiments: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "sweep_experiments",
    default={},  # noqa: B039  (read-only; a sweep sets its own)
)


def experiments_by_key(keys: Sequence[str]) -> dict[str, Any]:
    """The experiments with these keys, in one query (empty when the experiments app is absent)."""
    try:
        from experiments.models import Experiment  # type: ignore[attr-defined]
    except ImportError:
        return {}
    return {e.key: e for e in Experiment.objects.filter(key__in=[k for k in keys if k])}


@functools.cache
def _takes_trigger(analyze: Any) -> bool:
    import inspect

    return "trigger" in inspect.signature(analyze).parameters


def latest_analysis_runs(keys: Sequence[str]) -> dict[str, Any]:
    """The newest AnalysisRun of each experiment key, in one query."""
    try:
        from experiments.models import AnalysisRun  # type: ignore[attr-defined]
    except ImportError:
        return {}
    from django.db.models import OuterRef, Subquery

    newest = AnalysisRun.objects.filter(experiment_id=OuterRef("experiment_id")).order_by(
        "-created_at", "-id"
    )
    runs = (
        AnalysisRun.objects.filter(
            experiment__key__in=[k for k in keys if k], pk=Subquery(newest.values("pk")[:1])
        )
        .select_related("experiment")
        .only("id", "result", "created_at", "experiment__key")
    )
    return {run.experiment.key: run for run in runs}


def fresh_analysis(*, runbook: Any, now: dt.datetime) -> tuple[dict[str, Any] | None, str]:
    """Run the experiment analysis now and return its result dict, or (None, why not).

    A stored run younger than :func:`analysis_max_age_s` (and not from the future of a simulated
    clock) is reused instead of recomputed.

    Runs inside a savepoint: an analysis that fails (bad data, a bug) is reported as a reason and
    holds the step instead of aborting the sweeper's transaction.
    """
    from django.db import transaction

    if not runbook.experiment_key:
        return None, "no experiment is attached to this runbook yet"
    max_age = analysis_max_age_s()
    if max_age > 0:
        latest = latest_runs.get().get(runbook.experiment_key)
        if latest is None:
            latest = latest_analysis_runs([runbook.experiment_key]).get(runbook.experiment_key)
        if latest is not None and isinstance(latest.result, dict):
            age = (now - latest.created_at).total_seconds()
            if 0 <= age <= max_age:
                return {**latest.result, "analysis_run_id": latest.pk, "reused_age_s": age}, ""
    experiment = sweep_experiments.get().get(runbook.experiment_key) or runbook.experiment
    if experiment is None:
        return None, f"experiment {runbook.experiment_key} not found"
    try:
        from experiments.rollups import rollup_refresh
        from experiments.services import experiment_analyze  # type: ignore[attr-defined]
    except ImportError:
        return None, "the experiments analysis service is not installed"

    kwargs: dict[str, Any] = {"experiment": experiment, "now": now}
    if _takes_trigger(experiment_analyze):
        kwargs["trigger"] = "gate"  # AnalysisRun.Trigger.GATE: the run was asked for by a runbook gate
    try:
        # Fold closed days first: the analysis then pivots only the rows not folded yet. A failed
        # fold costs speed, not correctness (the analysis reads the rows instead).
        with transaction.atomic():
            rollup_refresh(experiment=experiment, now=now)
    except Exception:
        log.exception("rollup refresh of %s failed; analysing from the rows", experiment)
    try:
        with transaction.atomic():
            run = experiment_analyze(**kwargs)
    except Exception as exc:  # any analysis failure must hold the ramp, not crash the sweeper
        log.exception("analysis of %s failed", experiment)
        return None, f"analysis failed: {exc}"
    result = getattr(run, "result", None)
    if not isinstance(result, dict):
        return None, "analysis returned no result"
    return {**result, "analysis_run_id": run.pk}, ""


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


def fresh_parity(*, runbook: Any, since: dt.datetime | None) -> tuple[dict[str, Any] | None, str]:
    """Shadow parity of the target stack since the step started, aggregated over days."""
    try:
        from controlplane.serving.selectors import shadow_parity_daily  # type: ignore[attr-defined]
    except ImportError:
        return None, "the serving app's shadow parity selector is not installed"
    try:
        rows = list(
            shadow_parity_daily(
                surface=runbook.surface,
                stack=runbook.target_stack,
                since=since.date() if since else None,
            )
        )
    except Exception as exc:  # a parity read failure holds the step; it never passes it
        log.exception("shadow parity for %s failed", runbook)
        return None, f"shadow parity failed: {exc}"
    rows = [dict(r) if isinstance(r, Mapping) else dict(vars(r)) for r in rows]
    if not rows:
        return None, "no shadow comparisons recorded since the step started"
    return aggregate_parity(rows), ""


def fresh_serving(
    *, runbook: Any, since: dt.datetime | None, until: dt.datetime
) -> tuple[dict[str, Any] | None, str]:
    """Serving health of the target stack since the step started (the router's latency samples)."""
    try:
        from controlplane.serving.selectors import serving_health  # type: ignore[attr-defined]
    except ImportError:
        return None, "the serving app's health selector is not installed"
    try:
        label = runbook.target_stack.label
        rows = [
            r
            for r in serving_health(surface=runbook.surface, since=since, until=until)
            if r.get("stack") == label
        ]
    except Exception as exc:  # a failed read holds the step; it never passes it
        log.exception("serving health for %s failed", runbook)
        return None, f"serving health failed: {exc}"
    requests = sum(int(r.get("requests") or 0) for r in rows)
    if not requests:
        return None, "no requests served by the target stack since the step started"
    errors = sum(int(r.get("errors") or 0) for r in rows)
    fallbacks = sum(int(r.get("fallbacks") or 0) for r in rows)
    p99 = [float(r["p99_ms"]) for r in rows if r.get("p99_ms") is not None]
    return {
        "requests": requests,
        "errors": errors,
        "fallbacks": fallbacks,
        "error_rate": errors / requests,
        "fallback_rate": fallbacks / requests,
        "p99_ms": max(p99) if p99 else None,  # the worst arm: the SLO holds for every user
    }, ""
