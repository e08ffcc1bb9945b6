"""Shared fixtures: real services (PostgreSQL, Redis, a Celery worker), roles and API clients.

Services come from the environment the README's test command sets up (DATABASE_URL, REDIS_URL).
Locally a test that needs a missing service is skipped with the reason; under CI=true it fails,
so CI can never go green by skipping the real thing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PASSWORD = "correct-horse-battery-staple-42"


def require_service(name: str, available: bool, how: str) -> None:
    """Skip locally, fail in CI, when a real service a test needs is missing."""
    if available:
        return
    message = f"{name} is not available ({how})"
    if IN_CI:
        pytest.fail(f"CI requires {message}", pytrace=False)
    pytest.skip(message)


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    # Browser tests need the live server and Chromium; tag them so `-m "not browser"` is quick.
    for item in items:
        if "browser" in str(item.fspath):
            item.add_marker(pytest.mark.browser)
    # The SQLite pass (`-m sqlite_path`) leaves out a test that needs PostgreSQL even when its module
    # is on the SQLite path: it ran in the PostgreSQL pass, and in CI it would fail here for want of
    # the service the pass deliberately does not use.
    if getattr(config.option, "markexpr", "") == "sqlite_path":
        needs_postgres = [item for item in items if "postgres" in getattr(item, "fixturenames", ())]
        if needs_postgres:
            config.hook.pytest_deselected(items=needs_postgres)
            items[:] = [item for item in items if item not in needs_postgres]


@pytest.fixture
def postgres(settings: Any) -> None:
    require_service(
        "PostgreSQL",
        settings.DATABASES["default"]["ENGINE"].endswith("postgresql"),
        "set DATABASE_URL=postgres://… or run the README's test command",
    )


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "")
    available = False
    if url:
        import redis

        try:
            available = bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
        except redis.RedisError:
            available = False
    require_service("Redis", available, "set REDIS_URL=redis://… or run the README's test command")
    return url


@pytest.fixture
def make_user(db: Any) -> Any:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    def make(username: str, *roles: str, superuser: bool = False) -> Any:
        user = get_user_model().objects.create_user(
            username=username, password=PASSWORD, is_superuser=superuser
        )
        for role in roles:
            group, _ = Group.objects.get_or_create(name=role)
            user.groups.add(group)
        return user

    return make


@pytest.fixture
def users(make_user: Any) -> dict[str, Any]:
    return {
        "viewer": make_user("vera", "viewer"),
        "operator": make_user("otto", "operator"),
        "approver": make_user("anna", "approver"),
        "operator2": make_user("olga", "operator", "approver"),
        "serving": make_user("fleet", "serving"),
        "norole": make_user("nobody"),
    }


@pytest.fixture
def api_client_for() -> Any:
    from knox.models import AuthToken
    from rest_framework.test import APIClient

    tokens: dict[int, str] = {}

    def client_for(user: Any | None) -> APIClient:
        client = APIClient()
        if user is not None:
            # Hashed, expiring knox tokens: the plain token exists only here, once per user.
            if user.pk not in tokens:
                tokens[user.pk] = AuthToken.objects.create(user=user)[1]
            client.credentials(HTTP_AUTHORIZATION=f"Token {tokens[user.pk]}")
        return client

    return client_for


@pytest.fixture
def seeded(db: Any) -> dict[str, Any]:
    """The demo registry: three stacks, pages (content-first) and groups (split 60/40)."""
    from django.core.management import call_command

    from controlplane.core.models import RankingStack, Surface

    call_command("seed_demo", "--no-users", verbosity=0)
    return {
        "pages": Surface.objects.get(key="pages"),
        "groups": Surface.objects.get(key="groups"),
        "content_first": RankingStack.objects.get(key="content-first"),
        "interest_first": RankingStack.objects.get(key="interest-first"),
        "unified": RankingStack.objects.get(key="unified-mtl"),
    }


def database_url_for_subprocess() -> str:
    """The URL of the database this test process uses (the test database), for child processes."""
    from django.conf import settings
    from django.db import connection

    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("postgresql"):
        name = connection.settings_dict["NAME"]
        user = db.get("USER") or "postgres"
        host = db.get("HOST") or "127.0.0.1"
        port = db.get("PORT") or 5432
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        return f"postgres://{user}{password}@{host}:{port}/{name}"
    return f"sqlite:///{connection.settings_dict['NAME']}"


@pytest.fixture
def celery_worker_process(redis_url: str, transactional_db: Any, tmp_path: Path) -> Iterator[Any]:
    """A real `celery worker` child process on Redis and this test's database.

    Yields a handle with ``.proc`` and ``.kill()`` so fault tests can kill it mid-task.
    """
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_subprocess(),
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "SECRET_KEY": os.environ.get("SECRET_KEY", "test-secret-key-not-for-production-" + "x" * 20),
        # The tests drive ramps on a simulated clock through real workers (a test-only setting).
        "SIMULATED_CLOCK_ALLOWED": os.environ.get("SIMULATED_CLOCK_ALLOWED", "true"),
        "CONTROLPLANE_VAR_DIR": str(tmp_path / "var"),
    }
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "controlplane.celery",
            "worker",
            "--pool=solo",
            "--concurrency=1",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "-Q",
            "celery",
            "-n",
            f"test-{os.getpid()}-{time.monotonic_ns()}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    class Handle:
        def __init__(self) -> None:
            self.proc = proc
            self.log_path = tmp_path / "worker.log"

        def kill(self) -> None:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

        def log(self) -> str:
            return self.log_path.read_text()

    handle = Handle()
    # Wait until the worker is consuming.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"celery worker exited early:\n{handle.log()}")
        if "ready." in handle.log():
            break
        time.sleep(0.2)
    else:
        handle.kill()
        raise RuntimeError(f"celery worker did not start:\n{handle.log()}")
    try:
        yield handle
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


@pytest.fixture
def celery_app_on_redis(redis_url: str) -> Any:
    """This process's Celery app, required to be on Redis (the README's test command sets that up)."""
    from controlplane.celery import app

    require_service(
        "Celery on Redis",
        str(app.conf.broker_url).startswith("redis"),
        "set CELERY_BROKER_URL=$REDIS_URL before starting the tests",
    )
    return app
