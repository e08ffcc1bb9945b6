"""Pre-registered capping (issue #16): winsorise a skewed mean metric at a quantile computed in SQL.

The cap is ``percentile_disc(q)`` of the control arm's per-unit values, or of every unit's
pre-period values, pinned to numpy's ``quantile(method="inverted_cdf")``; every unit's value (and
its covariate) is then min(value, cap) before the shifted sums. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pytest

from experiments import aggregation, stats
from tests.experiments.test_stable_sums import DAY0, PRE_DAY, _populate

pytestmark = [pytest.mark.django_db, pytest.mark.sqlite_path]


def _spec(data: dict[str, Any], q: float, source: str, *, cuped: bool) -> aggregation.AggregateSpec:
    spec = data["spec"]
    metric = aggregation.AggregateMetric("time_spent", "mean", cuped=cuped, cap_quantile=q, cap_source=source)
    return aggregation.AggregateSpec(
        surface_id=spec.surface_id,
        salt=spec.salt,
        window_start=spec.window_start,
        window_end=spec.window_end,
        pre_start=spec.pre_start,
        pre_end=spec.pre_end,
        metrics=(metric,),
    )


@pytest.mark.parametrize(
    ("source", "cuped"), [("control", True), ("control", False), ("pre", False), ("pre", True)]
)
def test_capping_winsorises_at_a_quantile_computed_in_sql(
    seeded: dict[str, Any], source: str, cuped: bool
) -> None:
    from django.db import connection

    rng = np.random.default_rng(12)
    n = 301
    ys = list(np.where(rng.random(n) < 0.7, 0.0, rng.lognormal(2.0, 1.5, n)))
    xs = list(rng.lognormal(2.0, 1.5, n))
    data = _populate(seeded["groups"], 0.0, ys, xs, split_days=False)
    q = 0.95
    spec = _spec(data, q, source, cuped=cuped)
    rows = aggregation.run_query(spec, connection)
    totals = aggregation.sum_rows(rows)
    units = data["units"]
    basis = units["control"]["y"] if source == "control" else units["control"]["x"] + units["treatment"]["x"]
    cap = float(np.quantile(np.asarray(basis), q, method="inverted_cdf"))  # = percentile_disc
    metric = spec.metrics[0]
    for arm in ("control", "treatment"):
        got_row = aggregation.metric_row(totals[(arm, "content_first")], metric)
        assert got_row["cap"] == pytest.approx(cap, rel=1e-12)
        y = np.minimum(np.asarray(units[arm]["y"]), cap)
        cls = stats.CovariateMeanStatistic if cuped else stats.MeanStatistic
        got = cls.from_row(got_row)
        assert got.mean == pytest.approx(y.mean(), rel=1e-9)
        assert got.variance == pytest.approx(y.var(ddof=1), rel=1e-9)
        if cuped:
            x = np.minimum(np.asarray(units[arm]["x"]), cap)
            assert got.x_mean == pytest.approx(x.mean(), rel=1e-9)
            assert got.covariance == pytest.approx(np.cov(x, y, ddof=1)[0, 1], rel=1e-9, abs=1e-9)
    # The same text runs as exported for a warehouse.
    sql, params = aggregation.build_query(spec)
    with connection.cursor() as cursor:
        cursor.execute(aggregation.render_sql(sql, params))
        assert len(cursor.fetchall()) == len(rows)


def test_capped_metric_in_the_analysis_and_readout(seeded: dict[str, Any]) -> None:
    from django.db import connection

    from experiments import analysis
    from experiments.outcome import analysis_outcome

    rng = np.random.default_rng(3)
    ys = list(np.where(rng.random(200) < 0.7, 0.0, rng.lognormal(2.0, 1.5, 200)))
    data = _populate(seeded["groups"], 0.0, ys, list(rng.normal(5, 1, 200)), split_days=False)
    design = analysis.Design(
        alpha=0.05,
        power=0.8,
        sequential=False,
        metrics=(
            analysis.MetricDesign(
                "time_spent", "Time", "primary", "mean", "higher", "relative", 0.05, cap_quantile=0.9
            ),
        ),
        populations={"content_first": 1.0},
        splits={1: analysis.AllocationSplit(1, 5000, 0)},
    )
    spec = data["spec"]
    agg_spec = aggregation.AggregateSpec(
        spec.surface_id, spec.salt, spec.window_start, spec.window_end, design.aggregate_metrics(),
        PRE_DAY, PRE_DAY,
    )  # fmt: skip
    rows = aggregation.run_query(agg_spec, connection)
    result = analysis.analyze(
        design, analysis.Inputs(rows=rows, as_of=DAY0 + dt.timedelta(days=1)), computed_at="t"
    )
    entry = next(m for m in result.metrics if m.population == "content_first")
    cap = float(np.quantile(np.asarray(data["units"]["control"]["y"]), 0.9, method="inverted_cdf"))
    assert entry.capping is not None
    assert (entry.capping.quantile, entry.capping.source) == (0.9, "control")
    assert entry.capping.cap == pytest.approx(cap)
    assert entry.capping.note == f"capped at the 0.9 quantile of the control arm = {cap:.6g}"
    # The stored outcome keeps it, and the one adapter reads it back.
    stored = analysis_outcome(result.to_dict())
    assert stored is not None and stored.metrics[result.metrics.index(entry)].capping == entry.capping
    c = np.minimum(np.asarray(data["units"]["control"]["y"]), cap)
    assert entry.control_mean == pytest.approx(c.mean(), rel=1e-9)


def test_design_validates_the_capping_option(seeded: dict[str, Any]) -> None:
    from controlplane.core.errors import ApplicationError
    from experiments.services import _validate_metrics

    good = _validate_metrics(
        [{"metric": "time_spent", "role": "primary", "cap_quantile": 0.99, "cap_source": "pre"}]
    )
    assert (good[0]["cap_quantile"], good[0]["cap_source"]) == (0.99, "pre")
    for bad, field in (
        ({"cap_quantile": 1.5}, "cap_quantile"),
        ({"cap_quantile": "high"}, "cap_quantile"),
        ({"cap_source": "treatment", "cap_quantile": 0.99}, "cap_source"),
    ):
        with pytest.raises(ApplicationError) as err:
            _validate_metrics([{"metric": "time_spent", "role": "primary", **bad}])
        assert field in str(err.value)
