from __future__ import annotations

import subprocess
import sys


def test_ranking_engine_imports_without_django():
    code = (
        "import sys, rankers.engine.world, rankers.engine.training, rankers.engine.train, rankers.engine.artifacts,"
        " rankers.engine.parity, rankers.engine.movielens, rankers.engine.factory;"
        "assert 'django' not in sys.modules and 'rest_framework' not in sys.modules and 'celery' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_world_alone_does_not_import_torch():
    code = "import sys, rankers.engine.world; from rankers.engine import World; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
