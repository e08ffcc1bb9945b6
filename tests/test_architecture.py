"""Boundaries: the pure engines import no Django, and the import-linter contracts hold."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "module",
    [
        "experiments.stats",
        "rankers.engine",
        "controlplane.core.assignment",
        "controlplane.core.openfeature_provider",
    ],
)
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


LAYERS_LOWEST_FIRST = [
    "controlplane.core",
    "rankers",
    "controlplane.serving",
    "experiments",
    "migrations_runbooks",
    "controlplane.web | controlplane.demo | controlplane.ops",
]


def _tree_copy(tmp_path: Path) -> Path:
    """The four packages and pyproject.toml, copied so that a test may break them."""
    for package in ("controlplane", "experiments", "rankers", "migrations_runbooks"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "static")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_layers_contract_is_the_documented_order():
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = [c for c in contracts if c["type"] == "layers"]
    assert len(layers) == 1
    assert list(reversed(layers[0]["layers"])) == LAYERS_LOWEST_FIRST


@pytest.mark.parametrize(
    ("module", "wrong_way"),
    [
        ("controlplane/core/tasks.py", "from experiments import models"),  # core -> experiments
        ("controlplane/serving/selectors.py", "from experiments import ingestion"),  # serving -> experiments
        ("experiments/readout.py", "from migrations_runbooks import gates"),  # experiments -> runbooks
        ("migrations_runbooks/selectors.py", "from controlplane.web import charts"),  # runbooks -> web
        ("controlplane/web/views.py", "from controlplane.demo import simulator"),  # web -> demo (siblings)
        ("migrations_runbooks/selectors.py", "from controlplane.ops import metrics"),  # runbooks -> ops
        ("controlplane/web/views.py", "from controlplane.ops import logs"),  # web -> ops (siblings)
    ],
)
def test_layers_contract_catches_a_lazy_import_the_wrong_way(tmp_path, module, wrong_way):
    """The contract sees an import inside a function that crosses a layer the wrong way."""
    tree = _tree_copy(tmp_path)
    with (tree / module).open("a") as f:
        f.write(f"\n\ndef _injected_for_the_test() -> None:\n    {wrong_way}  # noqa\n")
    lint_imports = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([lint_imports, "--no-cache"], cwd=tree, capture_output=True, text=True)
    assert result.returncode != 0
    assert "Layers: core -> rankers -> serving" in result.stdout
    assert "BROKEN" in result.stdout
