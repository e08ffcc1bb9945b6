"""Experiment analysis in PostgreSQL: 20 metrics × 2 legacy populations over 1M units.

Side by side, in one run, on the same rows (one window day and one pre-period day per unit and
base metric, loaded with COPY):

1. **analysis** — ``experiments.services.experiment_analyze``: the one aggregate query (per-unit
   pivot with CUPED pre-period sums, joined to exposures, grouped by arm × population × day),
   then the statistics engine for every metric × population, pooled results, SRM, health checks,
   the decision and the stored AnalysisRun. End to end, as a Celery task would run it. Measured
   twice: from the rows (no rollup: every run pivots every row), and through the experiment's
   analysis rollup (experiments/rollups.py) once the closed days are folded — what every later
   run of the sweeper and the scheduled analyses costs. The fold itself (once per closed day,
   and again only if a folded day's rows change) is timed on its own line.
2. **bare scan** — one bare SQL aggregate of the same rows: ``COUNT, SUM(v), SUM(v²)`` per
   metric over the window and pre-period days (the floor: every row read once, no per-unit work);
   and, for context, a bare per-unit ``GROUP BY unit_id`` of the same rows — the floor of any
   unit-level analysis, since unit-level variances need each unit's totals.
3. **pandas** — pull the same rows and the exposures into pandas (``COPY … TO STDOUT`` →
   ``read_csv``, the fastest plain route), pivot per unit, join, and compute the same sums.

Goal: analysis ≤ 1.5 × the bare scan.

Run:  .venv/bin/python bench/readout.py                 # throwaway PostgreSQL, 1M units
      .venv/bin/python bench/readout.py --units 100000  # quick
      DATABASE_URL=postgres://… .venv/bin/python bench/readout.py --keep
Needs PostgreSQL binaries (``/usr/lib/postgresql/*/bin``) unless DATABASE_URL is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WINDOW_START = dt.date(2026, 3, 2)
PRE_DAY = WINDOW_START - dt.timedelta(days=3)
BASE_KEYS = (
    "impressions", "sessions", "time_spent", "likes", "comments", "shares", "hides", "reports",
    "integrity_impressions", "errors", "requests", "meaningful_interactions", "newcomer_impressions",
)  # fmt: skip
# 13 CUPED means + 7 ratios = 20 analysed metrics.
RATIOS = (
    ("engagement_rate", "likes+comments+shares", "impressions", "higher"),
    ("hide_report_rate", "hides+reports", "impressions", "lower"),
    ("integrity_rate", "integrity_impressions", "impressions", "lower"),
    ("error_rate", "errors", "requests", "lower"),
    ("newcomer_exposure", "newcomer_impressions", "impressions", "higher"),
    ("like_rate", "likes", "impressions", "higher"),
    ("comment_rate", "comments", "impressions", "higher"),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """initdb + pg_ctl on a free loopback port (as scripts/test.sh does); removed afterwards."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not bins:
        raise SystemExit("no PostgreSQL binaries: install postgresql or pass DATABASE_URL")
    pgbin = bins[-1]
    rundir = Path(tempfile.mkdtemp(prefix="bench-readout-"))
    root = os.geteuid() == 0
    user = "postgres" if root else os.environ.get("USER", "postgres")

    def as_pg(*cmd: str) -> None:
        full = ["runuser", "-u", "postgres", "--", *cmd] if root else list(cmd)
        subprocess.run(full, check=True, stdout=subprocess.DEVNULL)

    if root:
        shutil.chown(rundir, "postgres")
    port = _free_port()
    data = rundir / "pg"
    as_pg(str(pgbin / "initdb"), "-D", str(data), "-A", "trust", "-U", user)
    # Throwaway: durability off (like the test cluster); memory sized for an analytic scan.
    opts = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {rundir} -c fsync=off -c synchronous_commit=off "
        "-c full_page_writes=off -c shared_buffers=2GB -c work_mem=256MB -c maintenance_work_mem=1GB "
        "-c max_wal_size=8GB -c checkpoint_timeout=30min"
    )
    as_pg(str(pgbin / "pg_ctl"), "-D", str(data), "-l", str(rundir / "pg.log"), "-w", "-o", opts, "start")
    try:
        subprocess.run(
            [str(pgbin / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, "bench"], check=True
        )
        yield f"postgres://{user}@127.0.0.1:{port}/bench"
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(pgbin / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "immediate",
                "stop",
            ]
            if root
            else [str(pgbin / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        shutil.rmtree(rundir, ignore_errors=True)


def setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("SECRET_KEY", "bench-readout-not-a-secret-" + "x" * 40)
    os.environ.setdefault("CONTROLPLANE_DEMO", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("seed_demo", "--no-users", verbosity=0)


def _copy(cursor: object, table: str, columns: str, frame_csv: str) -> None:
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)") as copy:  # type: ignore[attr-defined]
        copy.write(frame_csv)


def load(n_units: int, seed: int, *, with_indexes: bool = False) -> tuple[object, object]:
    """Exposures + metric rows via COPY; returns (experiment, allocation)."""
    import pandas as pd
    from django.db import connection

    from controlplane.core.models import RankingStack, Surface
    from controlplane.core.selectors import allocation_config
    from controlplane.core.services import allocation_change
    from controlplane.serving.models import Exposure
    from experiments.models import MetricObservation
    from experiments.services import experiment_create, metric_definitions_ensure_standard

    now = dt.datetime.combine(WINDOW_START, dt.time(6), tzinfo=dt.UTC)
    surface = Surface.objects.get(key="groups")
    unified = RankingStack.objects.get(key="unified-mtl")
    allocation = allocation_change(surface=surface, actor="system:bench", reason="bench", treatment_stack=unified,
                                   treatment_bp=5000, salt="groups-bench", now=now)  # fmt: skip
    metric_definitions_ensure_standard()
    metrics = [{"metric": k, "role": "primary" if k in ("time_spent", "meaningful_interactions") else "secondary",
                "margin": 0.02, "cuped": True} for k in BASE_KEYS]  # fmt: skip
    metrics += [{"metric": k, "role": "guardrail" if d == "lower" else "secondary", "kind": "ratio", "numerator": n,
                 "denominator": den, "direction": d, "margin": 0.05, "cuped": False}
                for k, n, den, d in RATIOS]  # fmt: skip
    experiment = experiment_create(
        surface=surface, key="bench-readout", treatment_stack=unified, salt=allocation.salt,
        window_start=WINDOW_START, window_end=WINDOW_START, pre_start=PRE_DAY, pre_end=PRE_DAY,
        metrics=metrics, actor="system:bench", now=now, start=True,
    )  # fmt: skip

    rng = np.random.default_rng(seed)
    config = allocation_config(allocation)
    ids = np.arange(n_units, dtype=np.int64)
    arms, pops = config.assign_many(ids)  # integer-id bulk path; unit ids are "u<int>"
    units = np.char.add("u", ids.astype(str))
    pop_names = np.array([p.population for p in config.populations])[pops]
    pop_stacks = np.array([p.stack for p in config.populations])[pops]
    arm_names = np.array(["holdout", "control", "treatment"])[arms]
    stacks = np.where(arm_names == "treatment", unified.label, pop_stacks)
    exposures = pd.DataFrame({
        "surface_id": surface.pk, "salt": allocation.salt, "unit_id": units, "arm": arm_names,
        "population": pop_names, "stack": stacks, "allocation_version": allocation.version,
        "first_exposed_at": f"{WINDOW_START.isoformat()} 09:00:00+00",
    })  # fmt: skip
    t0 = time.perf_counter()
    with connection.cursor() as cursor:
        raw = cursor.cursor
        _copy(raw, Exposure._meta.db_table,
              "surface_id, salt, unit_id, arm, population, stack, allocation_version, first_exposed_at",
              exposures.to_csv(index=False, header=False))  # fmt: skip
        activity = rng.lognormal(0.0, 0.45, n_units)
        scale = {"impressions": 400, "sessions": 4, "time_spent": 300, "likes": 20, "comments": 5, "shares": 3,
                 "hides": 8, "reports": 1.6, "integrity_impressions": 4, "errors": 1, "requests": 20,
                 "meaningful_interactions": 8, "newcomer_impressions": 40}  # fmt: skip
        # Drop the two secondary indexes for the load (standard bulk-load practice). Every route
        # measured here scans the table, so they are rebuilt only with --with-indexes (which makes
        # the table exactly what the migrations define, at several minutes more load time).
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexname NOT LIKE %s",
            [MetricObservation._meta.db_table, "%pkey"],
        )
        indexes = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        for day in (WINDOW_START, PRE_DAY):
            for key in BASE_KEYS:
                values = rng.poisson(scale[key] * activity).astype(np.float64)
                frame = pd.DataFrame({"surface_id": surface.pk, "unit_id": units, "day": day.isoformat(), "metric": key,
                                      "value": values})  # fmt: skip
                _copy(raw, MetricObservation._meta.db_table, "surface_id, unit_id, day, metric, value",
                      frame.to_csv(index=False, header=False))  # fmt: skip
        if with_indexes:
            for _, definition in indexes:
                cursor.execute(definition)
        cursor.execute(f"ANALYZE {MetricObservation._meta.db_table}")
        cursor.execute(f"ANALYZE {Exposure._meta.db_table}")
        cursor.execute(f"SELECT COUNT(*) FROM {MetricObservation._meta.db_table}")
        rows = cursor.fetchone()[0]
    print(f"loaded {n_units:,} units, {rows:,} metric rows in {time.perf_counter() - t0:.1f} s", flush=True)
    return experiment, allocation


def bare_scan(surface_id: int) -> float:
    from django.db import connection

    sql = (
        "SELECT m.metric, COUNT(*), SUM(m.value), SUM(m.value * m.value) FROM experiments_metricobservation m "
        "WHERE m.surface_id = %s AND m.day >= %s AND m.day <= %s GROUP BY m.metric"
    )
    t0 = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(sql, [surface_id, PRE_DAY.isoformat(), WINDOW_START.isoformat()])
        cursor.fetchall()
    return time.perf_counter() - t0


def per_unit_scan(surface_id: int) -> float:
    """The floor of any unit-level analysis: group the same rows by unit (one SUM per unit).

    Unit-level variances need each unit's totals, so no correct analysis can be cheaper than
    this grouping; run with the analysis query's session settings for a like-for-like figure.
    """
    from django.db import connection, transaction

    from experiments.aggregation import WORK_MEM

    sql = (
        "SELECT COUNT(*), SUM(t.s) FROM (SELECT m.unit_id, SUM(m.value) AS s FROM experiments_metricobservation m "
        "WHERE m.surface_id = %s AND m.day >= %s AND m.day <= %s GROUP BY m.unit_id) t"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('jit', 'off', true), set_config('work_mem', %s, true)", [WORK_MEM])
        t0 = time.perf_counter()
        cursor.execute(sql, [surface_id, PRE_DAY.isoformat(), WINDOW_START.isoformat()])
        cursor.fetchall()
        return time.perf_counter() - t0


def pandas_pull(surface_id: int, salt: str) -> tuple[float, dict[tuple[str, str], dict[str, float]]]:
    """Rows → pandas → per-unit pivot → join → the same sums (window Σ, Σ², pre Σ, Σ², Σxy)."""
    import pandas as pd
    from django.db import connection

    t0 = time.perf_counter()
    with connection.cursor() as cursor:
        raw = cursor.cursor

        def pull(sql: str) -> pd.DataFrame:
            buffer = io.BytesIO()
            with raw.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
                for chunk in copy:
                    buffer.write(chunk)
            buffer.seek(0)
            return pd.read_csv(buffer)

        rows = pull(
            "SELECT unit_id, metric, day, value FROM experiments_metricobservation "
            f"WHERE surface_id = {int(surface_id)} AND day >= '{PRE_DAY}' AND day <= '{WINDOW_START}'"
        )
        exposures = pull(
            "SELECT unit_id, arm, population FROM experiments_exposure "
            f"WHERE surface_id = {int(surface_id)} AND salt = '{salt}' AND arm IN ('control', 'treatment')"
        )
    rows["period"] = np.where(rows["day"] == WINDOW_START.isoformat(), "w", "p")
    wide = rows.pivot_table(index="unit_id", columns=["period", "metric"], values="value", aggfunc="sum")
    wide.columns = [f"{p}_{m}" for p, m in wide.columns]
    joined = exposures.join(wide, on="unit_id").fillna(0.0)
    out: dict[tuple[str, str], dict[str, float]] = {}
    for (arm, pop), group in joined.groupby(["arm", "population"]):
        sums: dict[str, float] = {"n": float(len(group))}
        for key in BASE_KEYS:
            y, x = group[f"w_{key}"].to_numpy(), group[f"p_{key}"].to_numpy()
            sums[f"{key}__sum"] = float(y.sum())
            sums[f"{key}__sum_squares"] = float(y @ y)
            sums[f"{key}__x_sum"] = float(x.sum())
            sums[f"{key}__x_sum_squares"] = float(x @ x)
            sums[f"{key}__xy_sum"] = float(x @ y)
        out[(str(arm), str(pop))] = sums
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (best is reported)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--skip-pandas", action="store_true")
    parser.add_argument(
        "--with-indexes", action="store_true", help="rebuild the secondary indexes after the load"
    )
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    if url:
        run(url, args)
    else:
        with throwaway_postgres() as url:
            run(url, args)


def run(url: str, args: argparse.Namespace) -> None:
    setup_django(url)
    from django.db import connection

    from experiments import aggregation
    from experiments.outcome import analysis_outcome
    from experiments.rollups import rollup_refresh
    from experiments.services import experiment_analyze

    experiment, allocation = load(args.units, args.seed, with_indexes=args.with_indexes)
    with connection.cursor() as cursor:
        cursor.execute("SHOW max_parallel_workers_per_gather")
        workers = cursor.fetchone()[0]
        cursor.execute("SELECT version()")
        version = cursor.fetchone()[0].split(",")[0]
    now = dt.datetime.combine(WINDOW_START + dt.timedelta(days=1), dt.time(6), tzinfo=dt.UTC)
    bare_scan(experiment.surface_id)  # warm the cache for everyone alike
    analysis_s, query_s, engine_s, bare_s, unit_s = [], [], [], [], []
    for _ in range(args.repeat):
        bare_s.append(bare_scan(experiment.surface_id))
        unit_s.append(per_unit_scan(experiment.surface_id))
        t0 = time.perf_counter()
        run_ = experiment_analyze(experiment=experiment, now=now)
        analysis_s.append(time.perf_counter() - t0)
        query_s.append(run_.query_ms / 1000)
        engine_s.append(run_.analysis_ms / 1000)
    from_rows = run_

    # The analysis rollup: fold the closed days once, then analyse through it.
    t0 = time.perf_counter()
    fold = rollup_refresh(experiment=experiment, now=now)
    fold_s = time.perf_counter() - t0
    assert fold is not None and fold.folded_days, "the rollup folded nothing"
    rolled_s, rolled_query_s = [], []
    for _ in range(args.repeat):
        bare_s.append(bare_scan(experiment.surface_id))
        t0 = time.perf_counter()
        run_ = experiment_analyze(experiment=experiment, now=now)
        rolled_s.append(time.perf_counter() - t0)
        rolled_query_s.append(run_.query_ms / 1000)
    # Same numbers through the rollup as from the rows (float sums in another order: 1e-9).
    rolled_totals, row_totals = (
        aggregation.sum_rows(run_.statistics),
        aggregation.sum_rows(from_rows.statistics),
    )
    drift = max(
        abs(rolled_totals[g][k] - v) / max(1.0, abs(v))
        for g, sums in row_totals.items()
        for k, v in sums.items()
    )
    print(f"rollup vs rows sums: max relative difference {drift:.2e}")
    assert drift < 1e-9, "the analysis through the rollup differs from the analysis of the rows"
    assert run_.verdict == from_rows.verdict
    result = analysis_outcome(run_.result)
    assert result is not None
    pandas_s = None
    if not args.skip_pandas:
        pandas_s, reference = pandas_pull(experiment.surface_id, allocation.salt)
        # The three routes agree: the in-database sums equal pandas' to float precision.
        totals = aggregation.sum_rows(run_.statistics)
        worst = 0.0
        for group, sums in reference.items():
            for key, value in sums.items():
                got = totals[group][key]
                worst = max(worst, abs(got - value) / max(1.0, abs(value)))
        print(f"in-database vs pandas sums: max relative difference {worst:.2e}")
        assert worst < 1e-9, "in-database sufficient statistics differ from pandas"

    n_metrics = len(result.metrics) // 3
    best_analysis, best_bare = min(analysis_s), min(bare_s)
    print()
    print(f"{version}; {args.units:,} units; {n_metrics} metrics × 2 populations (+ pooled); "
          f"parallel workers per gather {workers}; best of {args.repeat}")  # fmt: skip
    print(f"{'route':<44}{'seconds':>10}{'× bare scan':>14}")
    print(f"{'bare SQL aggregate scan of the same rows':<44}{best_bare:>10.2f}{1.0:>14.2f}")
    print(
        f"{'bare per-unit GROUP BY of the same rows':<44}{min(unit_s):>10.2f}{min(unit_s) / best_bare:>14.2f}"
    )
    print(
        f"{'analysis from the rows (no rollup)':<44}{best_analysis:>10.2f}{best_analysis / best_bare:>14.2f}"
    )
    print(f"{'  of which the aggregate query':<44}{min(query_s):>10.2f}{min(query_s) / best_bare:>14.2f}")
    print(f"{'  of which statistics + decision':<44}{min(engine_s):>10.3f}{min(engine_s) / best_bare:>14.3f}")
    print(
        f"{'fold the closed days into the rollup (once)':<44}{fold_s:>10.2f}{fold_s / best_bare:>14.2f}"
        f"   {len(fold.folded_days)} days, {fold.units:,} units"
    )
    best_rolled = min(rolled_s)
    print(
        f"{'analysis through the rollup (end to end)':<44}{best_rolled:>10.2f}{best_rolled / best_bare:>14.2f}"
    )
    print(
        f"{'  of which the aggregate query':<44}{min(rolled_query_s):>10.2f}{min(rolled_query_s) / best_bare:>14.2f}"
    )
    if pandas_s is not None:
        print(
            f"{'rows pulled into pandas (COPY → read_csv)':<44}{pandas_s:>10.2f}{pandas_s / best_bare:>14.2f}"
        )
    goal = best_rolled <= 1.5 * best_bare
    print(
        f"goal analysis ≤ 1.5 × bare scan: {'met' if goal else 'NOT met'} through the rollup "
        f"({best_rolled / best_bare:.2f}×); from the rows {best_analysis / best_bare:.2f}×, "
        f"and the one-off fold {fold_s / best_bare:.2f}×"
    )
    print(f"decision: {result.recommendation.verdict}; units control {result.units.control:,}, "
          f"treatment {result.units.treatment:,}")  # fmt: skip


if __name__ == "__main__":
    main()
