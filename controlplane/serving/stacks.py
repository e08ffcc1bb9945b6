"""Process-wide registry of live ranking stacks (the engine objects behind the registry's labels).

Each web or worker process loads the three stacks of one simulated world once, lazily, on the
first request that needs one. Where they come from:

``rankers.engine.build_stack(kind, world, artifacts_dir=RANKERS_ARTIFACTS_DIR)`` for the world
``World.build(WorldConfig.named(RANKERS_WORLD, seed=RANKERS_WORLD_SEED))``: trained artifacts
(``python -m rankers.engine.train --world small --out $RANKERS_ARTIFACTS_DIR``; sha256 and world
config verified) are loaded when present; otherwise the stacks are trained in process (seconds for
``small``) and saved there for the next process. Unusable artifacts are logged and trained around,
never served. A file lock makes concurrent processes (gunicorn workers, a Celery worker) train once.

Settings / environment: ``RANKERS_WORLD`` (``small`` | ``default``, default ``small``),
``RANKERS_WORLD_SEED`` (7), ``RANKERS_ARTIFACTS_DIR`` (``<repo>/artifacts``),
``SERVING_TORCH_THREADS`` (1: one intra-op thread per request thread keeps p99 flat when
several workers share the cores), ``SERVING_FAULTS`` (JSON ``{label: {"error": msg} |
{"delay_ms": n}}``, fault injection for drills and tests).

Torch is imported inside functions so the web process starts fast (STYLE: heavy imports).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

from controlplane.core.assignment import unit_key

logger = logging.getLogger(__name__)

_UNIT = re.compile(r"^u?([0-9]{1,18})$")
STACK_KINDS = ("content_first", "interest_first", "unified_mtl")


class StackUnavailable(Exception):
    """A stack raised, timed out or could not be loaded."""

    def __init__(self, label: str, reason: str, message: str) -> None:
        super().__init__(f"{label}: {reason}: {message}")
        self.label = label
        self.reason = reason  # "error" | "timeout"
        self.message = message


_settings_cache: dict[tuple[str, Any], Any] = {}


def setting(name: str, default: Any) -> Any:
    """A serving knob: Django setting first, then the environment, then the default.

    Cached per process (the router reads several per request); a changed Django setting — in
    tests, ``override_settings`` or pytest-django's ``settings`` — clears the cache.
    """
    key = (name, default)
    try:
        return _settings_cache[key]
    except KeyError:
        pass
    if hasattr(settings, name):
        value = getattr(settings, name)
    else:
        raw = os.environ.get(name)
        if raw is None or raw == "":
            value = default
        elif isinstance(default, bool):
            value = raw.strip().lower() in {"1", "true", "yes", "on"}
        elif isinstance(default, int):
            value = int(raw)
        elif isinstance(default, float):
            value = float(raw)
        else:
            value = raw
    _settings_cache[key] = value
    return value


def _forget_settings(**kwargs: Any) -> None:
    _settings_cache.clear()


setting_changed.connect(_forget_settings, dispatch_uid="serving-settings-cache")


def world_user(unit_id: str | int, n_users: int) -> int:
    """The simulated world's user standing in for a control-plane unit id.

    ``u<int>`` and ``<int>`` map to that user (modulo the world size); any other valid unit id maps
    through the assignment library's 64-bit unit key, so every unit the router accepts gets a
    deterministic user in the feature store.
    """
    match = _UNIT.match(unit_id) if isinstance(unit_id, str) else None
    if match:
        return int(match.group(1)) % n_users
    return unit_key(unit_id) % n_users


def unit_for_user(user: int) -> str:
    return f"u{int(user)}"


@dataclass
class _Bundle:
    world: Any
    stacks: dict[str, Any]  # kind -> engine stack


class _FaultyStack:
    """Wraps a real stack with an injected fault (drills, tests): raise, or stall before ranking."""

    def __init__(self, inner: Any, fault: Mapping[str, Any]) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.stack_key = inner.stack_key
        self.fault = dict(fault)

    def rank(self, request: Any) -> Any:
        if "delay_ms" in self.fault:
            time.sleep(float(self.fault["delay_ms"]) / 1e3)
        if "error" in self.fault:
            raise RuntimeError(str(self.fault["error"]))
        return self.inner.rank(request)


class StackRegistry:
    """Engine stacks by registry label, built lazily from one simulated world per process."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._bundle: _Bundle | None = None
        self._by_label: dict[tuple[str, str], Any] = {}
        self._overrides: dict[str, Any] = {}
        self._effects: dict[str, Any] = {}
        self._faults: dict[str, dict[str, Any]] = {}
        raw = setting("SERVING_FAULTS", "")
        if raw:
            self._faults = {
                str(k): dict(v) for k, v in (json.loads(raw) if isinstance(raw, str) else raw).items()
            }
        self._executor: ThreadPoolExecutor | None = None

    # -- world ------------------------------------------------------------------------------------
    @property
    def world_name(self) -> str:
        return str(setting("RANKERS_WORLD", "small"))

    def bundle(self) -> _Bundle:
        if self._bundle is None:
            with self._lock:
                if self._bundle is None:
                    self._bundle = self._load()
        return self._bundle

    @property
    def world(self) -> Any:
        return self.bundle().world

    def _artifacts_dir(self) -> Path:
        default = Path(getattr(settings, "BASE_DIR", Path("."))) / "artifacts"
        return Path(setting("RANKERS_ARTIFACTS_DIR", str(default)))

    def _load(self) -> _Bundle:
        import torch

        torch.set_num_threads(int(setting("SERVING_TORCH_THREADS", 1)))
        from rankers.engine import World, WorldConfig, build_stack

        seed = int(setting("RANKERS_WORLD_SEED", 7))
        directory = self._artifacts_dir()
        directory.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        world = World.build(WorldConfig.named(self.world_name, seed=seed))
        with (directory / ".serving-build.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process trains and saves; the others wait, then load
            try:
                try:
                    stacks = {kind: build_stack(kind, world, artifacts_dir=directory) for kind in STACK_KINDS}
                except Exception:  # stale or corrupt artifacts are never served: train in process instead
                    logger.exception("artifacts in %s are unusable; training in process", directory)
                    stacks = {kind: build_stack(kind, world) for kind in STACK_KINDS}
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        logger.info(
            "serving stacks for world %s ready in %.1f s", self.world_name, time.perf_counter() - started
        )
        return _Bundle(world, stacks)

    # -- stacks -----------------------------------------------------------------------------------
    def get(self, label: str, kind: str) -> Any:
        """The engine stack serving ``label`` (a registry stack of ``kind``), with effects and faults."""
        stack = self._overrides.get(label)
        if stack is None:
            key = (label, kind)
            stack = self._by_label.get(key)
            if stack is None:
                base = self.bundle().stacks.get(kind)
                if base is None:
                    raise StackUnavailable(label, "error", f"no engine stack of kind {kind!r}")
                from rankers.engine.world import Effects

                stack = base.with_effects(Effects(), stack_key=label)
                stack.log_features = False  # the router does not ship feature logs
                self._by_label[key] = stack
        effects = self._effects.get(label)
        if effects is not None and hasattr(stack, "with_effects"):
            stack = stack.with_effects(effects)
        fault = self._faults.get(label)
        if fault:
            stack = _FaultyStack(stack, fault)
        return stack

    def rank(self, label: str, kind: str, request: Any, timeout_ms: float | None) -> tuple[Any, float]:
        """Rank under a deadline; returns (result, wall ms). Raises :class:`StackUnavailable`.

        The stack runs on a small thread pool so the caller can stop waiting at the deadline; a
        timed-out computation finishes in the background and its result is discarded (a Python
        thread cannot be cancelled).
        """
        started = time.perf_counter()
        try:
            stack = self.get(label, kind)
        except StackUnavailable:
            raise
        except Exception as exc:
            raise StackUnavailable(label, "error", f"could not load: {exc}") from exc
        if timeout_ms is None:
            try:
                result = stack.rank(request)
            except Exception as exc:
                raise StackUnavailable(label, "error", f"{type(exc).__name__}: {exc}") from exc
            return result, (time.perf_counter() - started) * 1e3
        future = self.executor().submit(stack.rank, request)
        try:
            result = future.result(timeout=timeout_ms / 1e3)
        except FutureTimeout as exc:
            future.cancel()
            raise StackUnavailable(label, "timeout", f"no answer within {timeout_ms:.0f} ms") from exc
        except Exception as exc:
            raise StackUnavailable(label, "error", f"{type(exc).__name__}: {exc}") from exc
        return result, (time.perf_counter() - started) * 1e3

    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        max_workers=int(setting("SERVING_RANK_THREADS", 8)), thread_name_prefix="rank"
                    )
        return self._executor

    # -- test and simulation knobs ----------------------------------------------------------------
    @contextlib.contextmanager
    def overriding(self, label: str, stack: Any) -> Iterator[None]:
        """Serve ``label`` with ``stack`` inside the block (e.g. a differently trained model)."""
        with self._lock:
            previous = self._overrides.get(label)
            self._overrides[label] = stack
        try:
            yield
        finally:
            with self._lock:
                if previous is None:
                    self._overrides.pop(label, None)
                else:
                    self._overrides[label] = previous

    @contextlib.contextmanager
    def with_effects(self, effects_by_label: Mapping[str, Any]) -> Iterator[None]:
        """Inject simulation effects (``rankers.engine.world.Effects``) into stacks by label."""
        with self._lock:
            previous = dict(self._effects)
            self._effects.update(effects_by_label)
        try:
            yield
        finally:
            with self._lock:
                self._effects = previous

    @contextlib.contextmanager
    def faults(self, faults_by_label: Mapping[str, Mapping[str, Any]]) -> Iterator[None]:
        """Inject faults by label inside the block: ``{"error": msg}`` or ``{"delay_ms": n}``."""
        with self._lock:
            previous = dict(self._faults)
            self._faults.update({k: dict(v) for k, v in faults_by_label.items()})
        try:
            yield
        finally:
            with self._lock:
                self._faults = previous

    def effects_for(self, label: str) -> Any:
        return self._effects.get(label)


_registry: StackRegistry | None = None
_registry_lock = threading.Lock()


def stack_registry() -> StackRegistry:
    """The process-wide registry (created on first use, after fork in gunicorn/Celery workers)."""
    global _registry
    if _registry is None:
        with _registry_lock:
            if _registry is None:
                _registry = StackRegistry()
    return _registry
