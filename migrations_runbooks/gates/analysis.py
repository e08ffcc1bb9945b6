"""Gates on the experiment analysis: units, SRM, primaries, guardrails, treatment latency, ship.

They read an :class:`experiments.outcome.AnalysisOutcome` and never re-decide a metric's verdict:
the engine decided it (and whether its always-valid interval is on the bad side, and whether the
estimated harm exceeds the margin); a gate only maps that to pass / wait / hold / rollback. Every
metric gate's reason names the verdict (``subject: verdict v; …``), so the gate table, the
runbook's *Why* and the readout say the same thing.
"""

from __future__ import annotations

from experiments.analysis.recommendation import margin_text
from experiments.outcome import AnalysisOutcome, Interval, MetricOutcome, RecommendationVerdict, Verdict
from migrations_runbooks.gates.base import HOLD, PASS, ROLLBACK, SRM_THRESHOLD, WAIT, Gate, StepFacts


def units_gate(facts: StepFacts, analysis: AnalysisOutcome) -> Gate:
    control, treatment = analysis.units.control, analysis.units.treatment
    smaller = min(control, treatment) if facts.treatment_bp else control + treatment
    return Gate(
        "min_units",
        PASS if smaller >= facts.min_units else WAIT,
        f"{smaller} units in the smaller arm (control {control}, treatment {treatment}); need {facts.min_units}",
        value=float(smaller),
        threshold=float(facts.min_units),
        comparator=">=",
    )


def srm_gates(analysis: AnalysisOutcome) -> list[Gate]:
    if not analysis.srm:
        return [Gate("srm", HOLD, "the analysis has no sample-ratio check")]
    out = []
    for name, check in sorted(analysis.srm.items()):
        p = check.p_value
        out.append(
            Gate(
                "srm",
                HOLD if check.flagged else PASS,
                (
                    f"sample ratio mismatch in {name}: χ² p = {p:.2g} < {SRM_THRESHOLD}"
                    if check.flagged and p is not None
                    else f"sample ratio mismatch in {name}"
                    if check.flagged
                    else f"{name} split matches the configured allocation (p = {p if p is None else f'{p:.3g}'})"
                ),
                subject=name,
                value=p,
                threshold=SRM_THRESHOLD,
                comparator=">=",
            )
        )
    return out


def _fmt_ci(ci: Interval | None) -> str:
    return f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci is not None else "None"


def _metric_value(m: MetricOutcome) -> tuple[float | None, str]:
    if m.estimate_rel is not None:
        return m.estimate_rel, "relative lift"
    if m.estimate_abs is not None:
        return m.estimate_abs, "difference"
    return None, ""


def metric_gates(analysis: AnalysisOutcome, *, role: str, mature: bool) -> list[Gate]:
    """One gate per metric × population of ``role`` (primary or guardrail)."""
    metrics = [m for m in analysis.metrics if m.role == role]
    soft = HOLD if mature else WAIT
    if not metrics:
        return [Gate(role, soft, f"the analysis has no {role} metrics")]
    return [_metric_gate(m, role=role, soft=soft) for m in metrics]


def _metric_gate(m: MetricOutcome, *, role: str, soft: str) -> Gate:
    subject = m.subject
    verdict = m.verdict
    value, what = _metric_value(m)
    threshold = m.margin_abs
    said = m.statement
    if not m.computable or verdict == Verdict.NOT_COMPUTABLE:
        return Gate(role, soft, f"{said}; not computable: {m.reason or 'no data'}", subject=subject)
    seq_worse = m.sequential_worse
    if seq_worse is None:
        worse = verdict in (Verdict.WORSE, Verdict.INFERIOR)
    else:
        # Only an always-valid interval is trustworthy under continuous peeking; "inferior" from
        # the analysis already requires its sequential interval beyond the margin too.
        worse = (seq_worse and not verdict.shown_fine) or verdict == Verdict.INFERIOR
    if worse:
        how = "always-valid interval" if m.is_sequential else "fixed-horizon test"
        breach = role == "guardrail" and (verdict == Verdict.INFERIOR or m.harm_beyond_margin is not False)
        detail = (
            f"{said}; significantly worse ({how}; {what} {value:+.4g}, CI of the difference {_fmt_ci(m.ci_abs)})"
            if value is not None
            else f"{said}; significantly worse ({how})"
        )
        if role == "guardrail" and not breach:
            detail += (
                f"; the estimated harm is within its margin {margin_text(m)}: held until shown non-inferior"
            )
        return Gate(
            role,
            ROLLBACK if breach else HOLD,
            detail,
            subject=subject,
            value=value,
            threshold=threshold if threshold is not None else 0.0,
            comparator="ok",
        )
    if role == "guardrail":
        ok = verdict.shown_fine or seq_worse is False
        reason = (
            said
            if verdict.shown_fine
            else f"{said}; not significantly worse under sequential monitoring"
            if ok
            else f"{said}; neither non-inferior nor monitored sequentially yet"
        )
        return Gate(
            role,
            PASS if ok else soft,
            reason,
            subject=subject,
            value=value,
            threshold=threshold,
            comparator="ok" if ok else "",
        )
    return Gate(
        role,
        PASS,
        f"{said}; not significantly worse",
        subject=subject,
        value=value,
        threshold=threshold,
        comparator="ok",
    )


def latency_from_analysis(analysis: AnalysisOutcome, key: str, slo_ms: float, mature: bool) -> Gate:
    rows = [m for m in analysis.metrics if m.metric == key]
    row = next((m for m in rows if m.population == "pooled"), rows[0] if rows else None)
    if row is None or row.treatment_mean is None:
        return Gate(
            "latency_slo",
            HOLD if mature else WAIT,
            f"no {key} measurement for the treatment arm yet",
            subject=key,
        )
    value = row.treatment_mean
    return Gate(
        "latency_slo",
        PASS if value <= slo_ms else HOLD,
        f"treatment {key} {value:.1f} ms {'within' if value <= slo_ms else 'over'} the {slo_ms:.0f} ms SLO",
        subject=key,
        value=value,
        threshold=slo_ms,
        comparator="<=",
    )


def ship_gate(analysis: AnalysisOutcome, mature: bool) -> Gate:
    recommendation = analysis.recommendation
    reasons = "; ".join(recommendation.reasons)
    if recommendation.verdict == RecommendationVerdict.SHIP:
        return Gate(
            "ship_decision", PASS, f"analysis recommends ship: {reasons}".rstrip(": "), subject="decision"
        )
    # Name the verdicts of the blocking metrics, as the metric gates and the readout do.
    pooled = analysis.pooled
    blocking = ", ".join(pooled[k].statement for k in recommendation.blocking if k in pooled)
    return Gate(
        "ship_decision",
        HOLD if mature else WAIT,
        f"analysis recommends {recommendation.verdict or 'nothing yet'}"
        + (f" ({blocking})" if blocking else "")
        + f": {reasons}".rstrip(": "),
        subject="decision",
    )
