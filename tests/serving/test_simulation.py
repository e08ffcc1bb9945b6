"""simulate_traffic: the world's users go through the router; their metric rows and latencies land."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pytest

from controlplane.core import services as registry_services
from controlplane.serving.models import Exposure, IngestBatch
from experiments.models import MetricObservation

pytestmark = pytest.mark.sqlite_path

DAY = dt.date.today() - dt.timedelta(days=1)


def test_simulated_day_flows_through_router_and_ingestion(seeded, stacks, users):
    from controlplane.demo.simulator import SIMULATED_METRICS, simulate_traffic
    from controlplane.serving.selectors import counterfactual_report, latency_samples_by_arm
    from rankers.engine.world import Effects

    allocation = registry_services.allocation_change(
        surface=seeded["pages"],
        actor=users["operator"],
        reason="ramp",
        treatment_stack=seeded["unified"],
        treatment_bp=5000,
    )
    started = time.perf_counter()
    summary = simulate_traffic(
        surface="pages",
        users=300,
        day=DAY,
        effects_by_stack={"unified-mtl@1": Effects(extra_latency_ms=40.0)},
        explore_rate=0.2,
    )
    elapsed = time.perf_counter() - started
    assert elapsed < 60, elapsed
    assert summary["units"] == 300 and summary["requests"] >= 300
    assert set(summary["by_stack"]) == {"content-first@1", "unified-mtl@1"}
    assert summary["batch"]["status"] == "accepted" and summary["batch"]["rejected"] == 0
    assert Exposure.objects.filter(surface=seeded["pages"], salt=allocation.salt).count() == 300
    # Every unit has every standard metric for the day; sums are consistent.
    rows = MetricObservation.objects.filter(surface=seeded["pages"], day=DAY)
    assert rows.count() == 300 * len(SIMULATED_METRICS)
    totals = {m: sum(rows.filter(metric=m).values_list("value", flat=True)) for m in SIMULATED_METRICS}
    assert totals["requests"] == summary["requests"]
    assert totals["meaningful_interactions"] == totals["comments"] + totals["shares"]
    assert totals["impressions"] > totals["likes"] > 0 and totals["time_spent"] > 0
    # Latency samples per arm carry the injected +40 ms of the unified stack.
    by_arm = latency_samples_by_arm(surface="pages", salt=allocation.salt)
    assert np.median(by_arm["treatment"]) > np.median(by_arm["control"]) + 35
    # Re-running the day ingests nothing new (the batch id is per surface and day).
    again = simulate_traffic(surface="pages", users=300, day=DAY)
    assert again["batch"]["replayed"] is True
    assert MetricObservation.objects.filter(surface=seeded["pages"], day=DAY).count() == 300 * len(
        SIMULATED_METRICS
    )
    assert IngestBatch.objects.filter(kind="metric_rows").count() == 1
    # The impression log supports an off-policy estimate of the content-first stack from its own logs.
    report = counterfactual_report(
        surface="pages", candidate_stack="content-first@1", logging_stack="content-first@1"
    )
    assert report["requests"] > 100 and report["explored_requests"] > 10
    assert report["ips"]["mean_weight"] == pytest.approx(1.0, abs=0.3)
    assert abs(report["ips"]["value"] - report["logged_value"]) < 4 * report["ips"]["se"] + 0.05


def test_effects_move_the_metrics_of_the_treated_stack(seeded, stacks, users):
    from controlplane.demo.simulator import simulate_traffic
    from rankers.engine.world import Effects

    registry_services.allocation_change(
        surface=seeded["groups"],
        actor=users["operator"],
        reason="ramp",
        treatment_stack=seeded["unified"],
        treatment_bp=10_000,
    )
    simulate_traffic(
        surface="groups", users=200, day=DAY, effects_by_stack={"unified-mtl@1": Effects(hide_multiplier=4.0)}
    )
    rows = MetricObservation.objects.filter(surface=seeded["groups"], day=DAY)
    hides = sum(rows.filter(metric="hides").values_list("value", flat=True))
    impressions = sum(rows.filter(metric="impressions").values_list("value", flat=True))
    simulate_traffic(surface="groups", users=200, day=DAY - dt.timedelta(days=1))
    base = MetricObservation.objects.filter(surface=seeded["groups"], day=DAY - dt.timedelta(days=1))
    base_rate = sum(base.filter(metric="hides").values_list("value", flat=True)) / sum(
        base.filter(metric="impressions").values_list("value", flat=True)
    )
    assert hides / impressions > 2.5 * base_rate


def test_simulated_shadow_traffic_leaves_parity_rows(seeded, stacks, users):
    from controlplane.demo.simulator import simulate_traffic
    from controlplane.serving.models import ShadowComparison
    from controlplane.serving.selectors import shadow_parity_daily

    registry_services.allocation_change(
        surface=seeded["groups"],
        actor="system:test",
        reason="shadow",
        shadow_stack=seeded["unified"],
        shadow_bp=5000,
    )
    summary = simulate_traffic(surface="groups", users=120, day=DAY)
    assert 0 < summary["shadowed"] < summary["requests"]
    assert ShadowComparison.objects.filter(status="ok").count() == summary["shadowed"]
    daily = shadow_parity_daily(surface="groups", stack="unified-mtl@1")
    assert len(daily) == 1 and daily[0]["day"] == DAY and daily[0]["n"] == summary["shadowed"]
    # Different stacks, different lists: partial agreement, strictly between the extremes.
    assert 0 < daily[0]["rbo"] < 1 and 0 < daily[0]["overlap_50"] < 1
