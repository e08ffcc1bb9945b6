#!/usr/bin/env bash
# The demo flow `make run` starts once the web server, the Celery worker and beat are up (so the UI
# answers at once while this runs; scripts/run.sh keeps serving after it ends):
#   1. train the stacks of the serving world (small by default, ~1 min; skipped when trained
#      artifacts exist) with progress bars, and register them;
#   2. drive pages and groups through their runbooks on a compressed clock (manage.py demo_migration:
#      traffic through the router, ramp ticks through the running worker, four-eyes approvals) until
#      pages is promoted and groups is rolled back by its guardrail;
#   3. train the stacks on the default world too (progress bars; ~9 min on 2 cores, at low CPU
#      priority so the UI stays responsive) and register them, unless DEMO_TRAIN_DEFAULT=0.
# Knobs: DEMO_SECONDS_PER_DAY (real pause per simulated day, default 2), DEMO_USERS (users per surface
# per day, default 1200), DEMO_TRAIN_DEFAULT (1), RANKERS_WORLD (the serving world, small|default).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
T0=${RUN_T0:-$(date +%s)}
WORLD=${RANKERS_WORLD:-small}
ARTIFACTS=${RANKERS_ARTIFACTS_DIR:-artifacts}
say() { printf '\033[1m[flow +%ss]\033[0m %s\n' "$(($(date +%s) - T0))" "$*"; }

say "demo: train/register the $WORLD-world stacks, then migrate pages and groups (DEMO_SECONDS_PER_DAY=${DEMO_SECONDS_PER_DAY:-2})"
status=0
PYTHONUNBUFFERED=1 "$PY" manage.py demo_migration --train --world "$WORLD" || status=$?
if [ $status -eq 0 ]; then
  say "demo done: pages promoted, groups rolled back (details above; the UI shows the runbooks and the audit log)"
else
  say "the demo did not end as told (exit status $status; the reasons are above); the UI keeps serving"
fi

if [ "${DEMO_TRAIN_DEFAULT:-1}" = 1 ] && [ "$WORLD" != default ]; then
  if [ -f "$ARTIFACTS/default/unified_mtl/manifest.json" ]; then
    say "default-world stacks already trained in $ARTIFACTS/default; registering them"
    nice -n 10 "$PY" manage.py train_stacks --world default --out "$ARTIFACTS" --skip-train || true
  else
    say "training the stacks on the default world (50k users, 200k posts) in the background of the UI; progress below"
    nice -n 10 env PYTHONUNBUFFERED=1 "$PY" manage.py train_stacks --world default --out "$ARTIFACTS" || true
  fi
  say "default-world stacks registered (Stacks page); serve them with RANKERS_WORLD=default make run"
fi
say "demo flow finished; the control plane keeps serving — Ctrl-C stops everything"
exit $status
