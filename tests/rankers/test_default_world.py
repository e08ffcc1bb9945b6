"""Default-size world (50k users, 200k posts): the full training run. Slow: minutes."""

from __future__ import annotations

import os
import time

import pytest


@pytest.mark.slow
def test_default_world_trains_within_budget_and_unified_wins():
    import torch

    from rankers.engine.training import train_all
    from rankers.engine.world import World, WorldConfig

    torch.set_num_threads(2)
    wall, cpu = time.perf_counter(), time.process_time()
    trained = train_all(World.build(WorldConfig()))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ndcg = trained.metrics["ndcg"]
    for k in ("ndcg@10", "ndcg@50"):
        assert ndcg["unified_mtl"][k] > max(ndcg["content_first"][k], ndcg["interest_first"][k])
    assert trained.metrics["ann"]["recall"] >= 0.95
    # The 5-minute budget holds on 2 dedicated cores; on a shared machine wall time includes
    # other tenants' work, so the strict check is opt-in (CI runners have the cores to themselves).
    if os.environ.get("RANKERS_ASSERT_TRAIN_BUDGET") == "1":
        assert wall <= 300, f"default-world training took {wall:.0f}s wall ({cpu:.0f}s CPU)"
