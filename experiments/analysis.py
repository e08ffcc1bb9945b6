"""From sufficient statistics to the analysis result: per metric × population, pooled, decision.

Pure (no Django): the service feeds it the design, the summed query rows and any quantile
samples; the same function serves the in-database and the warehouse path, so the two give
identical results whenever their rows are identical.

Procedure (DESIGN.md, "Statistical conventions"):

1. Per legacy population p and metric: Welch (means; CUPED-adjusted when the metric has a
   pre-period covariate), z (proportions), delta method (ratios; CUPED on ratios when
   configured), order-statistic quantile difference (p99 latency).
2. Pooled: the stratified estimate Σ_p w_p·diff_p with w_p the configured population shares
   (the estimand "moving the whole surface"; Cochran 1977 §5.3).  Quantiles are not additive:
   the pooled quantile difference is taken over all samples.
3. Primaries: TOST against the equivalence margin (launch-neutral).  Both primaries must pass,
   an intersection-union test, so no multiplicity adjustment is needed (Berger 1982).
   Guardrails: one-sided non-inferiority against the margin (again intersection-union).
   Secondaries: Holm-adjusted p-values within each population family.
4. Sequential (mSPRT, always-valid) results while monitoring, chained from the previous run.
5. SRM per population and pooled against the configured split of each allocation version
   the units were first exposed under (the split changes as a ramp advances).

Crossover. A sticky monotone ramp moves control buckets into treatment under the same salt, so a
unit first exposed as control may be treated later. The aggregate query keeps only units whose arm
never changed (experiments/aggregation.py, :func:`~experiments.aggregation.stable_ranges`). That
keeps, among units first exposed under version v, the treatment buckets of v that stay treatment
and the control buckets above every later treatment range. Within each first-exposure version the
kept treatment and control units are random subsets of the same arrival cohort, so their
comparison is unbiased; across versions they are not (treatment over-represents the cohorts that
arrived after the ramp widened, which have fewer days in the window). So each population's
estimate is stratified by first-exposure version (post-stratification; Cochran 1977 §5.3, as for
populations) with weights proportional to each cohort's estimated size,
``(n_c,v + n_t,v) / kept_share_v`` — the estimand stays "the effect on the units that arrived in
the window". A version stratum without a computable comparison (an arm empty, zero variance) is
left out of the pool; the SRM expected share of a version is its kept treatment share,
``T_kept / (T_kept + C_kept)``. Simply dropping crossed units and summing over versions would bias
treatment toward late arrivers; measured in tests/experiments/test_crossover.py.
6. Decision: ship / hold / rollback / extend with reasons, blocking metrics and the days
   needed at the current rate of new units (power calculation).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from experiments import stats
from experiments.aggregation import AggregateMetric, StableRange, add_row, metric_row, stable_ranges
from experiments.stats.sequential import DEFAULT_MIXTURE_SD_UNITS

POOLED = "pooled"
# A pre-period covariate mean that differs between arms at p below this is flagged: randomisation
# makes arms exchangeable before the experiment, so a difference means broken assignment or data.
PRE_PERIOD_IMBALANCE_P = 0.001
# Share of units seen in both arms above which the comparison is diluted enough to hold.
CROSSOVER_LIMIT = 0.01
# Beyond this many more days, "extend" becomes "hold": the experiment cannot settle the question.
MAX_EXTEND_DAYS = 90


@dataclass(frozen=True, slots=True)
class MetricDesign:
    key: str
    name: str
    role: str  # primary | secondary | guardrail
    kind: str  # mean | proportion | ratio | quantile
    direction: str  # higher | lower
    margin_kind: str = "relative"
    margin: float | None = None
    cuped: bool = False
    numerator: str = ""
    denominator: str = ""
    quantile: float | None = None
    # Pre-registered capping (mean metrics): winsorise at this quantile of the control arm
    # ("control") or of the pre-period ("pre"), computed in SQL (aggregation.cap_ctes).
    cap_quantile: float | None = None
    cap_source: str = "control"

    @property
    def relative(self) -> bool:
        return self.margin_kind == "relative"

    def aggregate(self) -> AggregateMetric | None:
        if self.kind == "quantile":
            return None
        return AggregateMetric(
            self.key,
            self.kind,
            self.numerator,
            self.denominator,
            self.cuped,
            self.cap_quantile,
            self.cap_source,
        )


@dataclass(frozen=True, slots=True)
class AllocationSplit:
    """The configured split of one allocation version: treatment share among non-holdout units."""

    version: int
    treatment_bp: int
    holdout_bp: int

    @property
    def treatment_share(self) -> float:
        eligible = 10000 - self.holdout_bp
        return self.treatment_bp / eligible if eligible > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Design:
    alpha: float
    power: float
    sequential: bool
    metrics: tuple[MetricDesign, ...]
    populations: Mapping[str, float]  # population → configured share (weights of the pooled estimate)
    splits: Mapping[int, AllocationSplit]
    has_pre_period: bool = True

    def stable(self) -> dict[int, StableRange]:
        """Per allocation version, the buckets whose arm never changed (see "Crossover")."""
        return stable_ranges((s.version, s.holdout_bp, s.treatment_bp) for s in self.splits.values())

    def aggregate_metrics(self) -> tuple[AggregateMetric, ...]:
        out = []
        for m in self.metrics:
            agg = m.aggregate()
            if agg is not None:
                out.append(
                    AggregateMetric(
                        agg.key,
                        agg.kind,
                        agg.numerator,
                        agg.denominator,
                        agg.cuped and self.has_pre_period,
                        agg.cap_quantile,
                        agg.cap_source if self.has_pre_period else "control",
                    )
                )
        return tuple(out)


@dataclass
class Inputs:
    """Everything measured: summed query rows, quantile samples, crossover sample, history."""

    rows: Sequence[Mapping[str, Any]]
    as_of: dt.date
    quantile_samples: Mapping[str, Mapping[tuple[str, str], np.ndarray]] = field(default_factory=dict)
    crossover: Mapping[str, Any] | None = None  # {"checked": k, "crossed": c, "source": …}
    previous_sequential: Mapping[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)


def _f(value: float | None) -> float | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return float(value)


# -- 1. gather ----------------------------------------------------------------------------------
Totals = dict[tuple[str, str], dict[str, float]]
StratumTotals = dict[int, Totals]


def _group(
    rows: Sequence[Mapping[str, Any]],
) -> tuple[Totals, StratumTotals, dict[str, dict[str, dict[int, int]]], dict[str, int]]:
    """Totals per (arm, population), and per first-exposure allocation version; units per
    population × arm × version; new units per day."""
    totals: Totals = {}
    strata: StratumTotals = {}
    by_version: dict[str, dict[str, dict[int, int]]] = {}
    daily: dict[str, int] = {}
    for row in rows:
        arm, pop = str(row["arm"]), str(row["population"])
        version = int(row.get("allocation_version", 0))
        # Sums add; shift columns do not (aggregation.add_row moves a row to the bucket's K).
        add_row(totals.setdefault((arm, pop), {}), row)
        add_row(strata.setdefault(version, {}).setdefault((arm, pop), {}), row)
        versions = by_version.setdefault(pop, {}).setdefault(arm, {})
        versions[version] = versions.get(version, 0) + int(row["n"])
        daily[str(row["day"])] = daily.get(str(row["day"]), 0) + int(row["n"])
    return totals, strata, by_version, daily


def _by_first_exposure(
    compare: Any,
    totals: Totals,
    strata: StratumTotals,
    stable: Mapping[int, StableRange],
    pop: str,
    alpha: float,
) -> stats.ComparisonResult:
    """``compare(control_totals, treatment_totals)`` stratified by first-exposure version ("Crossover").

    One version (no ramp step yet) is the plain comparison. Otherwise each version with a
    computable comparison is a stratum weighted by its cohort's estimated size; with none, the
    plain comparison says why.
    """
    present = [v for v, t in sorted(strata.items()) if ("control", pop) in t or ("treatment", pop) in t]
    if len(present) <= 1:
        return compare(totals.get(("control", pop), {}), totals.get(("treatment", pop), {}))  # type: ignore[no-any-return]
    results: dict[str, stats.ComparisonResult] = {}
    weights: dict[str, float] = {}
    for version in present:
        t = strata[version]
        res = compare(t.get(("control", pop), {}), t.get(("treatment", pop), {}))
        if not res.computable:
            continue
        rng = stable.get(version)
        kept = rng.kept_share if rng is not None and rng.kept_share > 0 else 1.0
        results[f"v{version}"] = res
        weights[f"v{version}"] = (res.n_control + res.n_treatment) / kept
    if not results:
        return compare(totals.get(("control", pop), {}), totals.get(("treatment", pop), {}))  # type: ignore[no-any-return]
    if len(results) == 1:
        return next(iter(results.values()))
    return stats.stratified(results, weights=weights, alpha=alpha).pooled


def _statistic(metric: AggregateMetric, totals: Mapping[str, float]) -> Any:
    row = metric_row(totals, metric)
    if metric.kind == "ratio":
        if metric.cuped:
            return stats.CovariateRatioStatistic.from_row(row)
        return stats.RatioStatistic.from_row(row)
    if metric.cuped:
        return stats.CovariateMeanStatistic.from_row(row)
    return stats.MeanStatistic.from_row(row)


def _compare(
    metric: MetricDesign, agg: AggregateMetric, control: Any, treatment: Any, alpha: float
) -> stats.ComparisonResult:
    if agg.kind == "ratio":
        if agg.cuped:
            return _cuped_or_plain(
                lambda: stats.cuped_ratio(control, treatment, alpha),
                lambda: stats.ratio_delta(control.ratio, treatment.ratio, alpha),
            )
        return stats.ratio_delta(control, treatment, alpha)
    if agg.cuped:
        test = "z" if agg.kind == "proportion" else "welch"
        return _cuped_or_plain(
            lambda: stats.cuped(control, treatment, alpha, test=test),
            lambda: (stats.ztest if agg.kind == "proportion" else stats.welch)(control.y, treatment.y, alpha),
        )
    if agg.kind == "proportion":
        return stats.ztest(control, treatment, alpha)
    return stats.welch(control, treatment, alpha)


def _cuped_or_plain(adjusted: Any, plain: Any) -> stats.ComparisonResult:
    # CUPED is undefined when the pre-period is empty (zero pre-period denominator for a ratio,
    # no covariate variance); the unadjusted comparison is then the honest answer.
    try:
        result = adjusted()
    except (ZeroDivisionError, ValueError):
        return plain()  # type: ignore[no-any-return]
    if not result.computable:
        fallback = plain()
        return fallback if fallback.computable else result  # type: ignore[no-any-return]
    return result  # type: ignore[no-any-return]


# -- 2. verdicts --------------------------------------------------------------------------------
def _sign(direction: str) -> float:
    return 1.0 if direction == "higher" else -1.0


def _verdict(
    metric: MetricDesign,
    result: stats.ComparisonResult,
    p_used: float | None,
    alpha: float,
    equivalence: stats.EquivalenceResult | None,
    ni: stats.NonInferiorityResult | None,
    sequential: stats.SequentialResult | None,
) -> str:
    if not result.computable or result.diff is None:
        return "not_computable"
    good = _sign(metric.direction) * result.diff
    significant = p_used is not None and p_used < alpha
    if metric.role == "guardrail":
        if ni is not None and ni.computable and ni.noninferior:
            return "noninferior"
        threshold = ni.threshold if ni is not None and ni.computable else 0.0
        if _beyond_margin(metric.direction, result.ci, threshold) and (
            sequential is None
            or not sequential.computable
            or _beyond_margin(metric.direction, sequential.ci, threshold)
        ):
            return "inferior"
        return "inconclusive"
    if significant and good > 0:
        return "better"
    if equivalence is not None and equivalence.computable and equivalence.equivalent:
        return "equivalent"
    if significant and good < 0:
        return "worse"
    return "inconclusive"


def _beyond_margin(direction: str, ci: Sequence[float] | None, threshold: float | None) -> bool:
    """The whole two-sided interval lies on the harmful side of the margin threshold."""
    if ci is None or threshold is None:
        return False
    return ci[0] > threshold if direction == "lower" else ci[1] < threshold


# -- 3. power: days needed ----------------------------------------------------------------------
def _units_needed(
    metric: MetricDesign, result: stats.ComparisonResult, design: Design, margin_abs: float | None
) -> float | None:
    """Total units (both arms) at which the blocking test reaches the target power; None if never.

    The observed standard error scales as 1/√N, so the experiment's own variance (CUPED
    reduction included) defines an effective coefficient of variation for the engine's power
    functions: cv_eff = se·√N / (|ȳ_c|·√(1/s + 1/(1 − s))), s = treatment share.
    A guardrail's one-sided test at α has the power of a two-sided test at 2α (the far tail is
    negligible), so ``sample_size`` with 2α and the margin as the effect answers it.
    """
    if result.se is None or result.diff is None or result.control_mean in (None, 0.0) or margin_abs is None:
        return None
    n = result.n_control + result.n_treatment
    if n <= 2 or result.n_treatment == 0 or result.n_control == 0 or result.se <= 0:
        return None
    mu = abs(result.control_mean)  # type: ignore[arg-type]
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


def _daily_new_units(daily: Mapping[str, int], as_of: dt.date) -> float:
    """Mean new units per day over the last (up to) 7 days with exposures, up to the as-of day."""
    days = sorted(d for d in daily if d <= as_of.isoformat())
    recent = days[-7:]
    if not recent:
        return 0.0
    first = dt.date.fromisoformat(recent[0])
    span = max(1, (as_of - first).days + 1)
    return sum(daily[d] for d in recent) / span


# -- 4. the whole analysis ----------------------------------------------------------------------
def analyze(design: Design, inputs: Inputs, *, computed_at: str) -> dict[str, Any]:
    """The result JSON (shape documented in CONTRACTS.md)."""
    alpha = design.alpha
    totals, strata, by_version, daily = _group(inputs.rows)
    stable = design.stable()
    populations = [p for p in design.populations if any((a, p) in totals for a in ("control", "treatment"))]
    populations += sorted({p for (_a, p) in totals} - set(populations))
    units_by_pop = {
        p: {arm: int(totals.get((arm, p), {}).get("n", 0)) for arm in ("control", "treatment")}
        for p in populations
    }
    units = {
        "control": sum(u["control"] for u in units_by_pop.values()),
        "treatment": sum(u["treatment"] for u in units_by_pop.values()),
        "by_population": units_by_pop,
    }
    srm = _srm(stable, by_version, units_by_pop)
    weights = {
        p: float(design.populations.get(p, 0.0)) or float(sum(units_by_pop[p].values())) for p in populations
    }

    aggregates = {a.key: a for a in design.aggregate_metrics()}
    entries: list[dict[str, Any]] = []
    results: dict[tuple[str, str], stats.ComparisonResult] = {}
    for metric in design.metrics:
        per_pop: dict[str, stats.ComparisonResult] = {}
        for pop in populations:
            res = _metric_result(
                metric, aggregates.get(metric.key), totals, strata, stable, inputs, pop, alpha
            )
            per_pop[pop] = res
            results[(metric.key, pop)] = res
        pooled = _pooled(metric, per_pop, weights, inputs, alpha) if populations else None
        if pooled is not None:
            results[(metric.key, POOLED)] = pooled
    # Holm across secondaries within each population family (pooled is its own family).
    adjusted: dict[tuple[str, str], float] = {}
    for pop in [POOLED, *populations]:
        keys = [
            m.key
            for m in design.metrics
            if m.role == "secondary" and (m.key, pop) in results and results[(m.key, pop)].p_value is not None
        ]
        if keys:
            adj = stats.adjust_pvalues([results[(k, pop)].p_value for k in keys], "holm", alpha)  # type: ignore[misc]
            for k, p in zip(keys, adj.adjusted, strict=True):
                adjusted[(k, pop)] = p
    for metric in design.metrics:
        for pop in [POOLED, *populations]:
            found = results.get((metric.key, pop))
            if found is None:
                continue
            entry = _entry(metric, pop, found, adjusted.get((metric.key, pop)), design, inputs)
            entry.update(_skew_fields(aggregates.get(metric.key), totals, pop, populations))
            entry["capping"] = _capping(aggregates.get(metric.key), totals)
            entries.append(entry)

    health = _health(design, stable, inputs, units, srm, entries, totals, strata, aggregates, populations)
    decision = _decide(design, entries, health, srm, units, daily, inputs.as_of)
    return {
        "computed_at": computed_at,
        "as_of": inputs.as_of.isoformat(),
        "units": units,
        "srm": srm,
        "health": health,
        "metrics": entries,
        "decision": decision,
        "daily_new_units": _daily_new_units(daily, inputs.as_of),
        "population_weights": {p: weights[p] / sum(weights.values()) for p in populations}
        if populations
        else {},
    }


def _skew_fields(
    agg: AggregateMetric | None, totals: Totals, pop: str, populations: Sequence[str]
) -> dict[str, Any]:
    """Each arm's skewness and the Kohavi et al. (2014) rule n > 355·s² per arm (issue #16).

    Extra keys of a metric entry: ``skewness`` {control, treatment} (g₁; None where unknown:
    ratio and quantile metrics, fewer than 3 units, no variance) and ``skew_rule`` (need, have,
    holds, skewness, arm: the binding arm, message: "too few units for a skewed metric: need N,
    have M" or ""). Pooled: the arms' statistics summed over populations.
    """
    arms: dict[str, tuple[float | None, int]] = {}
    for arm in ("control", "treatment"):
        pops = populations if pop == POOLED else [pop]
        bucket: dict[str, Any] = {}
        for p in pops:
            if (arm, p) in totals:
                add_row(bucket, totals[(arm, p)])
        n = int(bucket.get("n", 0))
        skew = None
        if agg is not None and agg.kind != "ratio" and n > 0:
            try:
                skew = _statistic(agg, bucket).skewness
            except (ValueError, ZeroDivisionError):
                skew = None
        arms[arm] = (_f(skew), n)
    rule = stats.skew_rule_arms(arms["control"], arms["treatment"])
    return {
        "skewness": {arm: s for arm, (s, _n) in arms.items()},
        "skew_rule": rule.to_dict(),
    }


def _capping(agg: AggregateMetric | None, totals: Totals) -> dict[str, Any] | None:
    """The readout's note on a pre-registered cap: {quantile, source, cap (the value used)}."""
    if agg is None or not agg.capped:
        return None
    caps = [t.get(f"{agg.key}__cap") for t in totals.values()]
    cap = next((c for c in caps if c is not None), None)
    return {"quantile": agg.cap_quantile, "source": agg.cap_source, "cap": _f(cap)}


def _metric_result(
    metric: MetricDesign,
    agg: AggregateMetric | None,
    totals: Totals,
    strata: StratumTotals,
    stable: Mapping[int, StableRange],
    inputs: Inputs,
    pop: str,
    alpha: float,
) -> stats.ComparisonResult:
    if metric.kind == "quantile":
        samples = inputs.quantile_samples.get(metric.key, {})
        c = samples.get(("control", pop), np.empty(0))
        t = samples.get(("treatment", pop), np.empty(0))
        return stats.quantile_diff(c, t, metric.quantile or 0.99, alpha)
    assert agg is not None
    return _by_first_exposure(
        lambda c, t: _compare(metric, agg, _statistic(agg, c), _statistic(agg, t), alpha),
        totals,
        strata,
        stable,
        pop,
        alpha,
    )


def _pooled(
    metric: MetricDesign,
    per_pop: Mapping[str, stats.ComparisonResult],
    weights: Mapping[str, float],
    inputs: Inputs,
    alpha: float,
) -> stats.ComparisonResult:
    if metric.kind == "quantile":
        samples = inputs.quantile_samples.get(metric.key, {})
        c = [v for (arm, _p), v in samples.items() if arm == "control"]
        t = [v for (arm, _p), v in samples.items() if arm == "treatment"]
        return stats.quantile_diff(
            np.concatenate(c) if c else np.empty(0),
            np.concatenate(t) if t else np.empty(0),
            metric.quantile or 0.99,
            alpha,
        )
    if len(per_pop) == 1:
        return next(iter(per_pop.values()))
    return stats.stratified(dict(per_pop), weights={p: weights[p] for p in per_pop}, alpha=alpha).pooled


def _margin_abs(metric: MetricDesign, result: stats.ComparisonResult) -> float | None:
    if metric.margin is None:
        return None
    if not metric.relative:
        return metric.margin
    if result.control_mean in (None, 0.0):
        return None
    return metric.margin * abs(result.control_mean)  # type: ignore[arg-type]


def _entry(
    metric: MetricDesign,
    pop: str,
    res: stats.ComparisonResult,
    p_adjusted: float | None,
    design: Design,
    inputs: Inputs,
) -> dict[str, Any]:
    alpha = design.alpha
    equivalence = None
    ni = None
    if metric.margin is not None and metric.role in ("primary", "secondary"):
        equivalence = stats.tost(res, metric.margin, alpha, relative=metric.relative)
    if metric.margin is not None and metric.role == "guardrail":
        ni = stats.noninferiority(res, metric.margin, metric.direction, alpha, relative=metric.relative)
    sequential = None
    if design.sequential and res.computable:
        previous = inputs.previous_sequential.get((metric.key, pop))
        prev = _sequential_from_dict(previous) if previous else None
        try:
            sequential = stats.msprt(res, alpha, previous=prev, mixture_sd=None if prev else _mixture_sd(res))
        except ValueError:
            sequential = stats.msprt(res, alpha, mixture_sd=_mixture_sd(res))
    p_used = p_adjusted if metric.role == "secondary" and p_adjusted is not None else res.p_value
    verdict = _verdict(metric, res, p_used, alpha, equivalence, ni, sequential)
    margin_abs = _margin_abs(metric, res)
    rel_band = None
    if metric.margin is not None:
        if metric.relative:
            rel_band = [-metric.margin, metric.margin]
        elif res.control_mean not in (None, 0.0):
            band = metric.margin / abs(res.control_mean)  # type: ignore[arg-type]
            rel_band = [-band, band]
    return {
        "metric": metric.key,
        "name": metric.name,
        "role": metric.role,
        "kind": metric.kind,
        "direction": metric.direction,
        "population": pop,
        "computable": bool(res.computable),
        "reason": res.reason,
        "method": res.method,
        "n_control": res.n_control,
        "n_treatment": res.n_treatment,
        "control_mean": _f(res.control_mean),
        "treatment_mean": _f(res.treatment_mean),
        "diff": _f(res.diff),
        "se": _f(res.se),
        "ci": [_f(res.ci[0]), _f(res.ci[1])] if res.ci else None,
        "rel_lift": _f(res.rel_lift),
        "rel_lift_ci": [_f(res.rel_lift_ci[0]), _f(res.rel_lift_ci[1])] if res.rel_lift_ci else None,
        "p_value": _f(res.p_value),
        "p_adjusted": _f(p_adjusted) if p_adjusted is not None else _f(res.p_value),
        "variance_reduction": _f(res.variance_reduction),
        "margin": metric.margin,
        "margin_kind": metric.margin_kind if metric.margin is not None else None,
        "margin_abs": _f(margin_abs),
        "rel_band": rel_band,
        "equivalence": equivalence.to_dict() if equivalence is not None else None,
        "noninferiority": ni.to_dict() if ni is not None else None,
        "sequential": sequential.to_dict() if sequential is not None else None,
        "verdict": verdict,
        "units_needed": _units_needed(metric, res, design, margin_abs)
        if verdict == "inconclusive" and metric.role in ("primary", "guardrail")
        else None,
    }


def _mixture_sd(res: stats.ComparisonResult) -> float | None:
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


def _sequential_from_dict(data: Mapping[str, Any]) -> stats.SequentialResult | None:
    try:
        values = dict(data)
        if values.get("ci") is not None:
            values["ci"] = tuple(values["ci"])
        return stats.SequentialResult(**values)
    except TypeError:
        return None


# -- 5. SRM and health --------------------------------------------------------------------------
def _expected_share(
    stable: Mapping[int, StableRange], versions: Mapping[str, Mapping[int, int]]
) -> float | None:
    """Expected treatment share of the analysed units, mixing the kept split of each version."""
    total = 0
    weighted = 0.0
    for arm_versions in versions.values():
        for version, n in arm_versions.items():
            rng = stable.get(version)
            share = rng.treatment_share if rng is not None else None
            if share is None:
                continue
            total += n
            weighted += n * share
    return weighted / total if total else None


def _srm(
    stable: Mapping[int, StableRange],
    by_version: Mapping[str, Mapping[str, Mapping[int, int]]],
    units_by_pop: Mapping[str, Mapping[str, int]],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pooled_observed = [0, 0]
    pooled_expected = [0.0, 0.0]
    for pop, counts in units_by_pop.items():
        share = _expected_share(stable, by_version.get(pop, {}))
        observed = [counts["control"], counts["treatment"]]
        pooled_observed = [pooled_observed[0] + observed[0], pooled_observed[1] + observed[1]]
        out[pop] = _srm_entry(observed, share)
        if share is not None:
            n = sum(observed)
            pooled_expected = [pooled_expected[0] + n * (1 - share), pooled_expected[1] + n * share]
    total = sum(pooled_expected)
    out[POOLED] = _srm_entry(pooled_observed, pooled_expected[1] / total if total else None)
    return out


def _srm_entry(observed: list[int], share: float | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "observed": {"control": observed[0], "treatment": observed[1]},
        "expected_share": share,
    }
    if share is None or not 0.0 < share < 1.0 or sum(observed) == 0:
        entry.update(
            chi2=None,
            p_value=None,
            flagged=False,
            computable=False,
            reason="no units or no configured split for this population",
        )
        return entry
    result = stats.srm(observed, [1.0 - share, share])
    entry.update(
        chi2=_f(result.chi2),
        p_value=_f(result.p_value),
        flagged=bool(result.flagged),
        computable=bool(result.computable),
        reason=result.reason,
    )
    return entry


def _health(
    design: Design,
    stable: Mapping[int, StableRange],
    inputs: Inputs,
    units: Mapping[str, Any],
    srm: Mapping[str, Any],
    entries: Sequence[Mapping[str, Any]],
    totals: Totals,
    strata: StratumTotals,
    aggregates: Mapping[str, AggregateMetric],
    populations: Sequence[str],
) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    flagged = [p for p, s in srm.items() if s.get("flagged")]
    checks.append(
        {
            "check": "srm",
            "ok": not flagged,
            "detail": "unit counts match the configured split (χ² p ≥ 0.001)"
            if not flagged
            else "sample ratio mismatch in " + ", ".join(f"{p} (p={srm[p]['p_value']:.2g})" for p in flagged),
        }
    )
    has_units = units["control"] > 0 and units["treatment"] > 0
    missing_metrics = [
        e["metric"]
        for e in entries
        if e["population"] == POOLED and not e["computable"] and e["role"] != "secondary"
    ]
    detail = (
        f"{units['control']} control and {units['treatment']} treatment units"
        if has_units
        else "no exposed units in " + " and ".join(a for a in ("control", "treatment") if units[a] == 0)
    )
    if has_units and missing_metrics:
        detail += "; no usable data for " + ", ".join(missing_metrics)
    checks.append({"check": "no_data", "ok": has_units and not missing_metrics, "detail": detail})
    if inputs.crossover is None:
        checks.append({"check": "both_arms", "ok": True, "detail": "not checked (no current allocation)"})
    else:
        checked = int(inputs.crossover.get("checked", 0))
        crossed = int(inputs.crossover.get("crossed", 0))
        share = crossed / checked if checked else 0.0
        checks.append(
            {
                "check": "both_arms",
                "ok": share <= CROSSOVER_LIMIT,
                "detail": (
                    f"{crossed} of {checked} analysed units in the request log were served by both arms"
                    if inputs.crossover.get("source") == "request_log"
                    else f"{crossed} of {checked} sampled analysed units are now assigned to another arm than at "
                    "their first exposure"
                )
                + f" ({share:.2%}; limit {CROSSOVER_LIMIT:.0%})"
                + (
                    f"; {excluded} units whose bucket moved arm during the ramp are left out"
                    if (excluded := inputs.crossover.get("excluded"))
                    else ""
                ),
                "share": share,
            }
        )
    imbalanced = []
    tested = 0
    for key, agg in aggregates.items():
        if not agg.cuped:
            continue
        fields = (
            ("pre_num_sum", "pre_num_sum_squares", "pre_num_shift")
            if agg.kind == "ratio"
            else ("x_sum", "x_sum_squares", "x_shift")
        )

        def covariate(
            arm_totals: Mapping[str, float], key: str = key, fields: tuple[str, str, str] = fields
        ) -> Any:
            return stats.MeanStatistic(
                int(arm_totals.get("n", 0)),
                arm_totals.get(f"{key}__{fields[0]}", 0.0),
                arm_totals.get(f"{key}__{fields[1]}", 0.0),
                arm_totals.get(f"{key}__{fields[2]}", 0.0),
            )

        for pop in populations:
            res = _by_first_exposure(
                lambda c, t: stats.welch(covariate(c), covariate(t), design.alpha),
                totals,
                strata,
                stable,
                pop,
                design.alpha,
            )
            if res.computable and res.p_value is not None:
                tested += 1
                if res.p_value < PRE_PERIOD_IMBALANCE_P:
                    imbalanced.append(f"{key}/{pop} (p={res.p_value:.2g})")
    checks.append(
        {
            "check": "pre_period_balance",
            "ok": not imbalanced,
            "detail": ("pre-period covariates differ between arms: " + ", ".join(imbalanced))
            if imbalanced
            else f"{tested} pre-period covariate comparisons balanced (p ≥ {PRE_PERIOD_IMBALANCE_P})",
        }
    )
    return checks


# -- 6. decision --------------------------------------------------------------------------------
def _decide(
    design: Design,
    entries: Sequence[Mapping[str, Any]],
    health: Sequence[Mapping[str, Any]],
    srm: Mapping[str, Any],
    units: Mapping[str, Any],
    daily: Mapping[str, int],
    as_of: dt.date,
) -> dict[str, Any]:
    reasons: list[str] = []
    blocking: list[str] = []
    pooled = {e["metric"]: e for e in entries if e["population"] == POOLED}
    checks = {h["check"]: h for h in health}

    def block(key: str) -> None:
        if key not in blocking:
            blocking.append(key)

    if units["control"] == 0 or units["treatment"] == 0:
        return {
            "verdict": "extend",
            "reasons": [checks["no_data"]["detail"] + ": wait for traffic"],
            "blocking": [],
            "days_needed": None,
        }

    # Harm first: a guardrail beyond its margin (pooled or in any population), or a primary
    # significantly worse and not within its equivalence margin, rolls back.
    harm = False
    for e in entries:
        if e["role"] == "guardrail" and e["verdict"] == "inferior":
            harm = True
            block(e["metric"])
            where = "overall" if e["population"] == POOLED else f"for {e['population']} users"
            reasons.append(
                f"{e['name']} is worse than its non-inferiority margin {where} "
                f"(lift {_pct(e['rel_lift'])}, CI {_pct_ci(e['rel_lift_ci'])})"
            )
        if e["role"] == "primary" and e["population"] == POOLED and e["verdict"] == "worse":
            harm = True
            block(e["metric"])
            reasons.append(
                f"{e['name']} is significantly worse and not within ±{_margin_text(e)} (lift {_pct(e['rel_lift'])})"
            )
    if harm:
        return {"verdict": "rollback", "reasons": reasons, "blocking": blocking, "days_needed": None}

    if not checks["srm"]["ok"]:
        reasons.append(checks["srm"]["detail"] + ": the arms are not comparable until the cause is fixed")
    for name in ("both_arms", "pre_period_balance"):
        if not checks[name]["ok"]:
            reasons.append(checks[name]["detail"])
    data_problem = bool(reasons)

    pending: list[tuple[str, float | None]] = []
    for metric in design.metrics:
        pe = pooled.get(metric.key)
        if pe is None or metric.role == "secondary":
            continue
        ok = pe["verdict"] in (("equivalent", "better") if metric.role == "primary" else ("noninferior",))
        if ok:
            continue
        block(metric.key)
        pending.append((metric.key, pe.get("units_needed")))
        if pe["verdict"] == "not_computable":
            reasons.append(f"{pe['name']}: not computable ({pe['reason'] or 'no data'})")
        elif metric.role == "primary":
            reasons.append(
                f"{pe['name']}: not yet shown equivalent within ±{_margin_text(pe)} "
                f"(lift {_pct(pe['rel_lift'])}, CI {_pct_ci(pe['rel_lift_ci'])})"
            )
        else:
            reasons.append(
                f"{pe['name']}: non-inferiority within {_margin_text(pe)} not yet shown "
                f"(lift {_pct(pe['rel_lift'])}, CI {_pct_ci(pe['rel_lift_ci'])})"
            )
    if data_problem:
        return {"verdict": "hold", "reasons": reasons, "blocking": blocking, "days_needed": None}
    if not pending:
        primaries = [m.name for m in design.metrics if m.role == "primary"]
        return {
            "verdict": "ship",
            "reasons": [
                f"primaries equivalent or better ({', '.join(primaries)}); every guardrail non-inferior "
                "(latency included); SRM clean"
            ],
            "blocking": [],
            "days_needed": None,
        }
    # Extend: how long at the current rate of new units until every blocking test has power.
    rate = _daily_new_units(daily, as_of)
    n_now = units["control"] + units["treatment"]
    days: list[float] = []
    unreachable = []
    for key, needed in pending:
        if needed is None:
            unreachable.append(key)
            continue
        days.append(max(0.0, needed - n_now) / rate if rate > 0 else math.inf)
    if unreachable or not days:
        reasons.append(
            "more data will not settle "
            + ", ".join(pooled[k]["name"] for k in unreachable)
            + ": its estimate lies outside the margin or it has no data"
            if unreachable
            else "no traffic rate to project"
        )
        return {"verdict": "hold", "reasons": reasons, "blocking": blocking, "days_needed": None}
    need = max(days)
    if not math.isfinite(need) or need > MAX_EXTEND_DAYS:
        reasons.append(
            f"would need {need:.0f} more days at {rate:.0f} new units/day (more than {MAX_EXTEND_DAYS})"
        )
        return {"verdict": "hold", "reasons": reasons, "blocking": blocking, "days_needed": _f(need)}
    reasons.append(
        f"about {math.ceil(need)} more days at the current {rate:.0f} new units/day reach "
        f"{design.power:.0%} power for every blocking metric"
    )
    return {
        "verdict": "extend",
        "reasons": reasons,
        "blocking": blocking,
        "days_needed": float(math.ceil(need * 10) / 10),
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.2f}%"


def _pct_ci(ci: Sequence[float | None] | None) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "n/a"
    return f"[{ci[0] * 100:+.2f}%, {ci[1] * 100:+.2f}%]"


def _margin_text(e: Mapping[str, Any]) -> str:
    if e.get("margin") is None:
        return "no margin"
    if e.get("margin_kind") == "relative":
        return f"{e['margin'] * 100:g}%"
    return f"{e['margin']:g} (absolute)"
