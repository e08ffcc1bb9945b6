"""Synthetic evidence for runbook tests and the bench: exposures, per-unit-day metrics, latency samples.

Units are assigned with the surface's *current* allocation (the real assignment library), so the
experiments app's SRM and crossover checks see exactly what a router would have logged. Values are
the configured mean × (1 + 2 % Gaussian noise) × the treatment effect, so equivalence at ±2 % is
reachable with a few thousand units (the statistics are exercised for real, not bypassed).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import numpy as np

BASE_MEANS: dict[str, float] = {
    "impressions": 40.0,
    "sessions": 2.0,
    "time_spent": 300.0,
    "likes": 3.0,
    "comments": 1.0,
    "shares": 0.5,
    "meaningful_interactions": 1.5,
    "hides": 0.2,
    "reports": 0.05,
    "integrity_impressions": 0.4,
    "errors": 0.04,
    "requests": 2.0,
    "newcomer_impressions": 4.0,
}
LATENCY_MS = {"content_first": 40.0, "interest_first": 45.0, "unified_mtl": 55.0}


def synthesize_day(
    *,
    surface,
    day: dt.date,
    units: int,
    treatment_effects: Mapping[str, float] | None = None,
    treatment_extra_ms: float = 0.0,
    seed: int = 7,
    noise: float = 0.02,
) -> dict[str, int]:
    """One day of evidence for ``units`` users of ``surface`` under its current allocation."""
    from controlplane.core.models import RankingStack
    from controlplane.core.selectors import allocation_config, allocation_current
    from controlplane.serving.models import Exposure, LatencySample
    from experiments.models import MetricObservation

    allocation = allocation_current(surface=surface)
    config = allocation_config(allocation)
    kinds = dict(RankingStack.objects.values_list("key", "kind"))
    rng = np.random.default_rng(seed + day.toordinal())
    effects = dict(treatment_effects or {})
    noon = dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)
    exposures, rows, samples = [], [], []
    for i in range(units):
        unit = f"u{i}"
        a = config.assign(unit)
        treated = a.arm == "treatment"
        exposures.append(
            Exposure(
                surface=surface,
                salt=config.salt,
                unit_id=unit,
                arm=a.arm,
                population=a.population,
                stack=a.stack,
                allocation_version=config.version,
                bucket=a.bucket,
                first_exposed_at=noon,
            )
        )
        jitter = 1.0 + noise * rng.standard_normal(len(BASE_MEANS))
        for (key, mean), j in zip(BASE_MEANS.items(), jitter, strict=True):
            value = mean * j * (effects.get(key, 1.0) if treated else 1.0)
            rows.append(
                MetricObservation(surface=surface, unit_id=unit, day=day, metric=key, value=max(0.0, value))
            )
        kind = kinds.get(a.stack.split("@")[0], "content_first")
        ms = LATENCY_MS.get(kind, 40.0) * (1.0 + 0.05 * rng.standard_normal()) + (
            treatment_extra_ms if treated else 0.0
        )
        samples.append(
            LatencySample(
                surface=surface,
                unit_id=unit,
                arm=a.arm,
                population=a.population,
                stack=a.stack,
                salt=config.salt,
                allocation_version=config.version,
                ts=noon + dt.timedelta(seconds=i % 3600),
                ms=max(1.0, ms),
            )
        )
    Exposure.objects.bulk_create(exposures, ignore_conflicts=True, batch_size=2000)
    MetricObservation.objects.bulk_create(rows, batch_size=5000)
    LatencySample.objects.bulk_create(samples, batch_size=2000)
    return {"exposures": len(exposures), "metric_rows": len(rows), "latency_samples": len(samples)}
