"""``build_stack``: the one entry point the router and the Django side use to get a stack."""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import Any

from rankers.engine.artifacts import has_artifact, load_stack, save_stacks
from rankers.engine.training import TrainConfig, TrainedStacks, train_all
from rankers.engine.types import STACK_KINDS
from rankers.engine.world import World

_TRAINED: weakref.WeakKeyDictionary[World, TrainedStacks] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def trained_stacks(
    world: World, config: TrainConfig | None = None, progress: bool = False, device: str | None = None
) -> TrainedStacks:
    """Train all three stacks for ``world`` once per process (they share the legacy logs)."""
    with _LOCK:
        trained = _TRAINED.get(world)
        if trained is None:
            trained = train_all(world, config, progress=progress, device=device)
            _TRAINED[world] = trained
        return trained


def build_stack(
    kind: str, world: World, artifacts_dir: str | Path | None = None, device: str | None = None
) -> Any:
    """A ready stack of ``kind`` ('content_first' | 'interest_first' | 'unified_mtl') for ``world``.

    Loads trained artifacts from ``artifacts_dir`` when they exist for this world (sha256 and
    world config checked); otherwise trains (quick for a small world) and, when
    ``artifacts_dir`` is given, saves the artifacts there for next time.
    """
    if kind not in STACK_KINDS:
        raise ValueError(f"kind must be one of {STACK_KINDS}, got {kind!r}")
    if artifacts_dir is not None and has_artifact(Path(artifacts_dir), world, kind):
        return load_stack(kind, world, Path(artifacts_dir), device=device)
    trained = trained_stacks(world, device=device)
    if artifacts_dir is not None:
        save_stacks(trained, Path(artifacts_dir))
    return trained.stack(kind)
