"""Summed query rows → totals per arm × population, per first-exposure version, and per day."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from experiments import stats
from experiments.aggregation import StableRange, add_row

Totals = dict[tuple[str, str], dict[str, float]]
StratumTotals = dict[int, Totals]
#: ``compare(control_totals, treatment_totals)`` → the comparison of one population.
Compare = Callable[[Mapping[str, float], Mapping[str, float]], stats.ComparisonResult]


def group_rows(
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


def by_first_exposure(
    compare: Compare,
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
        return compare(totals.get(("control", pop), {}), totals.get(("treatment", pop), {}))
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
        return compare(totals.get(("control", pop), {}), totals.get(("treatment", pop), {}))
    if len(results) == 1:
        return next(iter(results.values()))
    return stats.stratified(results, weights=weights, alpha=alpha).pooled
