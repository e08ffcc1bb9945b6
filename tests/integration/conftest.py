"""Integration fixtures: the serving stacks of the small world, shared with worker subprocesses.

The same two autouse fixtures as tests/serving (one trained bundle per machine, which the Celery
worker subprocess inherits through the environment; fast password hashing for the seeded users).
"""

from __future__ import annotations

from tests.serving.conftest import _fast_password_hashing, _rankers_artifacts_dir

__all__ = ["_fast_password_hashing", "_rankers_artifacts_dir"]
