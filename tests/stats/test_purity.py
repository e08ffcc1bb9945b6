"""The statistics engine is pure: importing it loads no Django, DRF, Celery, torch or plotly."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stats_engine_imports_without_django():
    code = (
        "import sys, experiments.stats, experiments.stats.cli\n"
        "bad = [m for m in ('django', 'rest_framework', 'celery', 'torch', 'plotly') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
