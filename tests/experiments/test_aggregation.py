"""The in-database aggregate query: pinned to per-unit sums computed in Python from the same rows.

Runs on SQLite (sqlite_path) and on PostgreSQL under the README's test command.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
import scipy.stats

from experiments import aggregation
from tests.experiments.approx import assert_close
from tests.experiments.conftest import NOW, WINDOW_START
from tests.experiments.simworld import populate

pytestmark = [pytest.mark.django_db, pytest.mark.sqlite_path]

PRE_DAY = WINDOW_START - dt.timedelta(days=3)


def _per_unit(surface_id: int, start: dt.date, end: dt.date) -> dict[str, dict[str, float]]:
    """Σ value per unit and metric over [start, end], straight from the rows (no SQL aggregation)."""
    from experiments.models import MetricObservation

    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for unit, metric, value in MetricObservation.objects.filter(
        surface_id=surface_id, day__gte=start, day__lte=end
    ).values_list("unit_id", "metric", "value"):
        sums[unit][metric] += value
    return sums


def _reference(ramped: dict[str, Any], as_of: dt.date) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """Per (arm, population): per-unit arrays of window and pre-period sums (zeros when no rows)."""
    from controlplane.serving.models import Exposure

    window = _per_unit(ramped["groups"].pk, WINDOW_START, as_of)
    pre = _per_unit(ramped["groups"].pk, PRE_DAY - dt.timedelta(days=13), PRE_DAY)
    arrays: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for unit, arm, pop in Exposure.objects.filter(
        surface=ramped["groups"], arm__in=["control", "treatment"]
    ).values_list("unit_id", "arm", "population"):
        w, p = window.get(unit, {}), pre.get(unit, {})
        a = arrays[(arm, pop)]
        for key in ("time_spent", "likes", "impressions", "comments", "shares", "hides", "reports"):
            a[key].append(w.get(key, 0.0))
        a["pre_time_spent"].append(p.get("time_spent", 0.0))
        a["pre_likes"].append(p.get("likes", 0.0))
    return {k: {m: np.asarray(v) for m, v in d.items()} for k, d in arrays.items()}


@pytest.fixture
def populated(ramped: dict[str, Any]) -> dict[str, Any]:
    populate(
        surface=ramped["groups"],
        allocation=ramped["allocation"],
        n_units=1200,
        window_start=WINDOW_START,
        window_days=3,
        pre_day=PRE_DAY,
        arrival_days=3,
        latency_per_unit_day=0,
    )
    # Units exposed but without any metric row count as zeros.
    from controlplane.serving.models import Exposure

    Exposure.objects.create(
        surface=ramped["groups"],
        salt=ramped["allocation"].salt,
        unit_id="silent-1",
        arm="treatment",
        population="content_first",
        stack="unified-mtl@1",
        allocation_version=ramped["allocation"].version,
        first_exposed_at=dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC),
    )
    return ramped


def _spec(ramped: dict[str, Any], as_of: dt.date) -> aggregation.AggregateSpec:
    return aggregation.AggregateSpec(
        surface_id=ramped["groups"].pk,
        salt=ramped["allocation"].salt,
        window_start=WINDOW_START,
        window_end=as_of,
        pre_start=PRE_DAY - dt.timedelta(days=13),
        pre_end=PRE_DAY,
        metrics=(
            aggregation.AggregateMetric("time_spent", "mean", cuped=True),
            aggregation.AggregateMetric("likes", "mean", cuped=True),
            aggregation.AggregateMetric("hide_report_rate", "ratio", "hides+reports", "impressions"),
            aggregation.AggregateMetric(
                "engagement_rate", "ratio", "likes+comments+shares", "impressions", cuped=True
            ),
        ),
    )


def test_sufficient_statistics_match_per_unit_sums(populated: dict[str, Any]) -> None:
    from django.db import connection

    as_of = WINDOW_START + dt.timedelta(days=2)
    rows = aggregation.run_query(_spec(populated, as_of), connection)
    totals = aggregation.sum_rows(rows)
    reference = _reference(populated, as_of)
    assert set(totals) == set(reference)
    for group, ref in reference.items():
        got = totals[group]
        # Sums about the query's shifts K (one unit's values): Σ(y − K), Σ(y − K)², …
        y = ref["time_spent"] - got["time_spent__shift"]
        x = ref["pre_time_spent"] - got["time_spent__x_shift"]
        assert got["n"] == len(y)
        assert got["time_spent__sum"] == pytest.approx(y.sum(), rel=1e-9, abs=1e-9)
        assert got["time_spent__sum_squares"] == pytest.approx((y * y).sum(), rel=1e-9)
        assert got["time_spent__sum_cubes"] == pytest.approx((y * y * y).sum(), rel=1e-9, abs=1e-9)
        assert got["time_spent__x_sum"] == pytest.approx(x.sum(), rel=1e-9, abs=1e-9)
        assert got["time_spent__x_sum_squares"] == pytest.approx((x * x).sum(), rel=1e-9)
        assert got["time_spent__xy_sum"] == pytest.approx((x * y).sum(), rel=1e-9, abs=1e-9)
        num = ref["hides"] + ref["reports"] - got["hide_report_rate__num_shift"]
        den = ref["impressions"] - got["hide_report_rate__den_shift"]
        assert got["hide_report_rate__num_sum"] == pytest.approx(num.sum(), rel=1e-9, abs=1e-9)
        assert got["hide_report_rate__num_sum_squares"] == pytest.approx((num * num).sum(), rel=1e-9)
        assert got["hide_report_rate__den_sum_squares"] == pytest.approx((den * den).sum(), rel=1e-9)
        assert got["hide_report_rate__num_den_sum"] == pytest.approx((num * den).sum(), rel=1e-9)
    # The silent unit is counted (n includes it) with zeros.
    assert totals[("treatment", "content_first")]["n"] == len(
        reference[("treatment", "content_first")]["time_spent"]
    )


def test_per_day_rows_add_and_respect_as_of(populated: dict[str, Any]) -> None:
    """Rows are per first-exposure day: disjoint units, so they add; later cohorts drop out before they exist."""
    from django.db import connection

    from controlplane.serving.models import Exposure

    full = aggregation.run_query(_spec(populated, WINDOW_START + dt.timedelta(days=2)), connection)
    days = {r["day"] for r in full}
    assert len(days) == 3
    n_by_day = defaultdict(int)
    for r in full:
        n_by_day[r["day"]] += r["n"]
    for day, n in n_by_day.items():
        expected = Exposure.objects.filter(
            surface=populated["groups"],
            arm__in=["control", "treatment"],
            first_exposed_at__date=dt.date.fromisoformat(day),
        ).count()
        assert n == expected
    first_day_only = aggregation.run_query(_spec(populated, WINDOW_START), connection)
    assert {r["day"] for r in first_day_only} == {WINDOW_START.isoformat()}


def test_analysis_matches_scipy_on_the_raw_units(populated: dict[str, Any]) -> None:
    """The engine's Welch result from SQL sums equals scipy on per-unit values (CUPED pinned by hand)."""
    from experiments import analysis

    as_of = WINDOW_START + dt.timedelta(days=2)
    design = analysis.Design(
        alpha=0.05,
        power=0.8,
        sequential=False,
        metrics=(
            analysis.MetricDesign("likes", "Likes", "secondary", "mean", "higher", cuped=False),
            analysis.MetricDesign(
                "time_spent", "Time", "primary", "mean", "higher", "relative", 0.02, cuped=True
            ),
        ),
        populations={"content_first": 6000, "interest_first": 4000},
        splits={
            populated["allocation"].version: analysis.AllocationSplit(
                populated["allocation"].version, 5000, 0
            )
        },
    )
    from django.db import connection

    spec = aggregation.AggregateSpec(
        surface_id=populated["groups"].pk,
        salt=populated["allocation"].salt,
        window_start=WINDOW_START,
        window_end=as_of,
        pre_start=PRE_DAY - dt.timedelta(days=13),
        pre_end=PRE_DAY,
        metrics=design.aggregate_metrics(),
    )
    rows = aggregation.run_query(spec, connection)
    result = analysis.analyze(
        design, analysis.Inputs(rows=rows, as_of=as_of), computed_at=NOW.isoformat()
    ).to_dict()
    reference = _reference(populated, as_of)
    by = {(m["metric"], m["population"]): m for m in result["metrics"]}
    for pop in ("content_first", "interest_first"):
        c, t = reference[("control", pop)], reference[("treatment", pop)]
        ref = scipy.stats.ttest_ind(t["likes"], c["likes"], equal_var=False)
        got = by[("likes", pop)]
        assert got["diff"] == pytest.approx(t["likes"].mean() - c["likes"].mean(), rel=1e-9)
        assert got["p_value"] == pytest.approx(ref.pvalue, rel=1e-6)
        # CUPED: θ pooled over both arms, adjusted per-unit values, then Welch (Deng et al. 2013).
        y = np.concatenate([c["time_spent"], t["time_spent"]])
        x = np.concatenate([c["pre_time_spent"], t["pre_time_spent"]])
        theta = np.cov(x, y, ddof=1)[0, 1] / np.var(x, ddof=1)
        adj_c = c["time_spent"] - theta * (c["pre_time_spent"] - x.mean())
        adj_t = t["time_spent"] - theta * (t["pre_time_spent"] - x.mean())
        ref = scipy.stats.ttest_ind(adj_t, adj_c, equal_var=False)
        got = by[("time_spent", pop)]
        assert got["diff"] == pytest.approx(adj_t.mean() - adj_c.mean(), rel=1e-7)
        assert got["p_value"] == pytest.approx(ref.pvalue, rel=1e-5)
        assert got["variance_reduction"] > 0.1  # the pre-period explains part of the variance
        # Issue #16: each arm's skewness (from the SQL Σ(y−K)³) and the Kohavi rule n > 355·s².
        for key in ("likes", "time_spent"):
            got = by[(key, pop)]
            for arm, ref_arm in (("control", c), ("treatment", t)):
                assert got["skewness"][arm] == pytest.approx(scipy.stats.skew(ref_arm[key]), rel=1e-9)
            need = max(int(355 * scipy.stats.skew(ref_arm[key]) ** 2) + 1 for ref_arm in (c, t))
            assert got["skew_rule"]["need"] == need
            assert got["skew_rule"]["holds"] == all(
                len(ref_arm[key]) > 355 * scipy.stats.skew(ref_arm[key]) ** 2 for ref_arm in (c, t)
            )
            if not got["skew_rule"]["holds"]:
                assert got["skew_rule"]["message"].startswith("too few units for a skewed metric: need ")
    # Pooled: each arm's statistics summed over the populations.
    pooled_c = np.concatenate(
        [reference[("control", p)]["likes"] for p in ("content_first", "interest_first")]
    )
    assert by[("likes", "pooled")]["skewness"]["control"] == pytest.approx(
        scipy.stats.skew(pooled_c), rel=1e-9
    )
    # Pooled = stratified by the configured population shares (60/40).
    pooled = by[("likes", "pooled")]
    expected = 0.6 * by[("likes", "content_first")]["diff"] + 0.4 * by[("likes", "interest_first")]["diff"]
    assert pooled["diff"] == pytest.approx(expected, rel=1e-9)


def test_exported_sql_is_plain_and_runs_unchanged(populated: dict[str, Any]) -> None:
    from django.db import connection

    spec = _spec(populated, WINDOW_START + dt.timedelta(days=2))
    sql, params = aggregation.build_query(spec)
    text = aggregation.render_sql(sql, params)
    assert "%s" not in text and f"'{populated['allocation'].salt}'" in text
    with connection.cursor() as cursor:
        cursor.execute(text)
        names = [c[0] for c in cursor.description]
        exported = [aggregation.normalise_row(dict(zip(names, r, strict=True))) for r in cursor.fetchall()]
    # Identical up to the summation order of a parallel aggregate.
    assert_close(exported, aggregation.run_query(spec, connection))


def test_literals_are_escaped() -> None:
    text = aggregation.render_sql("SELECT %s, %s, %s", ["o'hara", dt.date(2026, 1, 2), 3])
    assert text == "SELECT 'o''hara', '2026-01-02', 3"
    with pytest.raises(ValueError):
        aggregation.render_sql("SELECT %s", [])
    with pytest.raises(ValueError):
        aggregation.build_query(
            aggregation.AggregateSpec(
                1,
                "s",
                WINDOW_START,
                WINDOW_START,
                (aggregation.AggregateMetric("a", "mean"),),
                exposure_table="x; DROP TABLE y",
            )
        )
