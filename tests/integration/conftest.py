"""Integration fixtures: the serving stacks of the small world, shared with worker subprocesses."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="session", autouse=True)
def _rankers_artifacts_dir() -> Iterator[None]:
    # Same bundle as tests/serving (trained once per machine); the Celery worker subprocess
    # inherits the environment, so it scores shadow requests with the same stacks.
    os.environ.setdefault("RANKERS_ARTIFACTS_DIR", str(ROOT / "var" / "rankers-test"))
    os.environ.setdefault("RANKERS_WORLD", "small")
    yield


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # seed_demo creates four users; PBKDF2 at full strength costs seconds on a shared CPU.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
