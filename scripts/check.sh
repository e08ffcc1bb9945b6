#!/usr/bin/env bash
# Static checks: ruff, ruff format --check, mypy (strict on the pure engines) and lint-imports
# (the layers contract and the purity contracts). `make check` runs them; so does scripts/test.sh
# (the README's test command) before the suite, so CI fails on a type error or a broken contract.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
say() { printf '\033[1m[check]\033[0m %s\n' "$*"; }
say "ruff check";           "$BIN/ruff" check .
say "ruff format --check";  "$BIN/ruff" format --check .
say "lint-imports";         "$BIN/lint-imports" --no-cache
say "mypy";                 "$BIN/mypy" controlplane experiments rankers migrations_runbooks
