"""``/healthz`` (the process answers) and ``/readyz`` (database, broker and cache reachable, migrations
applied), on django-health-check.

Both are anonymous and cheap, and leak nothing: the body names each check and says ``ok`` or
``unavailable`` — never an exception, host name or URL (details go to the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from django.db import connections
from django.http import HttpRequest, JsonResponse
from health_check.base import HealthCheck
from health_check.checks import Cache, Database
from health_check.exceptions import ServiceUnavailable
from health_check.views import HealthCheckView

log = logging.getLogger(__name__)

_migrations_applied = False


@dataclasses.dataclass
class Broker(HealthCheck):
    """The Celery broker accepts a connection (Redis, or the filesystem transport's folders)."""

    timeout = dt.timedelta(seconds=2)

    def run(self) -> None:
        from django.conf import settings

        from controlplane.celery import app

        try:
            with app.connection_for_write(
                settings.CELERY_BROKER_URL, transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS
            ) as conn:
                conn.ensure_connection(max_retries=0, timeout=self.timeout.total_seconds())
        except Exception as exc:
            log.warning("readyz: broker unreachable: %r", exc)
            raise ServiceUnavailable("unavailable") from None


@dataclasses.dataclass
class Migrations(HealthCheck):
    """Every migration on disk is applied (once true, a process remembers: code changes restart it)."""

    def run(self) -> None:
        global _migrations_applied
        if _migrations_applied:
            return
        from django.db import connection
        from django.db.migrations.executor import MigrationExecutor

        executor = MigrationExecutor(connection)
        if executor.migration_plan(executor.loader.graph.leaf_nodes()):
            raise ServiceUnavailable("unapplied migrations")
        _migrations_applied = True


CHECK_NAMES = {Database: "database", Cache: "cache", Broker: "broker", Migrations: "migrations"}


class ReadinessView(HealthCheckView):
    """django-health-check's checks and runner, answered with a terse JSON body of our own."""

    checks = (Database, Cache, Broker, Migrations)

    @contextlib.contextmanager
    def get_executor(self) -> Iterator[Executor]:
        # Sync checks run on one short-lived thread; its database connection is closed with it.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="readyz") as executor:
            try:
                yield executor
            finally:
                executor.submit(connections.close_all).result()

    async def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        with self.get_executor() as executor:
            results = await asyncio.gather(*(check.get_result(executor) for check in self.get_checks()))
        checks = {
            CHECK_NAMES.get(type(r.check), type(r.check).__name__.lower()): "unavailable" if r.error else "ok"
            for r in results
        }
        ready = all(value == "ok" for value in checks.values())
        # 503: load balancers and Kubernetes read it as "not ready, try again later".
        return JsonResponse(
            {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
        )


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process is up and serving; touches nothing else."""
    return JsonResponse({"status": "ok"})
