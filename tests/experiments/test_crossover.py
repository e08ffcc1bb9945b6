"""Crossover on a sticky monotone ramp: units that moved control → treatment are left out, and each
population is stratified by first-exposure version, so a multi-step ramp reads out unbiased.

The world here is built to make the naive answers wrong: every unit accrues its metric each day
from its arrival, so early arrivers have larger window sums, and the ramp widens (5 % → 25 % →
50 %) while units arrive. Runs on SQLite (sqlite_path) and on PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import numpy as np
import pytest

from experiments import aggregation, analysis

pytestmark = [pytest.mark.django_db, pytest.mark.sqlite_path]

T0 = dt.datetime(2026, 5, 4, 0, 30, tzinfo=dt.UTC)
DAYS = 6
ARRIVALS_PER_DAY = 2500
RAMP = {0: 500, 2: 2500, 4: 5000}  # day → treatment_bp (holdout 200 bp throughout)


def test_stable_ranges_follow_every_later_version() -> None:
    ranges = aggregation.stable_ranges([(1, 200, 500), (2, 200, 2500), (3, 200, 5000)])
    # Treatment under v1 stays treatment: [200, 700). Control must lie above every later range.
    assert ranges[1] == aggregation.StableRange(200, 700, 5200)
    assert ranges[2] == aggregation.StableRange(200, 2700, 5200)
    assert ranges[3] == aggregation.StableRange(200, 5200, 5200)
    assert ranges[1].kept_share == pytest.approx((500 + 4800) / 10000)
    assert ranges[1].treatment_share == pytest.approx(500 / 5300)
    # A rollback to 0 % makes every earlier treatment unit cross back: no stable treatment left.
    rolled = aggregation.stable_ranges([(1, 0, 5000), (2, 0, 0)])
    assert rolled[1].treatment_buckets == 0 and rolled[1].control_lo == 5000
    assert rolled[2] == aggregation.StableRange(0, 0, 0)


def test_stable_filter_sql_is_portable_and_parameterised() -> None:
    sql, params = aggregation.stable_filter(aggregation.stable_ranges([(1, 0, 500), (2, 0, 2500)]))
    assert sql.count("%s") == len(params)
    assert "e.bucket IS NULL" in sql and "NOT IN" in sql
    assert aggregation.stable_filter(None) == ("", [])


def _world(seeded: dict[str, Any], effect: float, seed: int) -> Any:
    """Units arrive over DAYS days while the ramp widens; per-day time spent, ×(1+effect) when treated."""
    from controlplane.core.assignment import AllocationConfig
    from controlplane.core.selectors import allocation_config
    from controlplane.core.services import allocation_change
    from controlplane.serving.models import Exposure
    from experiments.models import MetricObservation
    from experiments.services import experiment_create, metric_definitions_ensure_standard

    surface = seeded["groups"]
    configs: dict[int, AllocationConfig] = {}
    for day, bp in RAMP.items():
        allocation = allocation_change(
            surface=surface,
            actor="system:test",
            reason=f"ramp to {bp / 100:g}%",
            treatment_stack=seeded["unified"],
            treatment_bp=bp,
            holdout_bp=200,
            salt="groups-ramp",
            now=T0 + dt.timedelta(days=day),
        )
        configs[day] = allocation_config(allocation)
    metric_definitions_ensure_standard()
    experiment = experiment_create(
        surface=surface,
        key="groups-ramp",
        name="unified on groups, ramped",
        hypothesis="neutral",
        treatment_stack=seeded["unified"],
        salt="groups-ramp",
        window_start=T0.date(),
        metrics=[{"metric": "time_spent", "role": "primary", "margin_kind": "relative", "margin": 0.02}],
        actor="system:test",
        now=T0,
        start=True,
    )

    def config_on(day: int) -> AllocationConfig:
        return configs[max(d for d in configs if d <= day)]

    rng = np.random.default_rng(seed)
    exposures, rows = [], []
    for arrival in range(DAYS):
        first = config_on(arrival)
        for i in range(ARRIVALS_PER_DAY):
            unit = f"d{arrival}-{i}"
            a = first.assign(unit)
            exposures.append(
                Exposure(
                    surface=surface,
                    salt=first.salt,
                    unit_id=unit,
                    arm=a.arm,
                    population=a.population,
                    stack=a.stack,
                    allocation_version=first.version,
                    bucket=a.bucket,
                    first_exposed_at=T0 + dt.timedelta(days=arrival, hours=1),
                )
            )
            for day in range(arrival, DAYS):
                treated = config_on(day).assign(unit).arm == "treatment"  # crossed units too
                value = 10.0 + 2.0 * rng.standard_normal()
                rows.append(
                    MetricObservation(
                        surface=surface,
                        unit_id=unit,
                        day=T0.date() + dt.timedelta(days=day),
                        metric="time_spent",
                        value=value * (1.0 + effect if treated else 1.0),
                    )
                )
    Exposure.objects.bulk_create(exposures, batch_size=5000)
    MetricObservation.objects.bulk_create(rows, batch_size=5000)
    return experiment


def _pooled(result: dict[str, Any], metric: str = "time_spent") -> dict[str, Any]:
    return next(m for m in result["metrics"] if m["metric"] == metric and m["population"] == "pooled")


def test_a_neutral_multi_step_ramp_reads_neutral_and_the_naive_pool_would_not(seeded: dict[str, Any]) -> None:
    from experiments.services import analysis_design, experiment_analyze

    experiment = _world(seeded, effect=0.0, seed=11)
    run = experiment_analyze(experiment=experiment, now=T0 + dt.timedelta(days=DAYS - 1, hours=20))
    result = run.result
    pooled = _pooled(result)
    assert pooled["ci"][0] < 0 < pooled["ci"][1], pooled
    assert pooled["method"].startswith("stratified")
    checks = {h["check"]: h for h in result["health"]}
    assert checks["both_arms"]["ok"], checks["both_arms"]
    assert checks["srm"]["ok"], result["srm"]
    assert "left out" in checks["both_arms"]["detail"]
    # Kept per cohort: its treatment slice + control above 52 %: 53 %, 73 %, 98 % of 2 × 2500 units.
    kept = result["units"]["control"] + result["units"]["treatment"]
    assert kept == pytest.approx(2 * ARRIVALS_PER_DAY * (0.53 + 0.73 + 0.98), rel=0.02)
    assert result["decision"]["verdict"] in ("ship", "extend"), result["decision"]

    # The same kept units pooled over versions without stratifying: treatment is mostly late
    # arrivers with fewer days, a large spurious loss.
    naive_rows = [{**row, "allocation_version": 1} for row in run.statistics]
    design = analysis_design(experiment)
    one_version = dataclasses.replace(design, splits={1: design.splits[min(design.splits)]})
    naive = analysis.analyze(
        one_version, analysis.Inputs(rows=naive_rows, as_of=run.as_of), computed_at="now"
    ).to_dict()
    naive_pooled = _pooled(naive)
    assert naive_pooled["ci"][1] < 0, naive_pooled
    assert naive_pooled["rel_lift"] < -0.2


def test_a_real_effect_is_recovered_without_crossover_dilution(seeded: dict[str, Any]) -> None:
    from experiments.services import experiment_analyze

    experiment = _world(seeded, effect=0.10, seed=12)
    run = experiment_analyze(experiment=experiment, now=T0 + dt.timedelta(days=DAYS - 1, hours=20))
    pooled = _pooled(run.result)
    lo, hi = pooled["rel_lift_ci"]
    assert lo < 0.10 < hi, pooled
    assert pooled["rel_lift"] == pytest.approx(0.10, abs=0.02)
