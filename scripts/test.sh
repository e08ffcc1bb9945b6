#!/usr/bin/env bash
# The README's test command. Does its own set-up on a fresh Debian machine (root):
#   virtualenv + pinned packages, system packages when missing (postgresql, redis-server, chromium),
#   a throwaway PostgreSQL cluster and Redis server on free loopback ports (stopped afterwards),
# then runs the whole suite on PostgreSQL + Redis + a real Celery worker, and the SQLite path.
# Extra arguments go to pytest, e.g. scripts/test.sh -k assignment
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '\033[1m[test]\033[0m %s\n' "$*"; }

# --- 1. virtualenv --------------------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import django, torch, pytest_django, statsmodels, playwright" 2>/dev/null \
   || [ requirements-dev.txt -nt .venv/.installed ] || [ requirements.txt -nt .venv/.installed ]; then
  say "installing requirements-dev.txt (torch from the local CPU wheel)"
  .venv/bin/pip install -q -r requirements-dev.txt
  touch .venv/.installed
fi

# --- 1b. static checks (the whole run only: with pytest arguments they are skipped) ---------------
if [ $# -eq 0 ] || [ "${STATIC_CHECKS:-0}" = 1 ]; then
  say "static checks: ruff, ruff format --check, lint-imports, mypy"
  bash scripts/check.sh
fi

# --- 2. system packages ---------------------------------------------------------------------------
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
missing=()
[ -n "$PGBIN" ] && [ -x "$PGBIN/initdb" ] || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  else
    echo "missing system packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 2
  fi
fi

# --- 3. throwaway PostgreSQL + Redis on loopback --------------------------------------------------
free_port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RUNDIR=$(mktemp -d /tmp/controlplane-test.XXXXXX)
PGPORT=$(free_port); REDISPORT=$(free_port)
PGDATA="$RUNDIR/pg"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "$(id -u)" = 0 ]; then chown postgres "$RUNDIR"; chmod 755 "$RUNDIR"; PGUSER=postgres; else PGUSER=$(id -un); fi

cleanup() {
  set +e
  [ -f "$PGDATA/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1
  [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null
  rm -rf "$RUNDIR"
}
trap cleanup EXIT INT TERM

say "starting PostgreSQL on 127.0.0.1:$PGPORT and Redis on 127.0.0.1:$REDISPORT"
as_pg "$PGBIN/initdb" -D "$PGDATA" -A trust -U "$PGUSER" >/dev/null
# Durability off: a throwaway test cluster trades crash safety for speed.
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$RUNDIR/pg.log" -w -o \
  "-c listen_addresses=127.0.0.1 -p $PGPORT -k $RUNDIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" start >/dev/null
redis-server --bind 127.0.0.1 --port "$REDISPORT" --save "" --appendonly no --daemonize no >"$RUNDIR/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 50); do redis-cli -p "$REDISPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

export DATABASE_URL="postgres://$PGUSER@127.0.0.1:$PGPORT/controlplane"
export REDIS_URL="redis://127.0.0.1:$REDISPORT/0"
export CELERY_BROKER_URL="$REDIS_URL"
export CELERY_RESULT_BACKEND="redis://127.0.0.1:$REDISPORT/1"
export SECRET_KEY=$(.venv/bin/python -c "import secrets; print(secrets.token_urlsafe(50))")
export CONTROLPLANE_VAR_DIR="$RUNDIR/var"
export DJANGO_ALLOW_ASYNC_UNSAFE=true
export SCREENSHOT_DIR="${SCREENSHOT_DIR:-$ROOT/test-artifacts/screenshots}"
"$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U "$PGUSER" controlplane

# --- 4. the suite on PostgreSQL + Redis, then the SQLite path -------------------------------------
say "pytest on PostgreSQL + Redis"
status=0
.venv/bin/python -m pytest -p no:cacheprovider --timeout=600 "$@" || status=$?

if [ $status -eq 0 ] && [ $# -eq 0 ]; then
  say "pytest on the embedded SQLite default (tests marked sqlite_path)"
  env -u DATABASE_URL -u CELERY_BROKER_URL -u CELERY_RESULT_BACKEND -u REDIS_URL \
    CONTROLPLANE_VAR_DIR="$RUNDIR/var-sqlite" \
    .venv/bin/python -m pytest -p no:cacheprovider --timeout=600 -m sqlite_path -q || status=$?
fi
exit $status
