"""Sample-ratio mismatch per population and pooled, and the health checks of an analysis."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from experiments import stats
from experiments.aggregation import AggregateMetric, StableRange
from experiments.analysis.design import (
    CROSSOVER_LIMIT,
    POOLED,
    PRE_PERIOD_IMBALANCE_P,
    Design,
    Inputs,
    finite,
)
from experiments.analysis.gather import StratumTotals, Totals, by_first_exposure
from experiments.outcome import HealthCheck, MetricOutcome, SrmCheck, Units


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


def srm_checks(
    stable: Mapping[int, StableRange],
    by_version: Mapping[str, Mapping[str, Mapping[int, int]]],
    units_by_pop: Mapping[str, Mapping[str, int]],
) -> dict[str, SrmCheck]:
    """χ² of observed units against the configured split, per population and pooled."""
    out: dict[str, SrmCheck] = {}
    pooled_observed = [0, 0]
    pooled_expected = [0.0, 0.0]
    for pop, counts in units_by_pop.items():
        share = _expected_share(stable, by_version.get(pop, {}))
        observed = [counts["control"], counts["treatment"]]
        pooled_observed = [pooled_observed[0] + observed[0], pooled_observed[1] + observed[1]]
        out[pop] = _srm_check(pop, observed, share)
        if share is not None:
            n = sum(observed)
            pooled_expected = [pooled_expected[0] + n * (1 - share), pooled_expected[1] + n * share]
    total = sum(pooled_expected)
    out[POOLED] = _srm_check(POOLED, pooled_observed, pooled_expected[1] / total if total else None)
    return out


def _srm_check(population: str, observed: list[int], share: float | None) -> SrmCheck:
    if share is None or not 0.0 < share < 1.0 or sum(observed) == 0:
        return SrmCheck(
            population=population,
            observed_control=observed[0],
            observed_treatment=observed[1],
            expected_share=share,
            chi2=None,
            p_value=None,
            flagged=False,
            computable=False,
            reason="no units or no configured split for this population",
        )
    result = stats.srm(observed, [1.0 - share, share])
    return SrmCheck(
        population=population,
        observed_control=observed[0],
        observed_treatment=observed[1],
        expected_share=share,
        chi2=finite(result.chi2),
        p_value=finite(result.p_value),
        flagged=bool(result.flagged),
        computable=bool(result.computable),
        reason=result.reason,
    )


def health_checks(
    design: Design,
    stable: Mapping[int, StableRange],
    inputs: Inputs,
    units: Units,
    srm: Mapping[str, SrmCheck],
    outcomes: Sequence[MetricOutcome],
    totals: Totals,
    strata: StratumTotals,
    aggregates: Mapping[str, AggregateMetric],
    populations: Sequence[str],
) -> tuple[HealthCheck, ...]:
    """SRM, data present in both arms, units served by both arms, pre-period balance."""
    checks = [_srm_health(srm), _data_health(units, outcomes), _crossover_health(inputs)]
    checks.append(_balance_health(design, stable, totals, strata, aggregates, populations))
    return tuple(checks)


def _srm_health(srm: Mapping[str, SrmCheck]) -> HealthCheck:
    flagged = [p for p, s in srm.items() if s.flagged]
    return HealthCheck(
        "srm",
        not flagged,
        "unit counts match the configured split (χ² p ≥ 0.001)"
        if not flagged
        else "sample ratio mismatch in " + ", ".join(f"{p} (p={srm[p].p_value:.2g})" for p in flagged),
    )


def _data_health(units: Units, outcomes: Sequence[MetricOutcome]) -> HealthCheck:
    has_units = units.control > 0 and units.treatment > 0
    missing_metrics = [
        m.metric for m in outcomes if m.population == POOLED and not m.computable and m.role != "secondary"
    ]
    counts = {"control": units.control, "treatment": units.treatment}
    detail = (
        f"{units.control} control and {units.treatment} treatment units"
        if has_units
        else "no exposed units in " + " and ".join(a for a in ("control", "treatment") if counts[a] == 0)
    )
    if has_units and missing_metrics:
        detail += "; no usable data for " + ", ".join(missing_metrics)
    return HealthCheck("no_data", has_units and not missing_metrics, detail)


def _crossover_health(inputs: Inputs) -> HealthCheck:
    if inputs.crossover is None:
        return HealthCheck("both_arms", True, "not checked (no current allocation)")
    checked = int(inputs.crossover.get("checked", 0))
    crossed = int(inputs.crossover.get("crossed", 0))
    share = crossed / checked if checked else 0.0
    excluded = inputs.crossover.get("excluded")
    return HealthCheck(
        "both_arms",
        share <= CROSSOVER_LIMIT,
        (
            f"{crossed} of {checked} analysed units in the request log were served by both arms"
            if inputs.crossover.get("source") == "request_log"
            else f"{crossed} of {checked} sampled analysed units are now assigned to another arm than at "
            "their first exposure"
        )
        + f" ({share:.2%}; limit {CROSSOVER_LIMIT:.0%})"
        + (f"; {excluded} units whose bucket moved arm during the ramp are left out" if excluded else ""),
        share=share,
    )


def _balance_health(
    design: Design,
    stable: Mapping[int, StableRange],
    totals: Totals,
    strata: StratumTotals,
    aggregates: Mapping[str, AggregateMetric],
    populations: Sequence[str],
) -> HealthCheck:
    """Pre-period covariate means per arm: randomisation makes them exchangeable."""
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
        ) -> stats.MeanStatistic:
            return stats.MeanStatistic(
                int(arm_totals.get("n", 0)),
                arm_totals.get(f"{key}__{fields[0]}", 0.0),
                arm_totals.get(f"{key}__{fields[1]}", 0.0),
                arm_totals.get(f"{key}__{fields[2]}", 0.0),
            )

        for pop in populations:
            res = by_first_exposure(
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
    return HealthCheck(
        "pre_period_balance",
        not imbalanced,
        ("pre-period covariates differ between arms: " + ", ".join(imbalanced))
        if imbalanced
        else f"{tested} pre-period covariate comparisons balanced (p ≥ {PRE_PERIOD_IMBALANCE_P})",
    )
