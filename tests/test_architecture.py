"""Boundaries: the pure engines import no Django, and the import-linter contracts hold."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("module", ["experiments.stats", "rankers.engine", "controlplane.core.assignment"])
def test_pure_engine_imports_without_django(module):
    if (
        not (ROOT / module.replace(".", "/")).with_suffix(".py").exists()
        and not (ROOT / module.replace(".", "/")).is_dir()
    ):
        pytest.fail(f"{module} is missing")
    code = f"import sys, {module}; assert 'django' not in sys.modules and 'celery' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_import_linter_contracts_hold():
    lint_imports = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([lint_imports], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_migrations_are_complete(db):
    from django.core.management import call_command

    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
