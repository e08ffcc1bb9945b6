#!/usr/bin/env bash
# The README's run command: the control plane on the embedded default (SQLite + kombu's filesystem
# broker) with a real Celery worker and beat, served at http://127.0.0.1:8000, then the demo flow
# (scripts/demo_flow.sh: train, pages promoted, groups rolled back) against the running worker.
# The UI is up before the demo starts and keeps serving after it ends. Ctrl-C stops it all.
#   PORT=8123            another port
#   DEMO_FLOW=0          serve only, no demo
#   DEMO_RESET=1         start over: a fresh database and broker (trained artifacts are kept)
#   DEMO_SECONDS_PER_DAY real seconds per simulated day (default 2; 0 = as fast as it goes)
#   DEMO_TRAIN_DEFAULT=0 skip training the default world after the demo
#   RANKERS_WORLD=default serve and demo the default world (trains it first: ~9 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
export RUN_T0=${RUN_T0:-$(date +%s)}
PY=${PYTHON:-python3}
PORT=${PORT:-8000}
export PIP_DISABLE_PIP_VERSION_CHECK=1
say() { printf '\033[1m[run +%ss]\033[0m %s\n' "$(($(date +%s) - RUN_T0))" "$*"; }

if [ ! -x .venv/bin/python ]; then say "creating .venv"; "$PY" -m venv .venv; fi
if ! .venv/bin/python -c "import django, torch, celery, plotly" 2>/dev/null || [ requirements.txt -nt .venv/.installed-run ]; then
  say "installing requirements.txt (torch from the local CPU wheel)"
  .venv/bin/pip install -q -r requirements.txt
  touch .venv/.installed-run
fi

# The embedded default: no DATABASE_URL / CELERY_BROKER_URL means SQLite + filesystem broker in ./var.
unset DATABASE_URL CELERY_BROKER_URL CELERY_RESULT_BACKEND
export CONTROLPLANE_DEMO=1
export DEMO_PASSWORD=${DEMO_PASSWORD:-unify-demo-2026}
VAR=${CONTROLPLANE_VAR_DIR:-var}
mkdir -p "$VAR"
VAR=$(cd "$VAR" && pwd)
export CONTROLPLANE_VAR_DIR=$VAR
# Web, worker and the demo serve the same simulated world from the same trained artifacts.
export RANKERS_WORLD=${RANKERS_WORLD:-small}
export RANKERS_ARTIFACTS_DIR=${RANKERS_ARTIFACTS_DIR:-$(pwd)/artifacts}
if [ "${DEMO_RESET:-0}" = 1 ]; then
  say "DEMO_RESET=1: a fresh database and broker in $VAR"
  rm -rf "$VAR"/controlplane.sqlite3* "$VAR"/broker "$VAR"/results "$VAR"/celerybeat-schedule*
fi
mkdir -p "$VAR/logs"
# One /metrics for web, worker and beat on this host: prometheus-client's multiprocess mode keeps
# each process's counters in files here (emptied at start: they describe this run only).
export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-$VAR/prometheus}
rm -rf "$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"

say "migrating and seeding"
.venv/bin/python manage.py migrate --noinput -v0
.venv/bin/python manage.py seed_demo

services=()
flow=""
cleanup() {
  trap - EXIT INT TERM
  say "stopping"
  [ -n "$flow" ] && kill -- -"$flow" 2>/dev/null || true
  for p in "${services[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

.venv/bin/celery -A controlplane.celery worker --loglevel=INFO --concurrency=2 -n "worker@%h" >"$VAR/logs/worker.log" 2>&1 &
services+=($!)
.venv/bin/celery -A controlplane.celery beat --loglevel=INFO -s "$VAR/celerybeat-schedule" >"$VAR/logs/beat.log" 2>&1 &
services+=($!)
.venv/bin/gunicorn controlplane.wsgi:application --bind "127.0.0.1:$PORT" --workers 2 --threads 4 \
  --access-logfile "$VAR/logs/access.log" --error-logfile "$VAR/logs/web.log" &
services+=($!)

up=0
for _ in $(seq 150); do
  if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/accounts/login/" 2>/dev/null; then up=1; break; fi
  sleep 0.2
done
[ $up = 1 ] && say "first page answered: http://127.0.0.1:$PORT/accounts/login/" || say "web server not answering yet; see $VAR/logs/web.log"
cat <<MSG

  Control plane is up:  http://127.0.0.1:$PORT/
  Log in as  pm / $DEMO_PASSWORD        (operator)
        or   approver / $DEMO_PASSWORD  (approver, for four-eyes approvals)
        or   viewer / $DEMO_PASSWORD    (read-only)
  Admin:     http://127.0.0.1:$PORT/admin/   (admin / $DEMO_PASSWORD)
  API docs:  http://127.0.0.1:$PORT/api/docs/
  Ops:       http://127.0.0.1:$PORT/healthz  /readyz  /metrics (as pm)
  Logs:      $VAR/logs/{web,worker,beat}.log        Ctrl-C stops everything.

MSG
if [ -f scripts/demo_flow.sh ] && [ "${DEMO_FLOW:-1}" = 1 ]; then
  # Its own process group, so stopping it also stops the manage.py command it is running.
  setsid bash scripts/demo_flow.sh &
  flow=$!
fi
# Serve until Ctrl-C (or until the web server, the worker or beat dies); the demo flow ending is not a stop.
wait -n "${services[@]}" || true
say "the web server, the worker or beat exited (see $VAR/logs)"
exit 1
