"""One beat tick over 100 running ramps: the sweeper's latency with real gates.

Run: .venv/bin/python bench/ramps.py [--ramps 100] [--units 200] [--database-url postgres://…/scratch]
     [--profile [fresh|reused]] [--queries N]
Goal (2-core machine): one tick over 100 running ramps, every ramp's gates on a fresh analysis, ≤ 2 s.

Builds a throwaway database (a temporary SQLite file by default; pass --database-url to use a
scratch PostgreSQL database, which is migrated and filled), 100 surfaces each with a running
runbook, and times ``ramps_advance_due`` in these situations:

* **young, fresh**: every ramp is young (min duration not reached) and analysed anew
  (``RUNBOOKS_ANALYSIS_MAX_AGE_S=0``) — gates still read a fresh analysis, because a guardrail
  breach must roll back at once. The goal is measured here;
* **young, reused**: the same with analyses up to 5 minutes old reused (the default setting);
* **idle**: nothing is due (the every-minute cost between checks);
* **budget**: fresh analyses under the default 1.5 s sweep budget (the rest deferred);
* **mature**: every ramp is mature and its gates decide on a fresh analysis.

Each ramp's experiment has ``--units`` synthesized units of evidence (exposures, 13 metrics per
unit-day, latency samples), analysed for real by the experiments app on every evaluation.

Columns: wall seconds, CPU seconds of this process (SQLite runs in-process, so on a shared
machine CPU seconds show the work and wall seconds the wait), seconds inside database calls, and
statements executed (counted by an execute wrapper; ``--debug-cursor`` measures as this bench
did before, with Django's debug cursor, which on SQLite adds a QUOTE() query per statement).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ramps", type=int, default=100)
    parser.add_argument("--units", type=int, default=200, help="synthesized units per ramp")
    parser.add_argument("--database-url", default="", help="scratch database (default: a temp SQLite file)")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="fresh",
        choices=["fresh", "reused"],
        help="print where a tick spends its time (cProfile): the fresh-analysis tick (default) or the reused one",
    )
    parser.add_argument("--profile-out", default="", help="with --profile: also dump the stats to this file")
    parser.add_argument(
        "--debug-cursor",
        action="store_true",
        help="record queries with Django's debug cursor (CaptureQueriesContext), as this bench did before: "
        "on SQLite it formats every statement with a second QUOTE() query and adds seconds to a tick",
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=0,
        metavar="N",
        help="print the N most frequent SQL shapes of the fresh-analysis tick (count, total ms)",
    )
    args = parser.parse_args()

    scratch = tempfile.mkdtemp(prefix="bench-ramps-")
    os.environ["CONTROLPLANE_VAR_DIR"] = scratch
    if args.database_url:
        os.environ["DATABASE_URL"] = args.database_url
    else:
        os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    os.environ.setdefault("CELERY_TASK_ALWAYS_EAGER", "1")
    import logging

    import django

    django.setup()
    logging.disable(logging.WARNING)
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from controlplane.core import services as core
    from controlplane.core.models import Population, RankingStack
    from migrations_runbooks import services
    from tests.runbooks.evidence import synthesize_day

    call_command("migrate", verbosity=0)
    call_command("seed_demo", "--no-users", verbosity=0)
    unified = RankingStack.objects.get(key="unified-mtl")
    content_first = RankingStack.objects.get(key="content-first")
    t0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
    steps = [
        {
            "name": "shadow",
            "treatment_bp": 0,
            "shadow_bp": 1000,
            "min_duration_s": 3600,
            "gates": {"parity": False, "latency": False},
        },
        {"name": "50%", "treatment_bp": 5000, "min_duration_s": 86400, "min_units": 50},
        {"name": "100%", "treatment_bp": 10000, "min_duration_s": 86400},
    ]
    setup_started = time.perf_counter()
    for i in range(args.ramps):
        surface = core.surface_upsert(
            key=f"bench-{i:03d}",
            name=f"Bench surface {i}",
            peak_qps=50.0,
            populations={Population.CONTENT_FIRST: (content_first, 10000)},
            actor="system:bench",
            now=t0,
        )
        rb = services.runbook_create(
            surface=surface, target_stack=unified, actor="system:bench", now=t0, steps=steps
        )
        services.runbook_start(runbook=rb, actor="system:bench", reason="bench", now=t0)
    services.ramps_advance_due(
        now=t0 + dt.timedelta(hours=2), budget_s=0
    )  # shadow → 50%, experiments attached
    from controlplane.core.models import Surface

    for surface in Surface.objects.filter(key__startswith="bench-"):
        synthesize_day(surface=surface, day=(t0 + dt.timedelta(hours=2)).date(), units=args.units)
    setup_s = time.perf_counter() - setup_started

    rows = []

    from django.conf import settings

    def timed(label: str, now: dt.datetime, *, budget_s: float, reuse_s: float) -> None:
        settings.RUNBOOKS_ANALYSIS_MAX_AGE_S = reuse_s
        import contextlib
        import cProfile
        import pstats

        which = {0: "fresh", 1: "reused"}.get(len(rows))
        profiler = cProfile.Profile() if args.profile and args.profile == which else None
        # Count and time statements with an execute wrapper: what the tick does, at the cost of two
        # clock reads per statement (the debug cursor costs far more; see --debug-cursor).
        statements: list[tuple[str, float]] = []

        def count(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                statements.append((sql, time.perf_counter() - t))

        debug = CaptureQueriesContext(connection) if args.debug_cursor else contextlib.nullcontext()
        with connection.execute_wrapper(count), debug:
            started, cpu_started = time.perf_counter(), time.process_time()
            if profiler:
                profiler.enable()
            outcomes = services.ramps_advance_due(now=now, budget_s=budget_s)
            if profiler:
                profiler.disable()
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        if profiler:
            print(f"\n--- cProfile: {label} ---")
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
            if args.profile_out:
                profiler.dump_stats(args.profile_out)
        if args.queries and which == "fresh":
            print_query_shapes(label, statements, args.queries)
        kinds: dict[str, int] = {}
        for o in outcomes:
            kinds[str(o.outcome)] = kinds.get(str(o.outcome), 0) + 1
        sql_s = sum(t for _, t in statements)
        rows.append((label, len(outcomes), elapsed, cpu, sql_s, len(statements), kinds))

    minute = dt.timedelta(minutes=1)
    young = t0 + dt.timedelta(hours=3)
    timed("young, fresh analysis each, no budget", young, budget_s=0, reuse_s=0)
    timed("young, analyses ≤5 min reused", young + minute, budget_s=0, reuse_s=300)
    timed("idle (nothing due)", young + minute + dt.timedelta(seconds=30), budget_s=0, reuse_s=0)
    timed("young, fresh analysis, 1.5 s budget", young + 2 * minute, budget_s=1.5, reuse_s=0)
    mature = t0 + dt.timedelta(days=1, hours=3)
    timed("mature, fresh analysis, gates decide", mature, budget_s=0, reuse_s=0)

    vendor = connection.vendor
    print(
        f"\nbench/ramps.py — {args.ramps} running ramps, {args.units} units each, {vendor}; setup {setup_s:.1f} s"
    )
    print(
        f"load average (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs"
    )
    print(
        f"{'tick':<40} {'ramps':>6} {'seconds':>9} {'cpu s':>7} {'sql s':>7} {'ms/ramp':>8} {'queries':>8}  outcomes"
    )
    for label, n, elapsed, cpu, sql_s, queries, kinds in rows:
        per = elapsed * 1000 / n if n else 0.0
        print(
            f"{label:<40} {n:>6} {elapsed:>9.3f} {cpu:>7.3f} {sql_s:>7.3f} {per:>8.1f} {queries:>8}  {kinds}"
        )
    fresh, reused, budgeted = rows[0], rows[1], rows[3]
    print(
        f"\ngoal: one tick over {args.ramps} running ramps, every ramp's gates on a fresh analysis, ≤ 2 s: "
        f"{fresh[2]:.3f} s → {'OK' if fresh[2] <= 2 and fresh[1] == args.ramps else 'MISSED'}; "
        f"analyses reused within 5 min: {reused[2]:.3f} s; with the default 1.5 s budget: {budgeted[2]:.3f} s, "
        f"{budgeted[1]} ramps (the rest deferred to the next tick)"
    )


def print_query_shapes(label: str, statements: list[tuple[str, float]], top: int) -> None:
    """SQL grouped by shape (literals folded), most frequent first: where the per-ramp queries are."""
    import re

    shapes: dict[str, list[float]] = {}
    for sql, seconds in statements:
        sql = re.sub(r"'(?:[^']|'')*'", "?", sql)
        sql = re.sub(r'"s\d+_x\d+"', "?", sql)  # savepoint names
        sql = re.sub(r"-?\b\d+(\.\d+)?(e[-+]?\d+)?\b", "?", sql)
        sql = re.sub(r"\((?:(?:%s|\?), )+(?:%s|\?)\)", "(…)", sql)
        sql = " ".join(sql.split())
        shape = shapes.setdefault(sql[:200], [0, 0.0])
        shape[0] += 1
        shape[1] += seconds * 1000
    print(f"\n--- SQL shapes: {label} ({len(statements)} statements, {len(shapes)} shapes) ---")
    print(f"{'count':>6} {'ms':>8}  statement")
    for sql, (count, ms) in sorted(shapes.items(), key=lambda kv: (-kv[1][0], -kv[1][1]))[:top]:
        print(f"{count:>6} {ms:>8.1f}  {sql}")


if __name__ == "__main__":
    main()
