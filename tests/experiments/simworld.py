"""A fast numpy stand-in of the simulated world for analysis tests: same rows, same knobs.

Units are assigned with the real assignment library (so SRM holds by construction), first exposed
over the window days, and produce the per-unit, per-day metric rows the world produces
(impressions, sessions, time_spent, likes, comments, shares, hides, reports,
integrity_impressions, errors, requests, meaningful_interactions, newcomer_impressions) plus a
pre-period for the CUPED covariates and per-request latency samples. Treatment effects come from
knobs named like ``rankers.engine.world.Effects`` (like/comment/share/hide/report/dwell
multipliers, extra_latency_ms, error_rate), applied to treatment units in the window only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np

PRE_KEYS = ("time_spent", "meaningful_interactions", "likes", "sessions")


@dataclass(frozen=True)
class Knobs:
    like_multiplier: float = 1.0
    comment_multiplier: float = 1.0
    share_multiplier: float = 1.0
    hide_multiplier: float = 1.0
    report_multiplier: float = 1.0
    dwell_multiplier: float = 1.0
    extra_latency_ms: float = 0.0
    error_rate: float = 0.0


@dataclass
class World:
    units: list[str]
    arms: np.ndarray
    populations: list[str]
    exposed_day: np.ndarray


def fast_insert(model: Any, rows: list[dict[str, Any]]) -> None:
    """executemany INSERT of plain dicts (model defaults filled in): test data in seconds, not minutes."""
    from django.db import connection, models

    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    defaults = {f.attname: f.get_default() for f in fields}
    datetimes = {f.attname for f in fields if isinstance(f, models.DateTimeField)}
    params = []
    for row in rows:
        values = []
        for f in fields:
            value = row.get(f.attname, defaults[f.attname])
            if f.attname in datetimes and value is not None:
                value = connection.ops.adapt_datetimefield_value(value)
            values.append(value)
        params.append(values)
    with connection.cursor() as cursor:
        cursor.executemany(f"INSERT INTO {model._meta.db_table} ({columns}) VALUES ({placeholders})", params)


def _k(effects: Any, name: str, default: float) -> float:
    return float(getattr(effects, name, default)) if effects is not None else default


def populate(
    *,
    surface: Any,
    allocation: Any,
    n_units: int,
    window_start: dt.date,
    window_days: int,
    pre_day: dt.date | None,
    effects: Any = None,
    seed: int = 7,
    latency_per_unit_day: int = 3,
    unit_offset: int = 0,
    arrival_days: int = 1,
    pre_coverage: float = 0.97,
) -> World:
    """Write exposures, metric rows (window + one pre-period day) and latency samples."""
    from django.apps import apps

    from controlplane.core.selectors import allocation_config
    from controlplane.serving.models import Exposure
    from experiments.models import MetricObservation

    rng = np.random.default_rng(seed)
    config = allocation_config(allocation)
    units = [f"u{unit_offset + i}" for i in range(n_units)]
    assigned = [config.assign(u) for u in units]
    keep = [i for i, a in enumerate(assigned) if a.arm != "holdout"]
    units = [units[i] for i in keep]
    assigned = [assigned[i] for i in keep]
    n = len(units)
    treated = np.array([a.arm == "treatment" for a in assigned])
    pops = [a.population for a in assigned]
    activity = rng.lognormal(0.0, 0.45, n) * np.where(np.array(pops) == "interest_first", 1.2, 1.0)
    exposed_day = rng.integers(0, arrival_days, n)
    fast_insert(
        Exposure,
        [
            {
                "surface_id": surface.pk,
                "salt": allocation.salt,
                "unit_id": u,
                "arm": a.arm,
                "population": a.population,
                "stack": a.stack,
                "allocation_version": allocation.version,
                "first_exposed_at": dt.datetime.combine(
                    window_start + dt.timedelta(days=int(d)), dt.time(8, 0), tzinfo=dt.UTC
                )
                + dt.timedelta(seconds=int(s)),
            }
            for u, a, d, s in zip(units, assigned, exposed_day, rng.integers(0, 40000, n), strict=True)
        ],
    )

    rows: list[tuple[Any, ...]] = []

    def day_rows(day: dt.date, mask: np.ndarray, eff: np.ndarray, keys: tuple[str, ...] | None) -> None:
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            return
        a = activity[idx]
        e = eff[idx]
        impressions = rng.poisson(400 * a)
        requests = rng.poisson(20 * a) + 1
        sessions = rng.poisson(4 * a) + 1
        mult = {
            k: np.where(e, _k(effects, k, 1.0), 1.0)
            for k in (
                "like_multiplier",
                "comment_multiplier",
                "share_multiplier",
                "hide_multiplier",
                "report_multiplier",
                "dwell_multiplier",
            )
        }
        time_spent = rng.gamma(16.0, 300 * a / 16.0) * mult["dwell_multiplier"]
        likes = rng.binomial(impressions, np.clip(0.05 * mult["like_multiplier"], 0, 1))
        comments = rng.binomial(impressions, np.clip(0.012 * mult["comment_multiplier"], 0, 1))
        shares = rng.binomial(impressions, np.clip(0.008 * mult["share_multiplier"], 0, 1))
        hides = rng.binomial(impressions, np.clip(0.02 * mult["hide_multiplier"], 0, 1))
        reports = rng.binomial(impressions, np.clip(0.004 * mult["report_multiplier"], 0, 1))
        integrity = rng.binomial(impressions, 0.01)
        errors = rng.binomial(
            requests, np.clip(0.05 + np.where(e, _k(effects, "error_rate", 0.0), 0.0), 0, 1)
        )
        newcomer = rng.binomial(impressions, 0.1)
        values = {
            "impressions": impressions,
            "requests": requests,
            "sessions": sessions,
            "time_spent": time_spent,
            "likes": likes,
            "comments": comments,
            "shares": shares,
            "hides": hides,
            "reports": reports,
            "integrity_impressions": integrity,
            "errors": errors,
            "newcomer_impressions": newcomer,
            "meaningful_interactions": comments + shares,
        }
        iso = day.isoformat()
        for key, column in values.items():
            if keys is not None and key not in keys:
                continue
            rows.extend((surface.pk, units[j], iso, key, float(v)) for j, v in zip(idx, column, strict=True))

    for d in range(window_days):
        day = window_start + dt.timedelta(days=d)
        active = exposed_day <= d
        day_rows(day, active, treated, None)
    if pre_day is not None:
        # Units active before the experiment (most of them) have a pre-period of two days.
        had_pre = rng.random(n) < pre_coverage
        for back in (0, 1):
            day_rows(pre_day - dt.timedelta(days=back), had_pre, np.zeros(n, dtype=bool), PRE_KEYS)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {MetricObservation._meta.db_table} (surface_id, unit_id, day, metric, value) "
            "VALUES (%s, %s, %s, %s, %s)",
            rows,
        )

    try:
        latency_model = apps.get_model("serving", "LatencySample")
    except LookupError:
        latency_model = None
    if latency_model is not None and latency_per_unit_day:
        samples = []
        for d in range(window_days):
            day = window_start + dt.timedelta(days=d)
            for j in np.flatnonzero(exposed_day <= d):
                ms = rng.lognormal(np.log(80.0), 0.35, latency_per_unit_day)
                if treated[j]:
                    ms = ms + _k(effects, "extra_latency_ms", 0.0)
                for k, value in enumerate(ms):
                    samples.append(
                        {
                            "surface_id": surface.pk,
                            "request_id": f"{units[j]}-{d}-{k}",
                            "unit_id": units[j],
                            "arm": "treatment" if treated[j] else "control",
                            "population": pops[j],
                            "stack": assigned[j].stack,
                            "salt": allocation.salt,
                            "allocation_version": allocation.version,
                            "ts": dt.datetime.combine(day, dt.time(12, 0), tzinfo=dt.UTC),
                            "ms": float(value),
                        }
                    )
        fast_insert(latency_model, samples)
    return World(units, treated, pops, exposed_day)
