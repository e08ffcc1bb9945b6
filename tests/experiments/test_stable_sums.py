"""Shifted sufficient statistics on the SQL paths, against an exact two-pass computation.

Values sit at offsets 1e6, 1e8 and 1e10 from zero with a spread of about 1 to 10 (issue #16:
raw one-pass sums gave a zero variance at 1e8 ± 1). Every path must give the moments a two-pass
computation gives, to 1e-6 relative:

- the in-database query (SQLite here, PostgreSQL under the README's test command);
- the warehouse path: the exported SQL text, its rows uploaded through ``validate_rows``;
- the per-experiment rollups (PostgreSQL): part of the days folded into a rollup table, the
  rest read from the rows.

The reference is exact: the same float64 per-unit values, as ``fractions.Fraction``, two-pass.
Units arrive on two days, so each arm's statistic is the SUM of per-day rows (partitions add).
"""

from __future__ import annotations

import datetime as dt
import itertools
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from experiments import aggregation, stats

pytestmark = [pytest.mark.django_db, pytest.mark.sqlite_path]

PRE_DAY = dt.date(2026, 2, 20)
DAY0 = dt.date(2026, 3, 2)
DAY1 = DAY0 + dt.timedelta(days=1)
OFFSETS = (1e6, 1e8, 1e10)
REL = 1e-6
_counter = itertools.count()

METRICS = (
    aggregation.AggregateMetric("time_spent", "mean", cuped=True),
    aggregation.AggregateMetric("likes_rate", "ratio", "likes", "impressions"),
)

noise = st.lists(st.floats(-10.0, 10.0, allow_nan=False, allow_subnormal=False), min_size=8, max_size=30)


def _populate(
    surface: Any, offset: float, ys: list[float], xs: list[float], split_days: bool
) -> dict[str, Any]:
    """One unit per value; arms alternate; first exposures on two days; per-unit values as stored."""
    from controlplane.serving.models import Exposure
    from experiments.models import MetricObservation

    tag = next(_counter)
    salt = f"stable-{tag}"
    units: dict[str, dict[str, list[float]]] = {"control": {}, "treatment": {}}
    exposures, rows = [], []
    for i, (y, x) in enumerate(zip(ys, xs, strict=False)):
        arm = "control" if i % 2 == 0 else "treatment"
        unit = f"s{tag}-{i:04d}"
        first = dt.datetime.combine(DAY0 if i % 3 else DAY1, dt.time(9), tzinfo=dt.UTC)
        exposures.append(
            Exposure(
                surface=surface,
                salt=salt,
                unit_id=unit,
                arm=arm,
                population="content_first",
                stack="s",
                allocation_version=1,
                first_exposed_at=first,
            )
        )
        yv, xv = offset + y, offset + x
        num, den = offset + 2.0 * y - x, offset + x
        if split_days:
            # Two days per unit: the unit's value is v0 + v1 (IEEE addition commutes, so every
            # path that adds the two days gets the same float).
            y0, y1 = offset / 2.0, yv - offset / 2.0
            rows += [(unit, DAY0, "time_spent", y0), (unit, DAY1, "time_spent", y1)]
            yv = y0 + y1
        else:
            rows.append((unit, DAY0, "time_spent", yv))
        rows += [
            (unit, PRE_DAY, "time_spent", xv),
            (unit, DAY0, "likes", num),
            (unit, DAY0, "impressions", den),
        ]
        units[arm].setdefault("y", []).append(yv)
        units[arm].setdefault("x", []).append(xv)
        units[arm].setdefault("num", []).append(num)
        units[arm].setdefault("den", []).append(den)
    Exposure.objects.bulk_create(exposures)
    MetricObservation.objects.bulk_create(
        MetricObservation(surface=surface, unit_id=u, day=d, metric=m, value=v) for u, d, m, v in rows
    )
    spec = aggregation.AggregateSpec(
        surface_id=surface.pk,
        salt=salt,
        window_start=DAY0,
        window_end=DAY1,
        pre_start=PRE_DAY,
        pre_end=PRE_DAY,
        metrics=METRICS,
    )
    return {"spec": spec, "units": units}


def _exact(values: list[float]) -> tuple[Fraction, Fraction, Fraction]:
    """(mean, s² with ddof 1, m₃) of floats, exactly, two-pass."""
    v = [Fraction(a) for a in values]
    n = len(v)
    mean = sum(v, Fraction(0)) / n
    d = [a - mean for a in v]
    return mean, sum((a * a for a in d), Fraction(0)) / (n - 1), sum((a**3 for a in d), Fraction(0)) / n


def _exact_cov(xs: list[float], ys: list[float]) -> Fraction:
    x = [Fraction(a) for a in xs]
    y = [Fraction(a) for a in ys]
    n = len(x)
    mx, my = sum(x, Fraction(0)) / n, sum(y, Fraction(0)) / n
    return sum(((a - mx) * (b - my) for a, b in zip(x, y, strict=True)), Fraction(0)) / (n - 1)


def _close(got: float | None, want: Fraction, scale: Fraction | None = None) -> None:
    """Relative 1e-6 (of ``scale`` where the quantity itself may be ~0, like a covariance)."""
    assert got is not None
    ref = float(want)
    tol = REL * float(abs(scale if scale is not None else want)) + 1e-300
    assert abs(got - ref) <= tol, (got, ref)


def _check(totals: dict[tuple[str, str], dict[str, Any]], units: dict[str, dict[str, list[float]]]) -> None:
    for arm, ref in units.items():
        row = totals[(arm, "content_first")]
        mean_stat = stats.CovariateMeanStatistic.from_row(aggregation.metric_row(row, METRICS[0]))
        assert mean_stat.problem is None
        mean, var, m3 = _exact(ref["y"])
        x_mean, x_var, _ = _exact(ref["x"])
        _close(mean_stat.mean, mean)
        _close(mean_stat.variance, var)
        _close(mean_stat.x_mean, x_mean)
        _close(mean_stat.x_variance, x_var)
        _close(
            mean_stat.covariance, _exact_cov(ref["x"], ref["y"]), scale=(var * x_var) ** 0.5 if var else None
        )
        m2 = var * (len(ref["y"]) - 1) / len(ref["y"])
        skew = float(m3) / float(m2) ** 1.5
        assert mean_stat.skewness == pytest.approx(skew, rel=REL, abs=REL)
        ratio = stats.RatioStatistic.from_row(aggregation.metric_row(row, METRICS[1]))
        assert ratio.problem is None
        num, den = ref["num"], ref["den"]
        r = Fraction(sum(Fraction(a) for a in num)) / sum(Fraction(a) for a in den)
        d_bar = sum(Fraction(a) for a in den) / len(den)
        influence = [(Fraction(a) - r * Fraction(b)) / d_bar for a, b in zip(num, den, strict=True)]
        _close(ratio.ratio, r)
        _close(ratio.variance, _var_exact(influence))


def _var_exact(values: list[Fraction]) -> Fraction:
    n = len(values)
    mean = sum(values, Fraction(0)) / n
    return sum(((a - mean) ** 2 for a in values), Fraction(0)) / (n - 1)


def _spread_ok(ys: list[float], xs: list[float]) -> bool:
    n = min(len(ys), len(xs))
    return n >= 8 and all(float(np.ptp(np.asarray(v[:n][i::2]))) > 0.5 for v in (ys, xs) for i in (0, 1))


@pytest.mark.parametrize("offset", OFFSETS)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ys=noise, xs=noise)
def test_in_database_sums_are_stable(
    seeded: dict[str, Any], offset: float, ys: list[float], xs: list[float]
) -> None:
    from django.db import connection

    assume(_spread_ok(ys, xs))
    data = _populate(seeded["groups"], offset, ys, xs, split_days=False)
    rows = aggregation.run_query(data["spec"], connection)
    assert len({r["day"] for r in rows}) == 2  # two partitions per arm, added
    _check(aggregation.sum_rows(rows), data["units"])


@pytest.mark.parametrize("offset", OFFSETS)
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ys=noise, xs=noise)
def test_warehouse_sql_and_upload_are_stable(
    seeded: dict[str, Any], offset: float, ys: list[float], xs: list[float]
) -> None:
    from django.db import connection

    assume(_spread_ok(ys, xs))
    data = _populate(seeded["groups"], offset, ys, xs, split_days=False)
    sql, params = aggregation.build_query(data["spec"])
    with connection.cursor() as cursor:  # what a warehouse runs: the plain text
        cursor.execute(aggregation.render_sql(sql, params))
        names = [c[0] for c in cursor.description]
        raw = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    # The upload: JSON numbers as a client sends them, one row per arm × day.
    uploaded = [
        {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in aggregation.normalise_row(r).items()}
        for r in raw
    ]
    clean, errors = aggregation.validate_rows(uploaded, METRICS)
    assert errors == {}
    _check(aggregation.sum_rows(clean), data["units"])


def test_uploads_with_different_shifts_still_add() -> None:
    # Two warehouse batches computed about different K (e.g. run on different days) add exactly.
    rng = np.random.default_rng(5)
    y = 1e10 + rng.normal(0, 1, 200)
    a, b = y[:120], y[120:]
    rows = []
    for part, k in ((a, float(a[0])), (b, float(b[3]))):
        d = part - k
        rows.append(
            {
                "arm": "control",
                "population": "p",
                "day": "2026-03-02",
                "allocation_version": 1,
                "n": len(part),
                "m__sum": float(d.sum()),
                "m__sum_squares": float(d @ d),
                "m__sum_cubes": float((d * d) @ d),
                "m__shift": k,
            }
        )
    metric = aggregation.AggregateMetric("m", "mean")
    clean, errors = aggregation.validate_rows(rows, [metric])
    assert errors == {}
    total = stats.MeanStatistic.from_row(
        aggregation.metric_row(aggregation.sum_rows(clean)[("control", "p")], metric)
    )
    assert total.n == 200
    assert total.variance == pytest.approx(float(_exact(list(y))[1]), rel=1e-9)
    assert total.mean == pytest.approx(float(_exact(list(y))[0]), rel=1e-15)


@pytest.mark.parametrize("offset", OFFSETS)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ys=noise, xs=noise)
def test_rollup_sums_are_stable(
    postgres: None, seeded: dict[str, Any], offset: float, ys: list[float], xs: list[float]
) -> None:
    """Day 0 and the pre-period folded into a rollup table, day 1 read from the rows."""
    from django.db import connection

    from experiments import rollups

    assume(_spread_ok(ys, xs))
    data = _populate(seeded["groups"], offset, ys, xs, split_days=True)
    spec = data["spec"]
    table = f"experiments_stable_rollup_{next(_counter)}"
    names, _joined, _outputs = aggregation.pivot_columns(spec)
    rollups._create_table(table, list(names.values()))
    folded = [PRE_DAY, DAY0]
    fold_sql, fold_params = aggregation.build_fold(spec, table, folded, incremental=False)
    with connection.cursor() as cursor:
        cursor.execute(fold_sql, fold_params)
    use = aggregation.RollupUse(table, tuple((d, 0) for d in folded))
    via_rollup = aggregation.run_query(spec, connection, use)
    _check(aggregation.sum_rows(via_rollup), data["units"])
    rollups.drop_table(table)
