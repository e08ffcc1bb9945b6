"""Serving test fixtures: one trained stack bundle per machine, shared with worker subprocesses."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", autouse=True)
def _rankers_artifacts_dir() -> Iterator[None]:
    # The Celery worker subprocess inherits this, so it loads the bundle the tests trained.
    os.environ.setdefault("RANKERS_ARTIFACTS_DIR", str(ROOT / "var" / "rankers-test"))
    os.environ.setdefault("RANKERS_WORLD", "small")
    yield


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # The role fixtures create several users; PBKDF2 at full strength costs seconds on a shared CPU.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_router() -> Iterator[None]:
    from controlplane.serving.routing import router_reset

    router_reset()
    yield
    router_reset()


@pytest.fixture
def stacks() -> Any:
    """The process-wide stack registry with the small world loaded."""
    from controlplane.serving.stacks import stack_registry

    registry = stack_registry()
    registry.bundle()
    return registry


@pytest.fixture
def operator_client(users: dict[str, Any], api_client_for: Any) -> Any:
    return api_client_for(users["operator"])


@pytest.fixture
def serving_client(users: dict[str, Any], api_client_for: Any) -> Any:
    return api_client_for(users["serving"])


@pytest.fixture
def viewer_client(users: dict[str, Any], api_client_for: Any) -> Any:
    return api_client_for(users["viewer"])
