"""Runbooks on the experiments app's real analysis (no scripted results): evidence in, verdicts out.

Evidence is synthesized per unit-day (tests/runbooks/evidence.py) under the live allocation, so
SRM, equivalence, non-inferiority and the always-valid sequential intervals are computed by the
experiments app from rows, exactly as in production.
"""

from __future__ import annotations

import datetime as dt

import pytest

from controlplane.core.models import AuditEvent, RankingStack
from controlplane.core.selectors import allocation_current
from experiments.models import AnalysisRun
from migrations_runbooks import services
from migrations_runbooks.models import Runbook
from tests.runbooks.conftest import DAY, HOUR, T0
from tests.runbooks.evidence import synthesize_day

pytestmark = pytest.mark.django_db

#: shadow → 50% (the decision step) → 100% (bake on serving health). Editable plans are a feature;
#: one comparative step keeps every unit in the arm of its first exposure.
STEPS = [
    {
        "name": "shadow",
        "treatment_bp": 0,
        "shadow_bp": 1000,
        "min_duration_s": 86400,
        "gates": {"parity": False, "latency": False},
    },
    {"name": "50%", "treatment_bp": 5000, "min_duration_s": 86400, "min_units": 500},
    {
        "name": "100%",
        "treatment_bp": 10000,
        "min_duration_s": 86400,
        "min_units": 100,
        "needs_approval": True,
    },
]


def test_pages_promotes_on_a_real_ship_decision(seeded, users):
    pages = seeded["pages"]
    rb = services.runbook_create(
        surface=pages, target_stack=seeded["unified"], actor=users["operator"], now=T0, steps=STEPS
    )
    services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=T0)
    services.ramps_advance_due(now=T0 + DAY)
    rb.refresh_from_db()
    assert (rb.current_step, rb.experiment_key) == (1, f"runbook-{rb.pk}-pages")
    synthesize_day(surface=pages, day=(T0 + DAY).date(), units=3000)
    services.ramps_advance_due(now=T0 + 2 * DAY + HOUR)
    rb.refresh_from_db()
    assert rb.status == "waiting_approval", rb.status_reason
    assert rb.ship_decision["step"] == "50%" and rb.ship_decision["analysis_run_id"]
    gates = {
        g.gate
        for g in rb.evaluations.filter(step_index=1, outcome="approval").first().gates.all()
        if g.outcome == "pass"
    }
    assert {"srm", "guardrail", "primary", "latency_slo", "ship_decision", "min_units"} <= gates
    services.runbook_approve(
        runbook=rb, actor=users["approver"], reason="neutral", now=T0 + 2 * DAY + 2 * HOUR
    )
    services.ramps_advance_due(now=T0 + 2 * DAY + 3 * HOUR)
    rb.refresh_from_db()
    assert rb.current_step == 2
    synthesize_day(surface=pages, day=(T0 + 3 * DAY).date(), units=500)  # bake: served by unified
    services.ramps_advance_due(now=T0 + 3 * DAY + 4 * HOUR)
    rb.refresh_from_db()
    assert (
        rb.status == "waiting_approval" and rb.approvals.filter(kind="promotion", status="pending").exists()
    )
    services.runbook_approve(runbook=rb, actor=users["approver"], reason="baked", now=T0 + 3 * DAY + 5 * HOUR)
    services.ramps_advance_due(now=T0 + 3 * DAY + 6 * HOUR)
    rb.refresh_from_db()
    pages.refresh_from_db()
    assert rb.status == "promoted", rb.status_reason
    assert pages.production_stack == seeded["unified"]
    # The experiments app froze the readout as a ship Decision on the run that recommended ship.
    from experiments.models import Decision

    decision = Decision.objects.get(pk=rb.final_readout["decision"])
    assert decision.verdict == "ship" and decision.analysis_id == rb.ship_decision["analysis_run_id"]
    assert rb.final_readout["analysis"]["decision"]["verdict"] == "ship"
    assert {p["stack"] for p in allocation_current(surface=pages).populations} == {"unified-mtl@1"}


def test_groups_real_guardrail_regression_rolls_back_in_the_tick_that_sees_it(seeded, users):
    groups = seeded["groups"]
    rb = services.runbook_create(
        surface=groups, target_stack=seeded["unified"], actor=users["operator"], now=T0, steps=STEPS
    )
    services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=T0)
    services.ramps_advance_due(now=T0 + DAY)
    # The unified stack shows 60% more hides on groups: a guardrail regression.
    synthesize_day(surface=groups, day=(T0 + DAY).date(), units=3000, treatment_effects={"hides": 1.6})
    young = T0 + DAY + 2 * HOUR  # well before the step's minimum duration
    outcomes = services.ramps_advance_due(now=young)
    rb.refresh_from_db()
    assert [o.outcome for o in outcomes] == ["rollback"]
    assert rb.status == "rolled_back" and "hide_report_rate" in rb.status_reason
    breach = rb.evaluations.first().gates.filter(outcome="rollback")
    assert breach.filter(subject="hide_report_rate/pooled").exists()
    assert allocation_current(surface=groups).treatment_bp == 0
    assert AuditEvent.objects.filter(verb="runbook.rollback", target_id=str(rb.pk), created_at=young).exists()
    seeded["content_first"].refresh_from_db()
    assert seeded["content_first"].status == RankingStack.Status.ACTIVE
    assert Runbook.objects.get(pk=rb.pk).finished_at == young


def test_fresh_analysis_is_reused_within_its_max_age(seeded, users, settings):
    from migrations_runbooks import gates

    settings.RUNBOOKS_ANALYSIS_MAX_AGE_S = 300
    pages = seeded["pages"]
    rb = services.runbook_create(
        surface=pages, target_stack=seeded["unified"], actor=users["operator"], now=T0, steps=STEPS
    )
    services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=T0)
    services.ramps_advance_due(now=T0 + DAY)
    rb.refresh_from_db()
    synthesize_day(surface=pages, day=(T0 + DAY).date(), units=600)
    first, _ = gates.fresh_analysis(runbook=rb, now=T0 + DAY + HOUR)
    again, _ = gates.fresh_analysis(runbook=rb, now=T0 + DAY + HOUR + dt.timedelta(minutes=4))
    later, _ = gates.fresh_analysis(runbook=rb, now=T0 + DAY + 2 * HOUR)
    assert first is not None and again is not None and later is not None
    assert again.analysis_run_id == first.analysis_run_id and again.reused_age_s == 240
    assert later.analysis_run_id != first.analysis_run_id and later.reused_age_s is None
    settings.RUNBOOKS_ANALYSIS_MAX_AGE_S = 0
    fresh, _ = gates.fresh_analysis(runbook=rb, now=T0 + DAY + 2 * HOUR)
    assert fresh is not None and fresh.analysis_run_id != later.analysis_run_id


def test_sweep_budget_defers_but_never_skips(seeded, users, scripted_analysis, scripted_parity):
    from tests.runbooks.test_concurrency import make_running

    runbooks = make_running(seeded, users["operator"], 4)
    first = services.ramps_advance_due(now=T0 + DAY, budget_s=1e-9)
    assert [o.outcome for o in first] == ["advance"]  # one ramp per sweep at least; the rest stay due
    rest = services.ramps_advance_due(now=T0 + DAY + HOUR, budget_s=0)
    assert sorted(o.outcome for o in rest) == ["advance", "advance", "advance", "wait"]
    for rb in runbooks:
        rb.refresh_from_db()
        assert rb.current_step == 1


MULTI_STEP = [
    {
        "name": "shadow",
        "treatment_bp": 0,
        "shadow_bp": 1000,
        "min_duration_s": 86400,
        "gates": {"parity": False, "latency": False},
    },
    {"name": "5%", "treatment_bp": 500, "min_duration_s": 86400, "min_units": 200},
    {"name": "25%", "treatment_bp": 2500, "min_duration_s": 86400, "min_units": 500, "needs_approval": True},
    {"name": "50%", "treatment_bp": 5000, "min_duration_s": 86400, "min_units": 1000},
    {"name": "100%", "treatment_bp": 10000, "min_duration_s": 86400, "min_units": 100},
]


def test_pages_promotes_through_a_multi_step_ramp_on_real_analysis(seeded, users):
    """5 % → 25 % → 50 % under one salt: crossed units are left out, so the ship decision is clean."""
    pages = seeded["pages"]
    rb = services.runbook_create(
        surface=pages, target_stack=seeded["unified"], actor=users["operator"], now=T0, steps=MULTI_STEP
    )
    services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=T0)
    visited = []
    for day in range(1, 16):
        now = T0 + day * DAY
        # Returning users plus 1500 new ones a day, assigned under the allocation of the day.
        synthesize_day(surface=pages, day=(now - HOUR).date(), units=1500 * day)
        services.ramps_advance_due(now=now)
        rb.refresh_from_db()
        if rb.status == "waiting_approval":
            services.runbook_approve(runbook=rb, actor=users["approver"], reason="ok", now=now + HOUR)
            services.ramps_advance_due(now=now + 2 * HOUR)
            rb.refresh_from_db()
        visited.append((rb.current_step, rb.status))
        if rb.status in ("promoted", "rolled_back", "aborted"):
            break
        assert rb.status in ("running", "waiting_approval", "held"), (visited, rb.status_reason)
    assert rb.status == "promoted", (visited, rb.status_reason)
    assert {step for step, _ in visited} >= {1, 2, 3, 4}
    assert rb.ship_decision["step"] == "50%"
    run = AnalysisRun.objects.get(pk=rb.ship_decision["analysis_run_id"])
    both = next(h for h in run.result["health"] if h["check"] == "both_arms")
    assert both["ok"] and "left out" in both["detail"], both


def test_a_failed_evidence_read_holds_the_step_with_its_reason(seeded, users, monkeypatch, caplog):
    """A parity or serving read that fails is logged and becomes the reason a mature step holds."""
    from django.db import DatabaseError

    from migrations_runbooks import gates
    from migrations_runbooks.gates import sources

    rb = services.runbook_create(
        surface=seeded["pages"], target_stack=seeded["unified"], actor=users["operator"], now=T0, steps=STEPS
    )

    def broken(**kwargs):
        raise DatabaseError("canceling statement due to statement timeout")

    monkeypatch.setattr(sources, "shadow_parity_daily", broken)
    monkeypatch.setattr(sources, "serving_health", broken)
    with caplog.at_level("ERROR", logger="migrations_runbooks.gates.sources"):
        parity, parity_error = gates.fresh_parity(runbook=rb, since=T0)
        serving, serving_error = gates.fresh_serving(runbook=rb, since=T0, until=T0 + DAY)
    assert parity is None and parity_error == (
        "shadow parity failed: DatabaseError: canceling statement due to statement timeout"
    )
    assert serving is None and serving_error.startswith("serving health failed: DatabaseError")
    assert len([r for r in caplog.records if r.exc_info]) == 2
    facts = gates.StepFacts(
        name="shadow",
        treatment_bp=0,
        shadow_bp=1000,
        min_duration_s=3600,
        min_units=100,
        gates=gates.DEFAULT_SHADOW_GATES,
        elapsed_s=7200,
        slo_ms=80.0,
    )
    held = gates.evaluate(facts, analysis=None, parity=parity, parity_error=parity_error)
    assert gates.summarize(held) == gates.HOLD
    assert any("statement timeout" in g.reason for g in gates.blocking(held))
