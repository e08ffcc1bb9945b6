"""Per metric × population: the tests against the margin, the verdict (decided here, once) and the
units the blocking test needs for the target power."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from experiments import stats
from experiments.analysis.design import Design, Inputs, MetricDesign, finite
from experiments.outcome import MetricOutcome, Verdict, beyond_margin, harm_beyond_margin, sequential_worse
from experiments.stats.sequential import DEFAULT_MIXTURE_SD_UNITS


def _sign(direction: str) -> float:
    return 1.0 if direction == "higher" else -1.0


def verdict(
    metric: MetricDesign,
    result: stats.ComparisonResult,
    p_used: float | None,
    alpha: float,
    equivalence: stats.EquivalenceResult | None,
    ni: stats.NonInferiorityResult | None,
    sequential: stats.SequentialResult | None,
) -> Verdict:
    """Primaries and secondaries: better / equivalent (TOST) / worse / inconclusive.
    Guardrails: non-inferior (one-sided test against the margin) / inferior (the whole interval,
    and the always-valid one when monitored sequentially, beyond the margin) / inconclusive."""
    if not result.computable or result.diff is None:
        return Verdict.NOT_COMPUTABLE
    good = _sign(metric.direction) * result.diff
    significant = p_used is not None and p_used < alpha
    if metric.role == "guardrail":
        if ni is not None and ni.computable and ni.noninferior:
            return Verdict.NON_INFERIOR
        threshold = ni.threshold if ni is not None and ni.computable else 0.0
        if beyond_margin(metric.direction, result.ci, threshold) and (
            sequential is None
            or not sequential.computable
            or beyond_margin(metric.direction, sequential.ci, threshold)
        ):
            return Verdict.INFERIOR
        return Verdict.INCONCLUSIVE
    if significant and good > 0:
        return Verdict.BETTER
    if equivalence is not None and equivalence.computable and equivalence.equivalent:
        return Verdict.EQUIVALENT
    if significant and good < 0:
        return Verdict.WORSE
    return Verdict.INCONCLUSIVE


def units_needed(
    metric: MetricDesign, result: stats.ComparisonResult, design: Design, margin_abs: float | None
) -> float | None:
    """Total units (both arms) at which the blocking test reaches the target power; None if never.

    The observed standard error scales as 1/√N, so the experiment's own variance (CUPED
    reduction included) defines an effective coefficient of variation for the engine's power
    functions: cv_eff = se·√N / (|ȳ_c|·√(1/s + 1/(1 − s))), s = treatment share.
    A guardrail's one-sided test at α has the power of a two-sided test at 2α (the far tail is
    negligible), so ``sample_size`` with 2α and the margin as the effect answers it.
    """
    if result.se is None or result.diff is None or not result.control_mean or margin_abs is None:
        return None
    n = result.n_control + result.n_treatment
    if n <= 2 or result.n_treatment == 0 or result.n_control == 0 or result.se <= 0:
        return None
    mu = abs(result.control_mean)
    split = result.n_treatment / n
    cv = result.se * math.sqrt(n) / (mu * math.sqrt(1.0 / split + 1.0 / (1.0 - split)))
    # The power calculation assumes the pre-registered hypothesis (no true difference), as a
    # design-time calculation does: the observed point estimate is too noisy to plan with, and an
    # estimate that is significantly beyond the margin has already been judged (worse / inferior).
    try:
        if metric.role == "guardrail":
            size = stats.sample_size(
                cv=cv,
                rel_mde=margin_abs / mu,
                alpha=min(2 * design.alpha, 0.5),
                power=design.power,
                split=split,
            )
        else:
            size = stats.tost_sample_size(
                cv=cv,
                margin_rel=margin_abs / mu,
                alpha=design.alpha,
                power=design.power,
                true_rel_diff=0.0,
                split=split,
            )
    except ValueError:
        return None
    return float(size.n_total)


def _margins(metric: MetricDesign, result: stats.ComparisonResult) -> tuple[float | None, float | None]:
    """(margin_abs, margin_rel): the configured margin in both forms (the other one scaled by the
    unadjusted control mean, as the tests scale it); None where undefined."""
    if metric.margin is None:
        return None, None
    scale = abs(result.control_mean) if result.control_mean else None
    if metric.relative:
        return (metric.margin * scale if scale is not None else None), metric.margin
    return metric.margin, (metric.margin / scale if scale is not None else None)


def mixture_sd(res: stats.ComparisonResult) -> float | None:
    """τ of the mSPRT normal mixture when the result carries no per-unit variances (stratified).

    The engine's default is τ = k·σ with σ the per-unit standard deviation; for a pooled result
    σ follows from its standard error, se² = σ²(1/n_c + 1/n_t). Fixed at the first look.
    """
    if res.control_variance is not None and res.treatment_variance is not None:
        return None  # the engine's own default applies
    if res.se is None or not res.se > 0 or res.n_control < 1 or res.n_treatment < 1:
        return None
    sigma = res.se / math.sqrt(1.0 / res.n_control + 1.0 / res.n_treatment)
    return DEFAULT_MIXTURE_SD_UNITS * sigma


def _sequential(
    res: stats.ComparisonResult, alpha: float, previous: stats.SequentialResult | None
) -> stats.SequentialResult:
    try:
        return stats.msprt(res, alpha, previous=previous, mixture_sd=None if previous else mixture_sd(res))
    except ValueError:
        return stats.msprt(res, alpha, mixture_sd=mixture_sd(res))


def _interval(ci: Any) -> tuple[float, float] | None:
    if ci is None:
        return None
    lo, hi = finite(ci[0]), finite(ci[1])
    return None if lo is None or hi is None else (lo, hi)


def metric_outcome(
    metric: MetricDesign,
    pop: str,
    res: stats.ComparisonResult,
    p_adjusted: float | None,
    design: Design,
    inputs: Inputs,
) -> MetricOutcome:
    """Everything decided about one metric in one population."""
    alpha = design.alpha
    equivalence = None
    ni = None
    if metric.margin is not None and metric.role in ("primary", "secondary"):
        equivalence = stats.tost(res, metric.margin, alpha, relative=metric.relative)
    if metric.margin is not None and metric.role == "guardrail":
        ni = stats.noninferiority(res, metric.margin, metric.direction, alpha, relative=metric.relative)
    sequential = None
    if design.sequential and res.computable:
        previous: stats.SequentialResult | None = inputs.previous_sequential.get((metric.key, pop))
        sequential = _sequential(res, alpha, previous)
    p_used = p_adjusted if metric.role == "secondary" and p_adjusted is not None else res.p_value
    decided = verdict(metric, res, p_used, alpha, equivalence, ni, sequential)
    margin_abs, margin_rel = _margins(metric, res)
    margin_kind = metric.margin_kind if metric.margin is not None else None
    seq_ci = _interval(sequential.ci) if sequential is not None else None
    return MetricOutcome(
        metric=metric.key,
        name=metric.name,
        role=metric.role,
        kind=metric.kind,
        direction=metric.direction,
        population=pop,
        verdict=decided,
        reason=res.reason,
        computable=bool(res.computable),
        method=res.method,
        n_control=res.n_control,
        n_treatment=res.n_treatment,
        control_mean=finite(res.control_mean),
        treatment_mean=finite(res.treatment_mean),
        estimate_abs=finite(res.diff),
        estimate_rel=finite(res.rel_lift),
        se=finite(res.se),
        ci_abs=_interval(res.ci),
        ci_rel=_interval(res.rel_lift_ci),
        p_value=finite(res.p_value),
        p_adjusted=finite(p_adjusted) if p_adjusted is not None else finite(res.p_value),
        variance_reduction=finite(res.variance_reduction),
        margin_kind=margin_kind,
        margin_abs=finite(margin_abs),
        margin_rel=finite(margin_rel),
        equivalence=equivalence,
        noninferiority=ni,
        tost_p_value=finite(equivalence.p_value) if equivalence is not None else None,
        equivalent=bool(equivalence.equivalent) if equivalence is not None else None,
        ni_p_value=finite(ni.p_value) if ni is not None else None,
        noninferior=bool(ni.noninferior) if ni is not None else None,
        sequential=sequential,
        sequential_ci=seq_ci,
        sequential_p_value=finite(sequential.p_value) if sequential is not None else None,
        sequential_worse=sequential_worse(
            metric.direction,
            seq_ci,
            p_value=finite(sequential.p_value),
            diff=finite(sequential.diff),
            alpha=sequential.alpha,
        )
        if sequential is not None and sequential.computable
        else None,
        harm_beyond_margin=harm_beyond_margin(
            direction=metric.direction,
            margin_kind=margin_kind,
            margin_rel=finite(margin_rel),
            margin_abs=finite(margin_abs),
            estimate_rel=finite(res.rel_lift),
            estimate_abs=finite(res.diff),
        ),
        units_needed=units_needed(metric, res, design, margin_abs)
        if decided == Verdict.INCONCLUSIVE and metric.role in ("primary", "guardrail")
        else None,
    )


def previous_sequential(
    outcomes: Mapping[tuple[str, str], MetricOutcome],
) -> dict[tuple[str, str], stats.SequentialResult]:
    """The always-valid tests to chain from: the previous run's computable ones."""
    return {
        key: m.sequential
        for key, m in outcomes.items()
        if m.sequential is not None and m.sequential.computable
    }
