"""Fixtures for the experiments tests: a surface ramped to the unified stack and its experiment."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

WINDOW_START = dt.date(2026, 3, 2)
NOW = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.UTC)


@pytest.fixture
def ramped(seeded: dict[str, Any]) -> dict[str, Any]:
    """groups (content-first 60 % / interest-first 40 %) with 50 % of units on unified-mtl@1."""
    from controlplane.core.services import allocation_change

    allocation = allocation_change(
        surface=seeded["groups"],
        actor="system:test",
        reason="experiment",
        treatment_stack=seeded["unified"],
        treatment_bp=5000,
        salt="groups-exp-1",
        now=NOW,
    )
    return {**seeded, "allocation": allocation}


@pytest.fixture
def experiment(ramped: dict[str, Any]) -> Any:
    from experiments.services import experiment_create_for_surface

    return experiment_create_for_surface(
        surface=ramped["groups"],
        treatment_stack=ramped["unified"],
        salt=ramped["allocation"].salt,
        actor="system:test",
        now=NOW,
    )
