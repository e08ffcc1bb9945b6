"""Hot-path infrastructure of the router: the per-process allocation cache and the log buffer.

Route cache
-----------
A surface's :class:`~controlplane.core.assignment.AllocationConfig`, its stacks' kinds and timeouts
and its fallback stack are cached per process, keyed by the surface. Each request re-validates
the entry with one indexed query (surface id, production stack, ``updated_at`` and the id of the
newest allocation) at most every ``SERVING_CONFIG_TTL_S`` seconds (default 1 s; 0 under pytest
and 0 means every request): a promotion or a new allocation version reaches the router within
that interval, as it reaches a serving fleet that polls the published config. The query is most
of the router's own cost (see bench/serving.py), hence the interval.

Log buffer
----------
Exposures, latency samples and impression logs are appended to an in-process buffer and written
in bulk: exposures with ``INSERT … ON CONFLICT DO NOTHING`` (the first exposure per unit and salt
wins), the rest as plain multi-row inserts. ``SERVING_LOG_MODE=sync`` (default) writes at the end
of every request; ``background`` lets a daemon thread write every ``SERVING_LOG_FLUSH_MS``, taking
the database off the request path (at the price of losing up to one interval of logs if the
process dies). :func:`deferred_logging` batches a block of requests into one write (simulation).
A per-process set of already-logged (surface, salt, unit) keys skips the exposure insert for
units this process has logged before.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection, transaction

from controlplane.core.assignment import AllocationConfig
from controlplane.core.errors import ApplicationError
from controlplane.core.models import Allocation, RankingStack, Surface
from controlplane.core.selectors import allocation_config, allocation_current
from controlplane.serving.bulk import insert_rows
from controlplane.serving.stacks import setting

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StackInfo:
    label: str
    kind: str
    latency_slo_ms: float


@dataclass(slots=True)
class Route:
    surface_id: int
    surface_key: str
    stamp: tuple[Any, ...]
    allocation_id: int
    config: AllocationConfig
    stacks: dict[str, StackInfo]
    production: str | None
    checked_at: float = field(default=0.0)

    def fallback_for(self, population_stack: str) -> str:
        """The stack that serves when the assigned one fails: production, else the legacy stack."""
        return self.production or population_stack


# Re-validate the cached allocation at most once a second in serving processes (like a fleet polling
# the published config: a change reaches the router within a second; the check is most of the
# router's own cost). Tests see every change at once.
DEFAULT_TTL_S = 0.0 if getattr(settings, "TESTING", False) else 1.0

_STAMP_SQL = (
    f"SELECT s.id, s.production_stack_id, s.updated_at, "
    f"(SELECT a.id FROM {Allocation._meta.db_table} a WHERE a.surface_id = s.id ORDER BY a.version DESC LIMIT 1) "
    f"FROM {Surface._meta.db_table} s WHERE s.key = %s"
)


class RouteCache:
    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self._pinned = 0

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """Skip re-validation inside the block (a simulation run under one fixed allocation)."""
        with self._lock:
            self._pinned += 1
        try:
            yield
        finally:
            with self._lock:
                self._pinned -= 1

    def clear(self) -> None:
        with self._lock:
            self._routes.clear()

    def get(self, surface_key: str, *, fresh: bool = False) -> Route:
        """The surface's route; ``fresh`` re-validates even inside the TTL or a pinned block."""
        ttl = float(setting("SERVING_CONFIG_TTL_S", DEFAULT_TTL_S))
        cached = self._routes.get(surface_key)
        now = time.monotonic()
        if not fresh and cached is not None and (self._pinned or (ttl > 0 and now - cached.checked_at < ttl)):
            return cached
        # One indexed query, written out: the ORM would spend longer compiling it than PostgreSQL
        # spends answering it, on every request.
        with connection.cursor() as cursor:
            cursor.execute(_STAMP_SQL, [surface_key])
            row = cursor.fetchone()
        if row is None:
            raise ApplicationError(
                f"unknown surface {surface_key!r}", field="surface", code="unknown_surface", http_status=404
            )
        if row[3] is None:
            raise ApplicationError(
                f"surface {surface_key!r} has no allocation",
                field="surface",
                code="no_allocation",
                http_status=409,
            )
        if cached is not None and cached.stamp == row:
            cached.checked_at = now
            return cached
        route = self._build(surface_key, row)
        route.checked_at = now
        with self._lock:
            self._routes[surface_key] = route
        return route

    @staticmethod
    def _build(surface_key: str, stamp: tuple[Any, ...]) -> Route:
        surface = Surface.objects.select_related("production_stack").get(pk=stamp[0])
        allocation = allocation_current(surface=surface)
        assert allocation is not None
        config = allocation_config(allocation)
        labels = {p.stack for p in config.populations}
        labels.update(x for x in (config.treatment_stack, config.shadow_stack) if x)
        if surface.production_stack:
            labels.add(surface.production_stack.label)
        stacks: dict[str, StackInfo] = {}
        for stack in RankingStack.objects.all():
            if stack.label in labels:
                stacks[stack.label] = StackInfo(stack.label, stack.kind, stack.latency_slo_ms)
        return Route(
            surface_id=surface.pk,
            surface_key=surface_key,
            stamp=tuple(stamp),
            allocation_id=allocation.pk,
            config=config,
            stacks=stacks,
            production=surface.production_stack.label if surface.production_stack else None,
        )


# Serving log rows travel as plain tuples in these column orders: building a model instance per
# logged item would cost more than the rest of the router (tens of µs each, 50 items a request).
LATENCY_COLUMNS = (
    "surface_id", "request_id", "unit_id", "arm", "population", "stack", "salt", "allocation_version", "ts", "ms",
    "stack_ms", "router_ms", "status", "fallback_from", "error", "source", "batch_id",
)  # fmt: skip
IMPRESSION_COLUMNS = (
    "surface_id", "request_id", "unit_id", "stack", "arm", "post_id", "position", "score", "propensity",
    "explored", "reward", "served_at",
)  # fmt: skip


class LogBuffer:
    """Serving log rows waiting to be written (see module docstring)."""

    SEEN_MAX = 500_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._exposures: list[Any] = []
        self._latency: list[Any] = []
        self._impressions: list[Any] = []
        self._seen: OrderedDict[tuple[int, str, str], None] = OrderedDict()
        self._defer_depth = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.dropped = 0

    # -- producers --------------------------------------------------------------------------------
    def exposure_seen(self, key: tuple[int, str, str]) -> bool:
        return key in self._seen

    def add(
        self, *, exposure: Any = None, exposure_key: Any = None, latency: Any = None, impressions: Any = ()
    ) -> None:
        with self._lock:
            if exposure is not None:
                self._exposures.append(exposure)
                self._seen[exposure_key] = None
                if len(self._seen) > self.SEEN_MAX:
                    self._seen.popitem(last=False)
            if latency is not None:
                self._latency.append(latency)
            self._impressions.extend(impressions)

    @property
    def mode(self) -> str:
        return str(setting("SERVING_LOG_MODE", "sync"))

    def after_request(self) -> None:
        if self._defer_depth:
            return
        if self.mode == "background":
            self._ensure_thread()
            return
        self.flush()

    # -- writers ----------------------------------------------------------------------------------
    def flush(self) -> int:
        from controlplane.serving.models import Exposure, LatencySample, ServedImpression

        with self._lock:
            exposures, self._exposures = self._exposures, []
            latency, self._latency = self._latency, []
            impressions, self._impressions = self._impressions, []
        if not (exposures or latency or impressions):
            return 0
        try:
            with transaction.atomic():
                if exposures:
                    Exposure.objects.bulk_create(exposures, ignore_conflicts=True)
                insert_rows(LatencySample._meta.db_table, LATENCY_COLUMNS, latency)
                insert_rows(ServedImpression._meta.db_table, IMPRESSION_COLUMNS, impressions)
        except Exception:
            # Logging must never fail a served request; forget the keys so exposures are retried.
            with self._lock:
                for exposure in exposures:
                    self._seen.pop((exposure.surface_id, exposure.salt, exposure.unit_id), None)
            self.dropped += len(exposures) + len(latency) + len(impressions)
            logger.exception(
                "serving log flush failed; dropped %d rows", len(exposures) + len(latency) + len(impressions)
            )
            if self.mode != "background":
                raise
        return len(exposures) + len(latency) + len(impressions)

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._run, name="serving-log-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        interval = float(setting("SERVING_LOG_FLUSH_MS", 200.0)) / 1e3
        stop = self._stop
        while not stop.wait(interval):
            try:
                close_old_connections()
                self.flush()
            except Exception:  # keep the writer alive; flush() already logged it
                time.sleep(interval)
        try:
            self.flush()
        finally:
            connection.close()  # this thread's own connection

    def stop(self) -> None:
        """Flush and stop the background writer (tests; process shutdown)."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._stop.set()
            thread.join(10)
        self._thread = None
        self._stop = threading.Event()

    def reset(self) -> None:
        with self._lock:
            self._exposures.clear()
            self._latency.clear()
            self._impressions.clear()
            self._seen.clear()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        with self._lock:
            self._defer_depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._defer_depth -= 1
            if not self._defer_depth:
                self.flush()


route_cache = RouteCache()
log_buffer = LogBuffer()
atexit.register(log_buffer.stop)


def deferred_logging() -> contextlib.AbstractContextManager[None]:
    """Write the serving logs of every request inside the block in one go at its end."""
    return log_buffer.deferred()


def router_reset() -> None:
    """Forget cached routes, logged-exposure keys and cached knobs (tests; after restoring a database)."""
    from controlplane.serving.stacks import _forget_settings

    log_buffer.stop()
    route_cache.clear()
    log_buffer.reset()
    _forget_settings()
