"""Fault-suite helpers: a Redis server of the test's own (to stop and restart), Celery workers on
any broker, and PostgreSQL table locks that park a worker mid-transaction deterministically.

Everything here is a real service or a real process: the worker is ``celery worker`` as production
runs it (only the broker address and, where a test says so, the visibility timeout differ).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, database_url_for_subprocess, require_service


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # The role fixtures create several users; PBKDF2 at full strength costs seconds on a shared CPU.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``condition`` until it is truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throwaway ``redis-server`` owned by one test: it can be killed and started again.

    The append-only file is fsynced on every write, so a restart finds the queues (and the
    unacknowledged messages) as a production broker with persistence would.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def result_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/1"

    def start(self) -> None:
        import redis

        log = (self.workdir / "redis.log").open("a")
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_until(lambda: self._ping(client), timeout=20, what="redis-server to accept connections")

    @staticmethod
    def _ping(client: Any) -> bool:
        import redis

        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """The broker goes down hard (SIGKILL: no shutdown, clients see their sockets reset)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def client(self, db: int = 0) -> Any:
        import redis

        return redis.Redis(port=self.port, db=db, socket_connect_timeout=1)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    require_service(
        "redis-server",
        shutil.which("redis-server") is not None,
        "install redis-server (scripts/test.sh does) so a test can stop its own broker",
    )
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()


class Worker:
    """A ``celery worker`` child process; ``log()`` reads its output."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pool_children(self) -> list[int]:
        """PIDs of the prefork pool processes (children of the worker's main process)."""
        out = []
        for status in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = status.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                out.append(int(status.parent.name))
        return sorted(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """Teardown: the worker and its pool processes go at once (a throwaway worker has nothing
        to finish, and a warm shutdown costs seconds per test)."""
        children = self.pool_children()
        self.kill()
        for pid in children:  # never leave an orphaned pool process behind
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def publish(broker_url: str, task: str, *args: Any) -> str:
    """Send ``task`` by name to the broker at ``broker_url`` with the product's Celery settings.

    (This process's app is pinned to the session's Redis by CELERY_BROKER_URL, which Celery reads
    before its configuration; ``broker_write_url`` is the documented way to publish elsewhere.)
    """
    from celery import Celery

    producer = Celery("faults-producer", set_as_current=False)
    producer.config_from_object("django.conf:settings", namespace="CELERY")
    producer.conf.broker_write_url = broker_url
    try:
        return str(producer.send_task(task, args=list(args), ignore_result=True).id)
    finally:
        producer.close()


@pytest.fixture
def start_worker(transactional_db: Any, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start real ``celery worker`` processes on a given broker and this test's database."""
    started: list[Worker] = []

    def start(
        broker_url: str,
        result_url: str,
        *,
        pool: str = "solo",
        name: str = "w",
        visibility_timeout: float | None = None,
    ) -> Worker:
        env = {
            **os.environ,
            "DATABASE_URL": database_url_for_subprocess(),
            "CELERY_BROKER_URL": broker_url,
            "CELERY_RESULT_BACKEND": result_url,
            "SECRET_KEY": os.environ.get("SECRET_KEY", "test-secret-key-not-for-production-" + "x" * 20),
            "CONTROLPLANE_VAR_DIR": str(tmp_path / "var"),
        }
        app = "controlplane.celery"
        if visibility_timeout is not None:
            # Redis redelivers an unacknowledged message after the visibility timeout (an hour by
            # default); the test shortens it to see the redelivery within seconds.
            env["FAULTS_VISIBILITY_TIMEOUT"] = str(visibility_timeout)
            app = "tests.faults.worker_app"
        log_path = tmp_path / f"worker-{name}-{len(started)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, "worker", f"--pool={pool}", "--concurrency=1",
             "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat", "-Q", "celery",
             "-n", f"{name}-{os.getpid()}-{time.monotonic_ns()}@%h"],
            cwd=ROOT, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        worker = Worker(proc, log_path)
        started.append(worker)

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"celery worker exited early:\n{worker.log()}")
            return "ready." in worker.log()

        wait_until(ready, timeout=60, what="the celery worker to be ready", every=0.1)
        return worker

    yield start
    for worker in started:
        worker.stop()


# -- runbook state: what a transition writes ----------------------------------------------------------
def snapshot(runbooks: list[Any]) -> dict[int, dict[str, Any]]:
    """Everything a transition writes, per runbook."""
    from controlplane.core.models import Allocation, AuditEvent
    from migrations_runbooks.models import Runbook, StepEvaluation

    out = {}
    for rb in runbooks:
        row = Runbook.objects.get(pk=rb.pk)
        out[rb.pk] = {
            "status": row.status,
            "current_step": row.current_step,
            "ticks": row.ticks,
            "last_tick_at": row.last_tick_at,
            "next_check_at": row.next_check_at,
            "step_started_at": row.step_started_at,
            "allocation_versions": list(
                Allocation.objects.filter(surface_id=row.surface_id)
                .order_by("version")
                .values_list("version", flat=True)
            ),
            "audit": list(
                AuditEvent.objects.filter(target_id=str(rb.pk), target_type="migrations_runbooks.runbook")
                .order_by("id")
                .values_list("verb", flat=True)
            ),
            "surface_audit": AuditEvent.objects.filter(surface_key=row.surface.key).count(),
            "ramps": AuditEvent.objects.filter(verb="allocation.ramp", surface_key=row.surface.key).count(),
            "evaluations": StepEvaluation.objects.filter(runbook=rb).count(),
        }
    return out


def assert_advanced_once(runbooks: list[Any], before: dict[int, dict[str, Any]]) -> None:
    from controlplane.core.models import Allocation, AuditEvent
    from migrations_runbooks.models import StepEvaluation

    for rb in runbooks:
        rb.refresh_from_db()
        assert (rb.status, rb.current_step) == ("running", 1), (rb.pk, rb.status, rb.status_reason)
        versions = list(
            Allocation.objects.filter(surface_id=rb.surface_id)
            .order_by("version")
            .values_list("version", flat=True)
        )
        assert versions == [
            *before[rb.pk]["allocation_versions"],
            before[rb.pk]["allocation_versions"][-1] + 1,
        ]
        assert AuditEvent.objects.filter(verb="runbook.advance", target_id=str(rb.pk)).count() == 1
        assert StepEvaluation.objects.filter(runbook=rb, outcome="advance").count() == 1
        ramps = AuditEvent.objects.filter(verb="allocation.ramp", surface_key=rb.surface.key).count()
        assert ramps == before[rb.pk]["ramps"] + 1, "one audited allocation change per transition"


# -- PostgreSQL: park a transaction on a lock the test holds ------------------------------------------
def pg_connect() -> Any:
    import psycopg

    return psycopg.connect(database_url_for_subprocess(), autocommit=True)


@contextmanager
def table_locked(table: str) -> Iterator[Any]:
    """Hold ACCESS EXCLUSIVE on ``table`` from a separate connection until the block ends.

    Any other transaction that touches the table (even a SELECT) waits inside its transaction —
    a deterministic "slow statement" with no sleeps in product code.
    """
    conn = pg_connect()
    conn.execute("BEGIN")
    conn.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def lock_waiters(table: str) -> list[int]:
    """Backend PIDs waiting for a lock on ``table``."""
    with pg_connect() as conn:
        rows = conn.execute(
            "SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = %s AND NOT l.granted",
            [table],
        ).fetchall()
    return [r[0] for r in rows]


def backend_gone(pid: int) -> bool:
    with pg_connect() as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()[0] == 0
