"""One comparison builder per metric kind: mean, proportion, ratio, quantile.

Each aggregate builder turns the summed totals of the two arms of one population into a
:class:`~experiments.stats.ComparisonResult` (Welch for means, z for proportions, the delta method
for ratios; CUPED-adjusted when the metric has a pre-period covariate). Quantiles are not additive:
they compare raw samples (order-statistic difference), pooled over all samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from experiments import stats
from experiments.aggregation import AggregateMetric, StableRange, add_row, metric_row
from experiments.analysis.design import POOLED, Inputs, MetricDesign
from experiments.analysis.gather import StratumTotals, Totals, by_first_exposure
from experiments.outcome import Capping
from experiments.stats.skew import SkewRule

AggregateBuilder = Callable[
    [AggregateMetric, Mapping[str, float], Mapping[str, float], float], stats.ComparisonResult
]


def _cuped_or_plain(
    adjusted: Callable[[], stats.ComparisonResult], plain: Callable[[], stats.ComparisonResult]
) -> stats.ComparisonResult:
    # CUPED is undefined when the pre-period is empty (zero pre-period denominator for a ratio,
    # no covariate variance); the unadjusted comparison is then the honest answer.
    try:
        result = adjusted()
    except (ZeroDivisionError, ValueError):
        return plain()
    if not result.computable:
        fallback = plain()
        return fallback if fallback.computable else result
    return result


def _compare_means(
    agg: AggregateMetric,
    control: Mapping[str, float],
    treatment: Mapping[str, float],
    alpha: float,
    test: Literal["welch", "z"],
) -> stats.ComparisonResult:
    plain = stats.welch if test == "welch" else stats.ztest
    if agg.cuped:
        c = stats.CovariateMeanStatistic.from_row(metric_row(control, agg))
        t = stats.CovariateMeanStatistic.from_row(metric_row(treatment, agg))
        return _cuped_or_plain(lambda: stats.cuped(c, t, alpha, test=test), lambda: plain(c.y, t.y, alpha))
    return plain(
        stats.MeanStatistic.from_row(metric_row(control, agg)),
        stats.MeanStatistic.from_row(metric_row(treatment, agg)),
        alpha,
    )


def compare_mean(
    agg: AggregateMetric, control: Mapping[str, float], treatment: Mapping[str, float], alpha: float
) -> stats.ComparisonResult:
    """Welch's t on per-unit means; CUPED (Deng et al. 2013) with a pre-period covariate."""
    return _compare_means(agg, control, treatment, alpha, "welch")


def compare_proportion(
    agg: AggregateMetric, control: Mapping[str, float], treatment: Mapping[str, float], alpha: float
) -> stats.ComparisonResult:
    """Two-proportion z test on per-unit 0/1 values; CUPED with a pre-period covariate."""
    return _compare_means(agg, control, treatment, alpha, "z")


def compare_ratio(
    agg: AggregateMetric, control: Mapping[str, float], treatment: Mapping[str, float], alpha: float
) -> stats.ComparisonResult:
    """Delta method on Σnum/Σden; CUPED on ratios when configured."""
    if agg.cuped:
        c = stats.CovariateRatioStatistic.from_row(metric_row(control, agg))
        t = stats.CovariateRatioStatistic.from_row(metric_row(treatment, agg))
        return _cuped_or_plain(
            lambda: stats.cuped_ratio(c, t, alpha), lambda: stats.ratio_delta(c.ratio, t.ratio, alpha)
        )
    return stats.ratio_delta(
        stats.RatioStatistic.from_row(metric_row(control, agg)),
        stats.RatioStatistic.from_row(metric_row(treatment, agg)),
        alpha,
    )


AGGREGATE_BUILDERS: dict[str, AggregateBuilder] = {
    "mean": compare_mean,
    "proportion": compare_proportion,
    "ratio": compare_ratio,
}


def compare_quantile(
    control: np.ndarray, treatment: np.ndarray, quantile: float | None, alpha: float
) -> stats.ComparisonResult:
    """Order-statistic difference of the q-th quantile (p99 latency by default)."""
    return stats.quantile_diff(control, treatment, quantile or 0.99, alpha)


def metric_result(
    metric: MetricDesign,
    agg: AggregateMetric | None,
    totals: Totals,
    strata: StratumTotals,
    stable: Mapping[int, StableRange],
    inputs: Inputs,
    pop: str,
    alpha: float,
) -> stats.ComparisonResult:
    """The comparison of one metric in one population."""
    if metric.kind == "quantile":
        samples = inputs.quantile_samples.get(metric.key, {})
        return compare_quantile(
            samples.get(("control", pop), np.empty(0)),
            samples.get(("treatment", pop), np.empty(0)),
            metric.quantile,
            alpha,
        )
    if agg is None:
        raise ValueError(f"metric {metric.key} of kind {metric.kind} has no aggregate")
    build = AGGREGATE_BUILDERS[agg.kind]
    return by_first_exposure(lambda c, t: build(agg, c, t, alpha), totals, strata, stable, pop, alpha)


def pooled_result(
    metric: MetricDesign,
    per_pop: Mapping[str, stats.ComparisonResult],
    weights: Mapping[str, float],
    inputs: Inputs,
    alpha: float,
) -> stats.ComparisonResult:
    """Pooled over populations: stratified by configured share; quantiles over all samples."""
    if metric.kind == "quantile":
        samples = inputs.quantile_samples.get(metric.key, {})
        c = [v for (arm, _p), v in samples.items() if arm == "control"]
        t = [v for (arm, _p), v in samples.items() if arm == "treatment"]
        return compare_quantile(
            np.concatenate(c) if c else np.empty(0),
            np.concatenate(t) if t else np.empty(0),
            metric.quantile,
            alpha,
        )
    if len(per_pop) == 1:
        return next(iter(per_pop.values()))
    return stats.stratified(dict(per_pop), weights={p: weights[p] for p in per_pop}, alpha=alpha).pooled


def _statistic(agg: AggregateMetric, totals: Mapping[str, float]) -> Any:
    """One arm's sufficient statistic of a mean or ratio metric (CUPED covariates included)."""
    row = metric_row(totals, agg)
    if agg.kind == "ratio":
        if agg.cuped:
            return stats.CovariateRatioStatistic.from_row(row)
        return stats.RatioStatistic.from_row(row)
    if agg.cuped:
        return stats.CovariateMeanStatistic.from_row(row)
    return stats.MeanStatistic.from_row(row)


def skew_and_capping(
    agg: AggregateMetric | None, totals: Totals, pop: str, populations: Sequence[str]
) -> tuple[dict[str, float | None], SkewRule, Capping | None]:
    """Each arm's skewness, the Kohavi et al. (2014) rule n > 355·s² per arm, and the cap (issue #16).

    Skewness is g₁ (as ``scipy.stats.skew``); None where unknown: ratio and quantile metrics, fewer
    than 3 units, no variance. Pooled: the arms' statistics summed over populations.
    """
    arms: dict[str, tuple[float | None, int]] = {}
    for arm in ("control", "treatment"):
        bucket: dict[str, Any] = {}
        for p in populations if pop == POOLED else [pop]:
            if (arm, p) in totals:
                add_row(bucket, totals[(arm, p)])
        n = int(bucket.get("n", 0))
        skew: float | None = None
        if agg is not None and agg.kind != "ratio" and n > 0:
            try:
                value = _statistic(agg, bucket).skewness
            except (ValueError, ZeroDivisionError):
                value = None
            skew = float(value) if value is not None and math.isfinite(value) else None
        arms[arm] = (skew, n)
    rule = stats.skew_rule_arms(arms["control"], arms["treatment"])
    capping = None
    if agg is not None and agg.capped and agg.cap_quantile is not None:
        caps = [t.get(f"{agg.key}__cap") for t in totals.values()]
        cap = next((float(c) for c in caps if c is not None), None)
        capping = Capping(agg.cap_quantile, agg.cap_source, cap)
    return {arm: s for arm, (s, _n) in arms.items()}, rule, capping
