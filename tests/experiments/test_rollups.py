"""Analysis rollups (PostgreSQL): the same numbers as from the rows, and never a stale day used.

Each test compares an analysis that reads the rollup with one that reads every row (the rollup
deleted, or the plain query). To show the rollup is really what was read, some tests corrupt
its table on purpose: a used rollup then moves the result, an ignored one does not.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from experiments import aggregation
from tests.experiments.approx import assert_close
from tests.experiments.conftest import NOW, WINDOW_START
from tests.experiments.simworld import populate

PRE_DAY = WINDOW_START - dt.timedelta(days=3)
LAST_DAY = WINDOW_START + dt.timedelta(days=2)
# Folding at 06:00 on the last day: the two earlier window days and the pre-period are closed;
# the last day's rows are read from the metric table.
FOLD_NOW = dt.datetime.combine(LAST_DAY, dt.time(6), tzinfo=dt.UTC)
ANALYSE_NOW = dt.datetime.combine(LAST_DAY, dt.time(23), tzinfo=dt.UTC)

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def design(postgres: None, ramped: dict[str, Any]) -> Any:
    from experiments.services import experiment_create, metric_definitions_ensure_standard

    populate(
        surface=ramped["groups"],
        allocation=ramped["allocation"],
        n_units=1500,
        window_start=WINDOW_START,
        window_days=3,
        pre_day=PRE_DAY,
        arrival_days=3,
        latency_per_unit_day=0,
    )
    metric_definitions_ensure_standard()
    metrics = [
        {"metric": "time_spent", "role": "primary", "margin": 0.02, "cuped": True},
        {"metric": "likes", "role": "secondary", "margin": 0.05, "cuped": True},
        {"metric": "sessions", "role": "secondary", "margin": 0.05, "cuped": False},
        {
            "metric": "hide_report_rate",
            "role": "guardrail",
            "kind": "ratio",
            "numerator": "hides+reports",
            "denominator": "impressions",
            "direction": "lower",
            "margin": 0.05,
        },
        {
            "metric": "engagement_rate",
            "role": "secondary",
            "kind": "ratio",
            "numerator": "likes+comments+shares",
            "denominator": "impressions",
            "direction": "higher",
            "margin": 0.05,
            "cuped": True,
        },
    ]
    return experiment_create(
        surface=ramped["groups"],
        key="rollup-exp",
        treatment_stack=ramped["unified"],
        salt=ramped["allocation"].salt,
        window_start=WINDOW_START,
        window_end=LAST_DAY,
        pre_start=PRE_DAY - dt.timedelta(days=13),
        pre_end=PRE_DAY,
        metrics=metrics,
        actor="system:test",
        now=NOW,
        start=True,
    )


def _analyse(experiment: Any, now: dt.datetime = ANALYSE_NOW) -> Any:
    from django.db import transaction

    from experiments.services import experiment_analyze

    with transaction.atomic():
        return experiment_analyze(experiment=experiment, now=now)


def _from_rows(experiment: Any, now: dt.datetime = ANALYSE_NOW) -> Any:
    """The analysis with no rollup at all (deleted for the call, then put back)."""
    from django.db import transaction

    from experiments.models import AnalysisRollup

    with transaction.atomic():
        AnalysisRollup.objects.filter(experiment=experiment).delete()
        run = _analyse(experiment, now)
        transaction.set_rollback(True)
    return run


def _totals(run: Any) -> dict[tuple[str, str], dict[str, float]]:
    return aggregation.sum_rows(run.statistics)


def _raw_sum(totals: dict[str, float], key: str) -> float:
    """Σy from the shifted sums of one metric: Σ(y − K) + n·K."""
    return totals[f"{key}__sum"] + totals["n"] * totals[f"{key}__shift"]


def _corrupt(experiment: Any) -> None:
    """Add 1000 to every unit's first pivot column in the rollup table (a used rollup shows it)."""
    from django.db import connection

    from experiments.models import AnalysisRollup

    table = AnalysisRollup.objects.get(experiment=experiment).table_name
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET c0 = COALESCE(c0, 0) + 1000")


def test_analysis_through_a_rollup_equals_the_analysis_of_the_rows(design: Any) -> None:
    from experiments.models import AnalysisRollup
    from experiments.rollups import rollup_for_analysis, rollup_refresh

    result = rollup_refresh(experiment=design, now=FOLD_NOW)
    assert result is not None and result.reason == "new rollup"
    folded = set(result.folded_days)
    assert {WINDOW_START, WINDOW_START + dt.timedelta(days=1), PRE_DAY} <= folded
    assert max(folded) < LAST_DAY  # the last day is not closed yet
    rollup = AnalysisRollup.objects.get(experiment=design)
    assert set(rollup.folded) == {d.isoformat() for d in folded}
    assert rollup.units > 1000

    via_rollup, from_rows = _analyse(design), _from_rows(design)
    assert via_rollup.statistics and len(via_rollup.statistics) == len(from_rows.statistics)
    assert_close(_totals(via_rollup), _totals(from_rows))
    assert via_rollup.verdict == from_rows.verdict
    assert via_rollup.result["rollup_days"] == len(folded) and from_rows.result["rollup_days"] == 0

    # It really read the rollup: corrupting the rollup moves the result, by 1000 per unit read.
    from experiments.services import aggregate_spec

    spec = aggregate_spec(design, as_of=LAST_DAY)
    assert rollup_for_analysis(design, spec) is not None
    _corrupt(design)
    moved = _totals(_analyse(design))
    clean = _totals(from_rows)
    first = next(iter(aggregation.pivot_columns(spec)[0]))  # (key, period, agg) of column c0
    assert first == ("time_spent", "w", "sum")
    shift = sum(_raw_sum(moved[g], "time_spent") - _raw_sum(clean[g], "time_spent") for g in clean)
    from django.db import connection

    with connection.cursor() as cursor:  # analysed units that have a rollup row (rows on a folded day)
        cursor.execute(
            f"SELECT COUNT(*) FROM {rollup.table_name} r JOIN experiments_exposure e ON e.unit_id = r.unit_id "
            "AND e.surface_id = %s AND e.salt = %s AND e.arm IN ('control', 'treatment')",
            [design.surface_id, design.salt],
        )
        (with_rows,) = cursor.fetchone()
    assert with_rows > 1400
    assert shift == pytest.approx(1000 * with_rows, rel=1e-9)


def test_a_second_refresh_with_nothing_new_folds_nothing(design: Any) -> None:
    from experiments.rollups import rollup_refresh

    rollup_refresh(experiment=design, now=FOLD_NOW)
    again = rollup_refresh(experiment=design, now=FOLD_NOW)
    assert again is not None and again.folded_days == () and again.reason == "nothing new"
    # The next morning the last day is closed too: it alone is folded, into the same table.
    later = rollup_refresh(experiment=design, now=FOLD_NOW + dt.timedelta(days=1))
    assert later is not None and later.folded_days == (LAST_DAY,) and not later.rebuilt
    assert_close(_totals(_analyse(design)), _totals(_from_rows(design)))


@pytest.mark.django_db(transaction=True)
def test_a_late_row_on_a_folded_day_makes_the_analysis_read_the_rows(design: Any) -> None:
    from controlplane.serving.models import Exposure
    from experiments.models import MetricObservation
    from experiments.rollups import rollup_refresh

    rollup_refresh(experiment=design, now=FOLD_NOW)
    _corrupt(design)  # a rollup that is read from now on would show it
    unit = Exposure.objects.filter(surface_id=design.surface_id, arm="control").values_list(
        "unit_id", flat=True
    )[0]
    MetricObservation.objects.create(
        surface_id=design.surface_id, unit_id=unit, day=WINDOW_START, metric="time_spent", value=12345.0
    )
    late = _totals(_analyse(design))
    assert_close(late, _totals(_from_rows(design)))  # the corrupted rollup was ignored
    before = sum(v["time_spent__sum"] for v in _totals(_from_rows(design, ANALYSE_NOW)).values())
    assert before == pytest.approx(sum(v["time_spent__sum"] for v in late.values()), rel=1e-12)

    rebuilt = rollup_refresh(experiment=design, now=FOLD_NOW)
    assert rebuilt is not None and rebuilt.rebuilt and rebuilt.reason.startswith("rows changed on 2026-03-02")
    assert_close(_totals(_analyse(design)), _totals(_from_rows(design)))


def test_an_analysis_as_of_a_day_before_a_folded_day_reads_the_rows(design: Any) -> None:
    from experiments.rollups import rollup_for_analysis, rollup_refresh
    from experiments.services import aggregate_spec

    rollup_refresh(experiment=design, now=FOLD_NOW)
    assert rollup_for_analysis(design, aggregate_spec(design, as_of=WINDOW_START)) is None
    _corrupt(design)
    first_day = dt.datetime.combine(WINDOW_START, dt.time(23), tzinfo=dt.UTC)
    assert_close(_totals(_analyse(design, first_day)), _totals(_from_rows(design, first_day)))


def test_a_changed_design_is_not_read_from_the_old_rollup_and_rebuilds(design: Any) -> None:
    from experiments.models import Experiment
    from experiments.rollups import rollup_for_analysis, rollup_refresh
    from experiments.services import aggregate_spec

    rollup_refresh(experiment=design, now=FOLD_NOW)
    Experiment.objects.filter(pk=design.pk).update(pre_start=PRE_DAY - dt.timedelta(days=6))
    design.refresh_from_db()
    assert rollup_for_analysis(design, aggregate_spec(design, as_of=LAST_DAY)) is None
    result = rollup_refresh(experiment=design, now=FOLD_NOW)
    assert result is not None and result.rebuilt and result.reason == "design changed"
    assert_close(_totals(_analyse(design)), _totals(_from_rows(design)))


@pytest.mark.django_db(transaction=True)
def test_every_writing_transaction_of_a_day_is_recorded(postgres: None, seeded: dict[str, Any]) -> None:
    """COPY, bulk inserts, updates and deletes all count, once per transaction and day."""
    from django.db import connection, transaction

    from experiments.models import MetricDayWrite, MetricObservation

    surface = seeded["groups"].pk
    day = WINDOW_START + dt.timedelta(days=9)

    def writers() -> int:
        return MetricDayWrite.objects.filter(surface_id=surface, day=day).count()

    assert writers() == 0
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(
            "COPY experiments_metricobservation (surface_id, unit_id, day, metric, value) FROM STDIN"
        ) as copy,
    ):
        for i in range(5):
            copy.write_row((surface, f"c{i}", day, "likes", 1.0))
    assert writers() == 1
    MetricObservation.objects.bulk_create(
        [
            MetricObservation(surface_id=surface, unit_id=f"b{i}", day=day, metric="likes", value=1.0)
            for i in range(3)
        ]
    )
    assert writers() == 2
    MetricObservation.objects.filter(surface_id=surface, day=day, unit_id="b0").update(value=2.0)
    assert writers() == 3
    MetricObservation.objects.filter(surface_id=surface, day=day, unit_id__startswith="c").delete()
    assert writers() == 4
    with transaction.atomic():  # many statements, one transaction: one writer
        for i in range(50):
            MetricObservation.objects.create(
                surface_id=surface, unit_id=f"m{i}", day=day, metric="likes", value=1.0
            )
    assert writers() == 5
    with transaction.atomic():
        MetricObservation.objects.create(surface_id=surface, unit_id="x", day=day, metric="likes", value=1.0)
        transaction.set_rollback(True)
    assert writers() == 5  # a rolled-back write leaves no trace
    other = MetricDayWrite.objects.filter(surface_id=surface).exclude(day=day).count()
    assert other == 0


def test_proportions_fold_as_the_largest_value(postgres: None, populated_for_proportion: Any) -> None:
    """A MAX column (0/1 metric: "did it happen on any day") folds as the larger value, not the sum."""
    from django.db import connection

    from experiments import rollups

    spec: aggregation.AggregateSpec = populated_for_proportion
    names, _joined, _outputs = aggregation.pivot_columns(spec)
    table = "experiments_rollup_test_proportion"
    rollups._create_table(table, list(names.values()))
    folded = []
    for day in (WINDOW_START, WINDOW_START + dt.timedelta(days=1)):  # one day at a time: MAX combines
        rollups._fold(spec, table, [day], incremental=bool(folded))
        folded.append(day)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.day, COUNT(*) FROM experiments_metricdaywrite c WHERE c.surface_id = %s AND c.day IN (%s, %s) "
            "GROUP BY c.day",
            [spec.surface_id, *folded],
        )
        counters = tuple(sorted((d, int(n)) for d, n in cursor.fetchall()))
    via = aggregation.run_query(spec, connection, aggregation.RollupUse(table=table, folded=counters))
    plain = aggregation.run_query(spec, connection)
    assert_close(aggregation.sum_rows(via), aggregation.sum_rows(plain))
    totals = aggregation.sum_rows(plain)
    assert (
        sum(_raw_sum(t, "active") for t in totals.values()) == 2
    )  # u0 (active on both days) counts once, u1 once


@pytest.fixture
def populated_for_proportion(ramped: dict[str, Any]) -> aggregation.AggregateSpec:
    from controlplane.serving.models import Exposure
    from experiments.models import MetricObservation

    surface, allocation = ramped["groups"], ramped["allocation"]
    for unit, arm in (("u0", "treatment"), ("u1", "control"), ("u2", "control")):
        Exposure.objects.create(
            surface=surface,
            salt=allocation.salt,
            unit_id=unit,
            arm=arm,
            population="content_first",
            stack="s",
            allocation_version=allocation.version,
            first_exposed_at=dt.datetime.combine(WINDOW_START, dt.time(9), tzinfo=dt.UTC),
        )
    rows = [("u0", 0), ("u0", 1), ("u1", 1)]  # u0 active on both days, u1 on the second, u2 never
    MetricObservation.objects.bulk_create(
        MetricObservation(
            surface=surface, unit_id=u, day=WINDOW_START + dt.timedelta(days=d), metric="active", value=1.0
        )
        for u, d in rows
    )
    return aggregation.AggregateSpec(
        surface_id=surface.pk,
        salt=allocation.salt,
        window_start=WINDOW_START,
        window_end=WINDOW_START + dt.timedelta(days=2),
        metrics=(aggregation.AggregateMetric("active", "proportion"),),
    )


@pytest.mark.sqlite_path
def test_sqlite_analyses_from_the_rows(ramped: dict[str, Any], experiment: Any) -> None:
    from django.db import connection

    from experiments.rollups import rollup_refresh

    result = rollup_refresh(experiment=experiment, now=NOW + dt.timedelta(days=3))
    if connection.vendor == "sqlite":
        assert result is None
    else:
        assert result is not None


@pytest.mark.django_db(transaction=True)
def test_a_fold_skips_a_rollup_being_read_and_an_analysis_skips_one_being_folded(design: Any) -> None:
    """Neither waits for the other: a stuck analysis must not hang the fold, nor a fold the analyses."""
    import psycopg
    from django.db import connection

    from experiments.rollups import rollup_for_analysis, rollup_refresh
    from experiments.services import aggregate_spec

    rollup_refresh(experiment=design, now=FOLD_NOW)
    db = connection.settings_dict
    other = psycopg.connect(
        dbname=db["NAME"],
        user=db["USER"],
        password=db["PASSWORD"] or None,
        host=db["HOST"],
        port=db["PORT"] or None,
    )
    try:
        other.execute(
            "SELECT 1 FROM experiments_analysisrollup WHERE experiment_id = %s FOR SHARE", [design.pk]
        )
        busy = rollup_refresh(experiment=design, now=FOLD_NOW + dt.timedelta(days=1))
        assert busy is not None and busy.reason.startswith("busy") and busy.folded_days == ()
        other.rollback()
        other.execute(
            "SELECT 1 FROM experiments_analysisrollup WHERE experiment_id = %s FOR UPDATE", [design.pk]
        )
        from django.db import transaction

        with transaction.atomic():
            assert rollup_for_analysis(design, aggregate_spec(design, as_of=LAST_DAY)) is None
        other.rollback()
    finally:
        other.close()
    later = rollup_refresh(experiment=design, now=FOLD_NOW + dt.timedelta(days=1))
    assert later is not None and later.folded_days == (LAST_DAY,)
