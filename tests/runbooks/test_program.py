"""Program view: milestones across surfaces, traffic share on target, promotions, capacity saved."""

from __future__ import annotations

import pytest

from controlplane.core import services as core
from migrations_runbooks import services
from migrations_runbooks.selectors import capacity_plan, half_start, program_progress
from tests.runbooks.conftest import HOUR, T0, analysis_result

pytestmark = pytest.mark.django_db

SHORT = [
    {"name": "50%", "treatment_bp": 5000, "min_duration_s": 3600},
    {"name": "100%", "treatment_bp": 10000, "min_duration_s": 3600},
]


def test_program_progress_after_pages_promotes(seeded, users, scripted_analysis, scripted_parity):
    from controlplane.core.models import Allocation

    # Put the seeded allocations on the simulated timeline (seed_demo stamps them with the real clock).
    Allocation.objects.filter(version=1).update(created_at=T0 - 30 * 24 * HOUR)
    scripted_analysis.results["pages"] = analysis_result()
    mtl = services.milestone_upsert(
        key="unified-mtl", name="Unified MTL model on every surface", actor="system:test", now=T0, order=1
    )
    value_model = core.stack_register(
        key="unified-mtl", version="2", kind="unified_mtl", device="gpu", latency_slo_ms=80.0,
        throughput_per_replica=900.0, host_cpu_ms_per_request=3.0, status="candidate", actor="system:test",
    )  # fmt: skip
    services.milestone_upsert(
        key="unified-value-model",
        name="Unified value model",
        actor="system:test",
        now=T0,
        order=2,
        target_stack=value_model,
    )
    rb = services.runbook_create(
        surface=seeded["pages"], target_stack=seeded["unified"], actor=users["operator"], now=T0, steps=SHORT,
        milestone=mtl, promotion_needs_approval=False,
    )  # fmt: skip
    services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=T0)
    mid = program_progress(now=T0 + 30 * 60 * (HOUR / 3600))  # at 50% on pages
    [m, v] = mid["milestones"]
    assert m["progress"]["now"]["traffic_share_on_target"] == pytest.approx(0.5 * 1200 / 2000)
    services.ramps_advance_due(now=T0 + HOUR)
    services.ramps_advance_due(now=T0 + 2 * HOUR)
    rb.refresh_from_db()
    assert rb.status == "promoted", rb.status_reason

    progress = program_progress(now=T0 + 3 * HOUR)
    [m, v] = progress["milestones"]
    now_point = m["progress"]["now"]
    assert now_point["traffic_share_on_target"] == pytest.approx(1200 / 2000)
    assert now_point["surfaces_promoted"] == ["pages"] and not m["done"]
    # Fleet before: content-first serves pages + groups' 60% = 1680 qps → ⌈1680·1.3/220⌉ = 10; interest-first
    # 320 qps → ⌈416/180⌉ = 3. After: content-first 480 qps → 3, interest-first 3, unified 1200 qps →
    # ⌈1560/900⌉ = 2 by throughput but ⌈1560·3 ms / 2 cores⌉ = 3 by host CPU. Freed 13 − 6 = 7 CPU replicas.
    assert now_point["legacy_replicas_freed"] == 7
    assert now_point["cost_saved_per_hour"] == pytest.approx(7 * 1.36 - 3 * 1.006)
    assert m["runbooks"] == [
        {"id": rb.pk, "surface": "pages", "status": "promoted", "step": "100%", "treatment_bp": 10000}
    ]
    assert (
        m["half_over_half"]["current_half"] == "2026H1" and m["half_over_half"]["previous_half"] == "2025H2"
    )
    assert m["half_over_half"]["surfaces_promoted_delta"] == 1
    # The value-model milestone counts only unified-mtl@2 traffic: nothing yet.
    assert v["target"] == "unified-mtl@2" and v["progress"]["now"]["traffic_share_on_target"] == 0.0


def test_half_boundaries():
    import datetime as dt

    assert half_start(dt.datetime(2026, 6, 30, 23, tzinfo=dt.UTC)) == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert half_start(dt.datetime(2026, 7, 1, 0, tzinfo=dt.UTC)) == dt.datetime(2026, 7, 1, tzinfo=dt.UTC)


def test_capacity_plan_per_step_for_groups(seeded, users):
    rb = services.runbook_create(
        surface=seeded["groups"], target_stack=seeded["unified"], actor=users["operator"], now=T0
    )
    plan = capacity_plan(runbook=rb)
    by_name = {s["name"]: s for s in plan["steps"]}
    # Baseline groups at 800 qps: content-first 480 qps → ⌈624/220⌉ = 3, interest-first 320 → ⌈416/180⌉ = 3.
    base = {s["stack"]: s["replicas"] for s in plan["baseline"]["stacks"]}
    assert base == {"content-first@1": 3, "interest-first@1": 3}
    fifty = {s["stack"]: s for s in by_name["50%"]["plan"]["stacks"]}
    assert fifty["unified-mtl@1"]["qps"] == pytest.approx(400.0)
    # 400·1.3 = 520 rps: 1 GPU replica by throughput, host CPU 520·3 ms = 1.56 cores → 1.
    assert fifty["unified-mtl@1"]["replicas"] == 1
    promoted = plan["promoted"]
    assert promoted["savings"]["legacy_replicas_freed"] == 6
    # 800·1.3 = 1040 rps: ⌈1040/900⌉ = 2 by throughput, host CPU 3.12 cores / 2 → 2 replicas.
    assert promoted["savings"]["unified_replicas_added"] == 2
    assert promoted["savings"]["cost_saved_per_hour"] == pytest.approx(6 * 1.36 - 2 * 1.006)
    assert all(step["fleet"]["fits"] for step in plan["steps"])
