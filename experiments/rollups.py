"""Analysis rollups: each unit's pivoted metric totals over the closed days, folded once.

Why. The in-database analysis (experiments/aggregation.py) pivots every metric row of the window
and the pre-period into per-unit values, on every run: for 20 metrics it evaluates a conditional
aggregate per pivot column per row, about ten times the cost of one plain scan of those rows. The
runbook sweeper analyses every running ramp every few minutes, over the same closed days again and
again. Per-unit sums add over days, so a closed day only needs pivoting once: a rollup keeps, per
experiment, one row per unit with its totals over the days folded so far, and each analysis reads
that table plus the rows of the days not folded yet (today, typically), in one query.

Exactness. A rollup may be used only while the days it folded still hold exactly the rows it
folded. PostgreSQL triggers record, per (surface, day), every transaction that writes metric rows
of that day, in that transaction (migration 0005, :class:`~experiments.models.MetricDayWrite`);
the number of writers of a day only grows. A fold records each day's number of writers *in the
same statement snapshot* as the rows it reads. An analysis compares the numbers again before it
reads the rollup and, if any folded day has changed (a late batch, a correction, a delete), reads every row, exactly as without a rollup; the
next fold then rebuilds it. (The check and the aggregate query are two statements of one READ
COMMITTED transaction: a batch for a folded day that commits between them is read by the next
analysis, as is any batch committing just after an analysis.) A fold and an analysis of the same
experiment exclude each other through the rollup's row lock, and neither waits for the other: an
analysis skips a rollup being folded (it reads the rows), a fold skips a rollup being read (the
next refresh folds).

What is folded: closed days only (before the fold's ``now``), within the window (and its end, if
set) or the pre-period; a day after an analysis's as-of day makes the rollup unusable for that
analysis (it would count the later day), which then reads the rows. The design (metrics, window,
pre-period) is in the rollup's signature: a changed design rebuilds it.

PostgreSQL only. SQLite (the embedded default) has no triggers here and analyses from the rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone

from experiments import aggregation
from experiments.models import AnalysisRollup, Experiment, MetricDayWrite

TABLE_PREFIX = "experiments_rollup_"


@dataclass(frozen=True, slots=True)
class FoldResult:
    """What one :func:`rollup_refresh` did."""

    folded_days: tuple[dt.date, ...]  # newly folded (all of them on a rebuild)
    rebuilt: bool
    reason: str
    units: int
    seconds: float


def supported() -> bool:
    return connection.vendor == "postgresql"


def _signature(spec: aggregation.AggregateSpec, experiment: Experiment) -> str:
    names, _joined, _outputs = aggregation.pivot_columns(spec)
    doc = {
        "surface": spec.surface_id,
        "window": [
            experiment.window_start.isoformat(),
            experiment.window_end and experiment.window_end.isoformat(),
        ],
        "pre": [spec.pre_start and spec.pre_start.isoformat(), spec.pre_end and spec.pre_end.isoformat()],
        "columns": [[*ident, col] for ident, col in names.items()],
        "tables": [spec.metric_table, aggregation.COUNTER_TABLE],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _fold_spec(experiment: Experiment, last_day: dt.date) -> aggregation.AggregateSpec:
    """The experiment's aggregate spec with the window cut at ``last_day`` (what a fold may hold)."""
    from experiments.services import aggregate_spec  # services imports this module

    return aggregate_spec(experiment, as_of=max(experiment.window_start, last_day))


def _candidate_days(
    experiment: Experiment, spec: aggregation.AggregateSpec, last_closed: dt.date
) -> list[dt.date]:
    """Closed days with metric rows on the surface, inside the window (≤ its end) or the pre-period."""
    window_hi = min(experiment.window_end or last_closed, last_closed)
    days = MetricDayWrite.objects.filter(surface_id=experiment.surface_id, day__lte=last_closed).distinct()
    in_window = days.filter(day__gte=experiment.window_start, day__lte=window_hi)
    found = set(in_window.values_list("day", flat=True)) if window_hi >= experiment.window_start else set()
    if spec.has_pre and spec.pre_start and spec.pre_end:
        found |= set(
            days.filter(day__gte=spec.pre_start, day__lte=spec.pre_end).values_list("day", flat=True)
        )
    return sorted(found)


def drop_table(table: str) -> None:
    if supported():
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {aggregation._check_table(table)}")


def _create_table(table: str, columns: list[str]) -> None:
    drop_table(table)
    cols = ", ".join(f"{c} double precision" for c in columns)
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE {aggregation._check_table(table)} (unit_id varchar(128) PRIMARY KEY, {cols})"
        )


def _fold(
    spec: aggregation.AggregateSpec, table: str, days: list[dt.date], *, incremental: bool
) -> dict[str, int]:
    """Fold ``days`` into ``table``; returns each day's number of writers as that statement saw it.

    One statement: the writers are counted in the snapshot of the rows folded (a data-modifying CTE
    and the query around it share one snapshot, and PostgreSQL runs the CTE to completion whether
    or not the query reads it), so a batch committed meanwhile is either in both or in neither.
    """
    fold_sql, fold_params = aggregation.build_fold(spec, table, days, incremental=incremental)
    marks = ", ".join(["%s::date"] * len(days))
    sql = (
        f"WITH folded AS (\n{fold_sql}\n)\n"
        f"SELECT c.day, COUNT(*) FROM {aggregation.COUNTER_TABLE} c\n"
        f"WHERE c.surface_id = %s AND c.day IN ({marks}) GROUP BY c.day"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*fold_params, spec.surface_id, *[d.isoformat() for d in days]])
        seen = {row[0].isoformat(): int(row[1]) for row in cursor.fetchall()}
    # Every candidate day had a writer when it was picked, and writers are never removed.
    return {d.isoformat(): seen.get(d.isoformat(), 0) for d in days}


def _stale_days(surface_id: int, folded: dict[str, int]) -> list[str]:
    if not folded:
        return []
    current = dict(
        MetricDayWrite.objects.filter(surface_id=surface_id, day__in=list(folded))
        .values("day")
        .annotate(writers=Count("id"))
        .values_list("day", "writers")
    )
    return sorted(d for d, writers in folded.items() if current.get(dt.date.fromisoformat(d), 0) != writers)


def rollup_refresh(*, experiment: Experiment, now: dt.datetime | None = None) -> FoldResult | None:
    """Fold the experiment's closed days not folded yet; rebuild when a folded day changed.

    Idempotent: with nothing new it counts the writers of the folded days and returns. Returns
    None where rollups do not apply (not PostgreSQL, a draft, no additive metrics). Safe to call
    concurrently: while another fold or an analysis holds the rollup's row it returns at once
    ("busy") and the next call folds.
    """
    if not supported():
        return None
    now = now or timezone.now()
    experiment = Experiment.objects.get(pk=experiment.pk)
    if experiment.status == Experiment.Status.DRAFT:
        return None
    started = time.perf_counter()
    last_closed = now.date() - dt.timedelta(days=1)
    spec = _fold_spec(experiment, last_closed)
    if not spec.metrics:
        return None
    signature = _signature(spec, experiment)
    names, _joined, _outputs = aggregation.pivot_columns(spec)
    with transaction.atomic():
        rollup, _created = AnalysisRollup.objects.get_or_create(
            experiment=experiment,
            defaults={"signature": "", "table_name": f"{TABLE_PREFIX}{experiment.pk}"},
        )
        # Skip, not wait, when an analysis is reading the rollup or another fold holds it: waiting
        # could hang the caller behind a stuck analysis, and an unfolded day costs only speed.
        locked = AnalysisRollup.objects.select_for_update(skip_locked=True).filter(pk=rollup.pk).first()
        if locked is None:
            return FoldResult(
                (), False, "busy: being read or folded", rollup.units, time.perf_counter() - started
            )
        rollup = locked
        candidates = _candidate_days(experiment, spec, last_closed)
        reason = ""
        if rollup.signature != signature:
            reason = "new rollup" if not rollup.signature else "design changed"
        elif stale := _stale_days(experiment.surface_id, rollup.folded):
            reason = f"rows changed on {', '.join(stale[:3])}" + ("…" if len(stale) > 3 else "")
        elif any(d not in {c.isoformat() for c in candidates} for d in rollup.folded):
            reason = "window or pre-period moved"
        rebuilt = bool(reason) and bool(rollup.folded)
        if reason:
            rollup.rebuilds += int(rebuilt)
            rollup.signature = signature
            rollup.folded = {}
        new_days = [d for d in candidates if d.isoformat() not in rollup.folded]
        if not new_days and not reason:
            return FoldResult((), False, "nothing new", rollup.units, time.perf_counter() - started)
        if new_days:
            if not rollup.folded:  # the first days of a new (or rebuilt) rollup: a fresh table
                _create_table(rollup.table_name, list(names.values()))
            seen = _fold(spec, rollup.table_name, new_days, incremental=bool(rollup.folded))
            rollup.folded = {**rollup.folded, **seen}
            with connection.cursor() as cursor:
                cursor.execute(f"ANALYZE {rollup.table_name}")
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE relname = %s", [rollup.table_name]
                )
                rollup.units = max(0, int(cursor.fetchone()[0]))
            reason = reason or f"{len(new_days)} new day(s)"
        else:
            rollup.units = 0
        seconds = time.perf_counter() - started
        rollup.fold_ms = seconds * 1000
        rollup.folded_at = now
        rollup.save()
    return FoldResult(tuple(new_days), rebuilt, reason, rollup.units, seconds)


def rollup_for_analysis(
    experiment: Experiment, spec: aggregation.AggregateSpec
) -> aggregation.RollupUse | None:
    """The rollup an analysis of ``spec`` may read, locked against a fold until the analysis commits.

    None when there is none, it is being folded right now (the analysis reads the rows rather than
    wait), it was built for another design, or it holds a window day after the as-of day.
    Must run inside the analysis's transaction.
    """
    if not supported() or not spec.metrics:
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name, signature, folded FROM experiments_analysisrollup "
            "WHERE experiment_id = %s FOR SHARE SKIP LOCKED",
            [experiment.pk],
        )
        row: Any = cursor.fetchone()
    if row is None:
        return None
    table, signature, folded = row
    folded = json.loads(folded) if isinstance(folded, str) else folded
    if not folded or signature != _signature(spec, experiment):
        return None
    days = sorted((dt.date.fromisoformat(d), int(c)) for d, c in folded.items())
    if any(d >= spec.window_start and d > spec.window_end for d, _ in days):
        return None  # it holds a window day after the as-of day
    if _stale_days(experiment.surface_id, folded):
        return None  # a folded day's rows changed: read them (the next fold rebuilds)
    return aggregation.RollupUse(table=table, folded=tuple(days))


def rollups_refresh_running(now: dt.datetime | None = None) -> int:
    """Refresh the rollup of every running experiment; returns how many folded something."""
    if not supported():
        return 0
    done = 0
    for experiment in Experiment.objects.filter(status=Experiment.Status.RUNNING):
        result = rollup_refresh(experiment=experiment, now=now)
        done += bool(result and result.folded_days)
    return done


def rollup_deleted(sender: Any, instance: AnalysisRollup, **kwargs: Any) -> None:
    """post_delete: drop the rollup's table with its row (in the same transaction)."""
    drop_table(instance.table_name)
