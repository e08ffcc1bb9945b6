"""Shared fixtures: one small world and one training run per test session (seconds)."""

from __future__ import annotations

import pytest

from rankers.engine.world import World, WorldConfig


@pytest.fixture(scope="session")
def small_world() -> World:
    return World.build(WorldConfig.small())


@pytest.fixture(scope="session")
def trained(small_world):
    import torch

    from rankers.engine.factory import trained_stacks

    torch.set_num_threads(2)
    return trained_stacks(small_world)


@pytest.fixture(scope="session")
def stacks(trained):
    return {
        "content_first": trained.content_first,
        "interest_first": trained.interest_first,
        "unified_mtl": trained.unified,
    }
