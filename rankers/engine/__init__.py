"""Pure ranking engine (torch + numpy, no Django): simulated world, three stacks, training.

Public API::

    from rankers.engine import World, WorldConfig, Effects, RankRequest, build_stack
    world = World.build(WorldConfig.small())
    stack = build_stack("unified_mtl", world)
    result = stack.rank(RankRequest(user_id=3, surface="pages"))
    outcome = world.simulate_impressions(3, result.post_ids, effects=stack.effects)

Names are resolved lazily (PEP 562) so that importing the numpy-only world does not import
torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "ACTIONS": "rankers.engine.world",
    "HEADS": "rankers.engine.world",
    "Effects": "rankers.engine.world",
    "Impressions": "rankers.engine.world",
    "World": "rankers.engine.world",
    "WorldConfig": "rankers.engine.world",
    "LoggedFeatures": "rankers.engine.types",
    "RankRequest": "rankers.engine.types",
    "RankResult": "rankers.engine.types",
    "RankedItem": "rankers.engine.types",
    "RankingStack": "rankers.engine.types",
    "ContentFirstStack": "rankers.engine.stacks",
    "InterestFirstStack": "rankers.engine.stacks",
    "UnifiedMTLStack": "rankers.engine.stacks",
    "build_stack": "rankers.engine.factory",
    "trained_stacks": "rankers.engine.factory",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rankers.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
