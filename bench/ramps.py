"""One beat tick over 100 running ramps: the sweeper's latency with real gates.

Run: .venv/bin/python bench/ramps.py [--ramps 100] [--units 200] [--database-url postgres://…/scratch]
Goal (2-core machine): one tick over 100 running ramps ≤ 2 s.

Builds a throwaway database (a temporary SQLite file by default; pass --database-url to use a
scratch PostgreSQL database, which is migrated and filled), 100 surfaces each with a running
runbook, and times ``ramps_advance_due`` in three situations:

* **wait**: every ramp is young (min duration not reached) — gates still read a fresh analysis,
  because a guardrail breach must roll back at once;
* **advance**: every ramp is mature and healthy — gates pass, the allocation is published, the
  next step entered (one transaction per ramp);
* **idle**: nothing is due (the every-minute cost between checks).

Each ramp's experiment has ``--units`` synthesized units of evidence (exposures, 13 metrics per
unit-day, latency samples), analysed for real by the experiments app on every evaluation.
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
    parser.add_argument("--profile", action="store_true", help="print where the first tick spends its time")
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
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    from controlplane import services as core
    from controlplane.models import Population, RankingStack
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
    from controlplane.models import Surface

    for surface in Surface.objects.filter(key__startswith="bench-"):
        synthesize_day(surface=surface, day=(t0 + dt.timedelta(hours=2)).date(), units=args.units)
    setup_s = time.perf_counter() - setup_started

    rows = []

    from django.conf import settings

    def timed(label: str, now: dt.datetime, *, budget_s: float, reuse_s: float) -> None:
        settings.RUNBOOKS_ANALYSIS_MAX_AGE_S = reuse_s
        reset_queries()
        import cProfile
        import pstats

        profiler = cProfile.Profile() if args.profile and len(rows) == 1 else None  # the reused-analysis tick
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            if profiler:
                profiler.enable()
            outcomes = services.ramps_advance_due(now=now, budget_s=budget_s)
            if profiler:
                profiler.disable()
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(35)
            elapsed = time.perf_counter() - started
        kinds: dict[str, int] = {}
        for o in outcomes:
            kinds[str(o.outcome)] = kinds.get(str(o.outcome), 0) + 1
        rows.append((label, len(outcomes), elapsed, len(queries), kinds))

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
    print(f"{'tick':<40} {'ramps':>6} {'seconds':>9} {'ms/ramp':>8} {'queries':>8}  outcomes")
    for label, n, elapsed, queries, kinds in rows:
        per = elapsed * 1000 / n if n else 0.0
        print(f"{label:<40} {n:>6} {elapsed:>9.3f} {per:>8.1f} {queries:>8}  {kinds}")
    steady = rows[1][2]
    budgeted = rows[3]
    print(
        f"\ngoal: one tick over {args.ramps} running ramps ≤ 2 s (analyses reused within 5 min): "
        f"{steady:.3f} s → {'OK' if steady <= 2 and rows[1][1] == args.ramps else 'MISSED'}; "
        f"with a fresh analysis of every ramp: {rows[0][2]:.3f} s (bounded by the budget: {budgeted[2]:.3f} s, "
        f"{budgeted[1]} ramps, the rest deferred to the next tick)"
    )


if __name__ == "__main__":
    main()
