"""Through the real simulated world: serving's simulate_traffic routes the world's users through the
router (real stacks, exposures, latency samples, ingested metric rows) with a hides regression
injected by the world's knob on the unified stack; the standard experiment catches it."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _small_world() -> Iterator[None]:
    # Same trained bundle the serving tests use (trained once per machine, then loaded).
    os.environ.setdefault("RANKERS_ARTIFACTS_DIR", str(ROOT / "var" / "rankers-test"))
    os.environ.setdefault("RANKERS_WORLD", "small")
    from controlplane.serving.routing import router_reset

    router_reset()
    yield
    router_reset()


def test_hides_knob_in_the_world_is_caught_by_the_guardrail(seeded: dict[str, Any]) -> None:
    from controlplane.core.services import allocation_change
    from controlplane.demo.simulator import simulate_traffic
    from controlplane.serving.routing import router_reset
    from experiments.services import experiment_analyze, experiment_create_for_surface
    from rankers.engine.world import Effects

    start = dt.date(2026, 3, 2)
    users = 1500  # the whole small world
    # Pre-period: everyone on their legacy stack (CUPED covariates for the same users).
    simulate_traffic(surface="groups", users=users, day=start - dt.timedelta(days=1))
    allocation = allocation_change(
        surface=seeded["groups"],
        actor="system:test",
        reason="experiment",
        treatment_stack=seeded["unified"],
        treatment_bp=5000,
        salt="groups-world-exp",
        now=dt.datetime.combine(start, dt.time(0, 5), tzinfo=dt.UTC),
    )
    router_reset()  # the router caches the published allocation; pick up the ramp now
    experiment = experiment_create_for_surface(
        surface=seeded["groups"],
        treatment_stack=seeded["unified"],
        salt=allocation.salt,
        actor="system:test",
        now=dt.datetime.combine(start, dt.time(0, 10), tzinfo=dt.UTC),
    )
    effects = {"unified-mtl@1": Effects(hide_multiplier=8.0, report_multiplier=8.0)}
    for d in range(2):
        day = start + dt.timedelta(days=d)
        simulate_traffic(
            surface="groups",
            users=users,
            day=day,
            effects_by_stack=effects,
            now=dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC),
        )
    run = experiment_analyze(
        experiment=experiment,
        now=dt.datetime.combine(start + dt.timedelta(days=1), dt.time(23), tzinfo=dt.UTC),
    )
    result = run.result
    assert result["units"]["control"] + result["units"]["treatment"] == users
    assert not result["srm"]["pooled"]["flagged"]
    hide = next(
        m for m in result["metrics"] if m["metric"] == "hide_report_rate" and m["population"] == "pooled"
    )
    assert hide["rel_lift"] > 0.5, hide
    assert hide["verdict"] == "inferior"
    assert result["decision"]["verdict"] == "rollback"
    assert "hide_report_rate" in result["decision"]["blocking"]
    # The CUPED covariate came from the pre-period day the world simulated.
    time_spent = next(
        m for m in result["metrics"] if m["metric"] == "time_spent" and m["population"] == "content_first"
    )
    assert time_spent["variance_reduction"] is not None and time_spent["variance_reduction"] > 0
