"""From sufficient statistics to the analysis outcome: per metric × population, pooled, decision.

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

Modules, one concern each: :mod:`.design` (what is asked), :mod:`.gather` (rows → totals and
first-exposure strata), :mod:`.comparisons` (one builder per metric kind), :mod:`.verdicts` (tests
against the margin and the verdict, decided once), :mod:`.health` (SRM and health checks),
:mod:`.recommendation` (ship / hold / rollback / extend). The result is an
:class:`experiments.outcome.AnalysisOutcome`.
"""

from __future__ import annotations

from dataclasses import replace

from experiments import stats
from experiments.analysis.comparisons import metric_result, pooled_result, skew_and_capping
from experiments.analysis.design import (
    CROSSOVER_LIMIT,
    MAX_EXTEND_DAYS,
    POOLED,
    PRE_PERIOD_IMBALANCE_P,
    AllocationSplit,
    Design,
    Inputs,
    MetricDesign,
)
from experiments.analysis.gather import group_rows
from experiments.analysis.health import health_checks, srm_checks
from experiments.analysis.recommendation import daily_new_units, recommend
from experiments.analysis.verdicts import metric_outcome
from experiments.outcome import AnalysisOutcome, MetricOutcome, Units


def analyze(design: Design, inputs: Inputs, *, computed_at: str) -> AnalysisOutcome:
    """The analysis outcome (its ``to_dict()`` is what ``AnalysisRun.result`` stores)."""
    alpha = design.alpha
    totals, strata, by_version, daily = group_rows(inputs.rows)
    stable = design.stable()
    populations = [p for p in design.populations if any((a, p) in totals for a in ("control", "treatment"))]
    populations += sorted({p for (_a, p) in totals} - set(populations))
    units_by_pop = {
        p: {arm: int(totals.get((arm, p), {}).get("n", 0)) for arm in ("control", "treatment")}
        for p in populations
    }
    units = Units(
        control=sum(u["control"] for u in units_by_pop.values()),
        treatment=sum(u["treatment"] for u in units_by_pop.values()),
        by_population=units_by_pop,
    )
    srm = srm_checks(stable, by_version, units_by_pop)
    weights = {
        p: float(design.populations.get(p, 0.0)) or float(sum(units_by_pop[p].values())) for p in populations
    }

    aggregates = {a.key: a for a in design.aggregate_metrics()}
    results: dict[tuple[str, str], stats.ComparisonResult] = {}
    for metric in design.metrics:
        per_pop: dict[str, stats.ComparisonResult] = {}
        for pop in populations:
            res = metric_result(
                metric, aggregates.get(metric.key), totals, strata, stable, inputs, pop, alpha
            )
            per_pop[pop] = res
            results[(metric.key, pop)] = res
        if populations:
            results[(metric.key, POOLED)] = pooled_result(metric, per_pop, weights, inputs, alpha)
    # Holm across secondaries within each population family (pooled is its own family).
    adjusted: dict[tuple[str, str], float] = {}
    for pop in [POOLED, *populations]:
        family = [
            (m.key, p)
            for m in design.metrics
            if m.role == "secondary"
            and (m.key, pop) in results
            and (p := results[(m.key, pop)].p_value) is not None
        ]
        if family:
            adj = stats.adjust_pvalues([p for _k, p in family], "holm", alpha)
            for (k, _p), p_adj in zip(family, adj.adjusted, strict=True):
                adjusted[(k, pop)] = p_adj
    outcomes: list[MetricOutcome] = []
    for metric in design.metrics:
        for pop in [POOLED, *populations]:
            found = results.get((metric.key, pop))
            if found is None:
                continue
            skewness, rule, capping = skew_and_capping(aggregates.get(metric.key), totals, pop, populations)
            outcome = metric_outcome(metric, pop, found, adjusted.get((metric.key, pop)), design, inputs)
            outcomes.append(replace(outcome, skewness=skewness, skew_rule=rule, capping=capping))

    health = health_checks(
        design, stable, inputs, units, srm, outcomes, totals, strata, aggregates, populations
    )
    return AnalysisOutcome(
        computed_at=computed_at,
        as_of=inputs.as_of.isoformat(),
        units=units,
        srm=srm,
        health=health,
        metrics=tuple(outcomes),
        recommendation=recommend(design, outcomes, health, units, daily, inputs.as_of),
        daily_new_units=daily_new_units(daily, inputs.as_of),
        population_weights={p: weights[p] / sum(weights.values()) for p in populations}
        if populations
        else {},
    )


__all__ = [
    "CROSSOVER_LIMIT",
    "MAX_EXTEND_DAYS",
    "POOLED",
    "PRE_PERIOD_IMBALANCE_P",
    "AllocationSplit",
    "Design",
    "Inputs",
    "MetricDesign",
    "analyze",
]
