# The two commands of the README: `make run` (the main job on the embedded default) and `make test`.
.PHONY: run test check lint typecheck bench venv

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

run:            ## install, migrate, seed, then web + Celery worker + beat on SQLite and the filesystem broker
	bash scripts/run.sh

test:           ## full suite on throwaway PostgreSQL + Redis + real Celery worker, then the SQLite path
	bash scripts/test.sh

venv:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-dev.txt

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy controlplane experiments rankers migrations_runbooks

check: venv     ## ruff, ruff format --check, lint-imports (layers + purity contracts), mypy
	bash scripts/check.sh

bench: venv
	$(BIN)/python bench/assignment.py
