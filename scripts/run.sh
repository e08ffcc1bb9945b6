#!/usr/bin/env bash
# The README's run command: the control plane on the embedded default (SQLite + kombu's filesystem
# broker) with a real Celery worker and beat, served at http://127.0.0.1:8000. Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PORT=${PORT:-8000}
export PIP_DISABLE_PIP_VERSION_CHECK=1
say() { printf '\033[1m[run]\033[0m %s\n' "$*"; }

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
mkdir -p var/logs

say "migrating and seeding"
.venv/bin/python manage.py migrate --noinput -v0
.venv/bin/python manage.py seed_demo

pids=()
cleanup() { say "stopping"; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

.venv/bin/celery -A controlplane.celery worker --loglevel=INFO --concurrency=2 -n "worker@%h" >var/logs/worker.log 2>&1 &
pids+=($!)
.venv/bin/celery -A controlplane.celery beat --loglevel=INFO -s var/celerybeat-schedule >var/logs/beat.log 2>&1 &
pids+=($!)
.venv/bin/gunicorn controlplane.wsgi:application --bind "127.0.0.1:$PORT" --workers 2 --threads 4 \
  --access-logfile var/logs/access.log --error-logfile var/logs/web.log &
pids+=($!)

for _ in $(seq 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/accounts/login/" 2>/dev/null && break; sleep 0.2
done
cat <<MSG

  Control plane is up:  http://127.0.0.1:$PORT/
  Log in as  pm / $DEMO_PASSWORD        (operator)
        or   approver / $DEMO_PASSWORD  (approver, for four-eyes approvals)
        or   viewer / $DEMO_PASSWORD    (read-only)
  Admin:     http://127.0.0.1:$PORT/admin/   (admin / $DEMO_PASSWORD)
  API docs:  http://127.0.0.1:$PORT/api/docs/
  Logs:      var/logs/{web,worker,beat}.log        Ctrl-C stops everything.

MSG
if [ -f scripts/demo_flow.sh ] && [ "${DEMO_FLOW:-1}" = 1 ]; then
  bash scripts/demo_flow.sh &
  pids+=($!)
fi
wait -n "${pids[@]}"
