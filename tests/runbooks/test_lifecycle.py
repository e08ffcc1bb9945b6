"""A pages runbook from shadow to promotion on a simulated clock; the groups rollback; the state machine."""

from __future__ import annotations

import itertools

import pytest

from controlplane.core.errors import ApplicationError, ConflictError
from controlplane.core.models import Allocation, AuditEvent, RankingStack
from controlplane.core.selectors import allocation_current
from migrations_runbooks import services
from migrations_runbooks.models import Approval, Notification, Runbook, StepEvaluation
from migrations_runbooks.selectors import runbook_detail
from tests.runbooks.conftest import DAY, HOUR, T0, analysis_result, drive, fast_steps

pytestmark = pytest.mark.django_db


def tick(now):
    return services.ramps_advance_due(now=now)


def make_runbook(seeded, users, surface="pages", **kwargs):
    steps = kwargs.pop("steps", fast_steps(approval_at=(3, 5)))
    return services.runbook_create(
        surface=seeded[surface],
        target_stack=seeded["unified"],
        actor=users["operator"],
        now=T0,
        steps=steps,
        **kwargs,
    )


def test_pages_runbook_goes_from_shadow_to_promotion(
    seeded,
    users,
    scripted_analysis,
    scripted_parity,
    webhook,
    receiver,
    eager_celery,
    django_capture_on_commit_callbacks,
):
    scripted_analysis.results["pages"] = analysis_result()
    rb = make_runbook(seeded, users)
    v0 = allocation_current(surface=seeded["pages"]).version
    with django_capture_on_commit_callbacks(execute=True):
        services.runbook_start(runbook=rb, actor=users["operator"], reason="kick-off", now=T0)
    rb.refresh_from_db()
    alloc = allocation_current(surface=seeded["pages"])
    assert (rb.status, rb.current_step) == ("running", 0)
    assert (alloc.version, alloc.treatment_bp, alloc.shadow_bp, alloc.shadow_stack) == (
        v0 + 1,
        0,
        1000,
        seeded["unified"],
    )

    # Young step: the sweeper waits, never advances early even though every other gate passes.
    tick(T0 + HOUR)
    rb.refresh_from_db()
    assert rb.current_step == 0
    assert rb.evaluations.first().outcome == StepEvaluation.Outcome.WAIT

    seen_steps = []

    def tick_and_approve(now):
        with django_capture_on_commit_callbacks(execute=True):
            tick(now)
        rb.refresh_from_db()
        seen_steps.append(rb.current_step)
        if rb.status == Runbook.Status.WAITING_APPROVAL:
            with django_capture_on_commit_callbacks(execute=True):
                services.runbook_approve(runbook=rb, actor=users["approver"], reason="looks neutral", now=now)

    drive(
        tick_and_approve,
        T0 + HOUR,
        until=lambda: rb.status == Runbook.Status.PROMOTED,
        step=HOUR,
        limit=24 * 8,
    )

    rb.refresh_from_db()
    pages = seeded["pages"]
    pages.refresh_from_db()
    assert rb.status == "promoted"
    assert sorted(set(seen_steps)) == [0, 1, 2, 3, 4, 5]
    # Steps are entered in order, one per tick at most, each after its minimum duration.
    starts = [s.started_at for s in rb.steps.order_by("index")]
    assert all(b - a >= DAY for a, b in itertools.pairwise(starts))
    assert pages.production_stack == seeded["unified"] and pages.status == "unified"
    final = allocation_current(surface=pages)
    assert final.treatment_bp == 0 and {p["stack"] for p in final.populations} == {"unified-mtl@1"}
    # Every step change published a version: shadow, 1, 5, 25, 50, 100, promotion.
    ramp_versions = Allocation.objects.filter(surface=pages, version__gt=v0).count()
    assert ramp_versions == 7
    # pages' legacy stack still serves groups: not retired; the unified stack is active.
    seeded["content_first"].refresh_from_db()
    seeded["unified"].refresh_from_db()
    assert seeded["content_first"].status == RankingStack.Status.ACTIVE
    assert seeded["unified"].status == RankingStack.Status.ACTIVE
    assert rb.final_readout["analysis"]["decision"]["verdict"] == "ship"
    # Approvals: entering 25% and 100%, and promotion; all four-eyes, all used.
    approvals = list(rb.approvals.order_by("requested_at"))
    assert [(a.kind, a.step_index, a.status) for a in approvals] == [
        ("step", 3, "consumed"),
        ("step", 5, "consumed"),
        ("promotion", None, "consumed"),
    ]
    verbs = set(
        AuditEvent.objects.filter(
            target_type="migrations_runbooks.runbook", target_id=str(rb.pk)
        ).values_list("verb", flat=True)
    )
    assert {
        "runbook.create",
        "runbook.start",
        "runbook.advance",
        "runbook.wait_approval",
        "runbook.promote",
    } <= verbs
    assert "promotion" in receiver.events() and "approval_needed" in receiver.events()
    assert all(r["signature_ok"] for r in receiver.requests)


def test_groups_guardrail_regression_rolls_back_in_the_tick_that_sees_it(
    seeded,
    users,
    scripted_analysis,
    scripted_parity,
    webhook,
    receiver,
    eager_celery,
    django_capture_on_commit_callbacks,
):
    healthy = analysis_result(populations=("pooled", "content_first", "interest_first"))
    regression_from = T0 + 2 * DAY + 5 * HOUR
    breach_ci = {"method": "msprt", "ci": [0.002, 0.009], "p_value": 0.001, "diff": 0.006, "computable": True}
    regressed = analysis_result(
        populations=("pooled", "content_first", "interest_first"),
        hide_verdict="inconclusive",
        hide_sequential=breach_ci,
    )
    scripted_analysis.results["groups"] = lambda now: regressed if now >= regression_from else healthy
    rb = make_runbook(seeded, users, surface="groups")
    services.runbook_start(runbook=rb, actor=users["operator"], reason="kick-off", now=T0)

    now = T0
    while now < regression_from - HOUR:
        now += HOUR
        with django_capture_on_commit_callbacks(execute=True):
            tick(now)
    rb.refresh_from_db()
    assert rb.status == "running" and rb.current_step == 2  # 5%
    assert allocation_current(surface=seeded["groups"]).treatment_bp == 500

    # The first tick that sees the regression rolls back — mid-step, before its minimum duration.
    with django_capture_on_commit_callbacks(execute=True):
        outcomes = tick(regression_from)
    rb.refresh_from_db()
    assert [o.outcome for o in outcomes] == ["rollback"]
    assert rb.status == "rolled_back"
    alloc = allocation_current(surface=seeded["groups"])
    assert alloc.treatment_bp == 0 and alloc.shadow_bp == 0 and alloc.created_at == regression_from
    evaluation = rb.evaluations.first()
    assert evaluation.outcome == "rollback" and evaluation.evaluated_at == regression_from
    breach = [g for g in evaluation.gates.all() if g.outcome == "rollback"]
    assert {g.subject for g in breach} == {
        "hide_report_rate/pooled",
        "hide_report_rate/content_first",
        "hide_report_rate/interest_first",
    }
    assert "hide_report_rate" in rb.status_reason and "significantly worse" in rb.status_reason
    detail = runbook_detail(runbook=rb, now=regression_from)
    assert {g["gate"] for g in detail["holding_gates"]} == {"guardrail"}
    audit = AuditEvent.objects.get(verb="runbook.rollback", target_id=str(rb.pk))
    assert audit.actor_label == "system:beat" and "hide_report_rate" in audit.reason
    # Notified, signed, with the breaching gates in the payload.
    rollback_hooks = [r for r in receiver.requests if r["body"]["event"] == "rollback"]
    assert len(rollback_hooks) == 1 and rollback_hooks[0]["signature_ok"]
    assert rollback_hooks[0]["body"]["gates"][0]["gate"] == "guardrail"
    assert Notification.objects.get(event="rollback").status == "delivered"
    # A later tick does nothing more to a rolled-back runbook.
    assert tick(regression_from + HOUR) == []


def test_four_eyes(seeded, users, scripted_analysis, scripted_parity, make_user):
    scripted_analysis.results["pages"] = analysis_result()
    rb = make_runbook(seeded, users, steps=fast_steps(approval_at=(1,)))
    services.runbook_start(runbook=rb, actor=users["operator2"], reason="go", now=T0)
    tick(T0 + DAY)
    rb.refresh_from_db()
    assert rb.status == "waiting_approval"
    approval = rb.approvals.get()
    assert approval.requested_by == users["operator2"] and approval.step_index == 1
    # operator2 holds the approver role but started the runbook: refused.
    with pytest.raises(ApplicationError) as exc:
        services.runbook_approve(runbook=rb, actor=users["operator2"], reason="self", now=T0 + DAY)
    assert exc.value.code == "four_eyes"
    # An operator without the approver role: refused.
    with pytest.raises(ApplicationError) as exc:
        services.runbook_approve(runbook=rb, actor=users["operator"], reason="me", now=T0 + DAY)
    assert exc.value.http_status == 403
    # The system cannot approve.
    with pytest.raises(ApplicationError):
        services.runbook_approve(runbook=rb, actor="system:beat", reason="auto", now=T0 + DAY)
    # Still waiting; no tick moves it.
    tick(T0 + DAY + HOUR)
    rb.refresh_from_db()
    assert (rb.status, rb.current_step) == ("waiting_approval", 0)
    services.runbook_approve(runbook=rb, actor=users["approver"], reason="ok", now=T0 + DAY + HOUR)
    approval.refresh_from_db()
    assert approval.status == "approved" and approval.decided_by == users["approver"]
    tick(T0 + DAY + 2 * HOUR)
    rb.refresh_from_db()
    assert (rb.status, rb.current_step) == ("running", 1)


def test_hold_shows_gate_value_and_threshold_and_clears(
    seeded,
    users,
    scripted_analysis,
    scripted_parity,
    webhook,
    receiver,
    eager_celery,
    django_capture_on_commit_callbacks,
):
    scripted_analysis.results["pages"] = analysis_result(latency_p99=95.0)
    rb = make_runbook(seeded, users)
    services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=T0)
    tick(T0 + DAY)  # shadow → 1%
    with django_capture_on_commit_callbacks(execute=True):
        tick(T0 + 2 * DAY + HOUR)
    rb.refresh_from_db()
    assert (rb.status, rb.current_step) == ("held", 1)
    detail = runbook_detail(runbook=rb, now=T0 + 2 * DAY + HOUR)
    [held] = detail["holding_gates"]
    assert (held["gate"], held["value"], held["threshold"], held["comparator"]) == (
        "latency_slo",
        95.0,
        80.0,
        "<=",
    )
    assert "over the 80 ms SLO" in rb.status_reason
    # Held on every later tick, notified once.
    with django_capture_on_commit_callbacks(execute=True):
        tick(T0 + 2 * DAY + 2 * HOUR)
    assert receiver.events().count("hold") == 1
    scripted_analysis.results["pages"] = analysis_result(latency_p99=70.0)
    tick(T0 + 2 * DAY + 3 * HOUR)
    rb.refresh_from_db()
    assert (rb.status, rb.current_step) == ("running", 2)


def test_missing_analysis_never_passes(seeded, users, scripted_analysis, scripted_parity):
    rb = make_runbook(seeded, users)
    services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=T0)
    tick(T0 + DAY)
    tick(T0 + 3 * DAY)  # no analysis scripted for pages
    rb.refresh_from_db()
    assert (rb.status, rb.current_step) == ("held", 1)
    assert "no fresh analysis" in rb.status_reason


def test_overdue_ticks_never_skip_steps_or_approvals(seeded, users, scripted_analysis, scripted_parity):
    scripted_analysis.results["pages"] = analysis_result()
    rb = make_runbook(seeded, users, steps=fast_steps(approval_at=(2,)))
    services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=T0)
    # Celery fell behind for a month: the first tick moves one step only.
    tick(T0 + 30 * DAY)
    rb.refresh_from_db()
    assert rb.current_step == 1
    tick(T0 + 31 * DAY)
    tick(T0 + 32 * DAY)
    rb.refresh_from_db()
    assert (rb.status, rb.current_step) == ("waiting_approval", 1)


def test_pause_resume_jump_abort(seeded, users, scripted_analysis, scripted_parity):
    scripted_analysis.results["pages"] = analysis_result()
    rb = make_runbook(seeded, users, steps=fast_steps())
    op = users["operator"]
    services.runbook_start(runbook=rb, actor=op, reason="go", now=T0)
    tick(T0 + DAY)
    tick(T0 + 2 * DAY)
    rb.refresh_from_db()
    assert rb.current_step == 2
    with pytest.raises(ApplicationError):
        services.runbook_pause(runbook=rb, actor=op, reason=" ", now=T0 + 2 * DAY)
    services.runbook_pause(runbook=rb, actor=op, reason="incident elsewhere", now=T0 + 2 * DAY)
    tick(T0 + 4 * DAY)
    rb.refresh_from_db()
    assert (rb.status, rb.current_step) == ("paused", 2)
    services.runbook_resume(runbook=rb, actor=op, reason="incident over", now=T0 + 4 * DAY)
    # Jump back: immediate, traffic follows.
    services.runbook_jump(runbook=rb, to_step=1, actor=op, reason="re-check at 1%", now=T0 + 4 * DAY)
    rb.refresh_from_db()
    assert rb.current_step == 1 and allocation_current(surface=seeded["pages"]).treatment_bp == 100
    # Jump forward: needs someone else's approval, then the gates still decide.
    services.runbook_jump(runbook=rb, to_step=4, actor=op, reason="confident", now=T0 + 4 * DAY)
    rb.refresh_from_db()
    assert (rb.status, rb.pending_step) == ("waiting_approval", 4)
    tick(T0 + 5 * DAY + HOUR)
    rb.refresh_from_db()
    assert rb.current_step == 1
    with pytest.raises(ApplicationError):
        services.runbook_approve(runbook=rb, actor=op, reason="x", now=T0 + 5 * DAY)
    services.runbook_approve(runbook=rb, actor=users["approver"], reason="ok", now=T0 + 5 * DAY + HOUR)
    tick(T0 + 5 * DAY + 2 * HOUR)
    rb.refresh_from_db()
    assert (rb.status, rb.current_step) == ("running", 4)
    assert allocation_current(surface=seeded["pages"]).treatment_bp == 5000
    services.runbook_abort(runbook=rb, actor=op, reason="plan changed", now=T0 + 6 * DAY)
    rb.refresh_from_db()
    assert rb.status == "aborted" and allocation_current(surface=seeded["pages"]).treatment_bp == 0
    with pytest.raises(ConflictError):
        services.runbook_resume(runbook=rb, actor=op, reason="again", now=T0 + 6 * DAY)
    assert services.runbook_abort(runbook=rb, actor=op, reason="again", now=T0 + 6 * DAY).status == "aborted"


def test_groups_waits_for_pages_to_hold_half_cleanly(seeded, users, scripted_analysis, scripted_parity):
    scripted_analysis.results["pages"] = analysis_result()
    scripted_analysis.results["groups"] = analysis_result()
    pages = make_runbook(seeded, users, steps=fast_steps(approval_at=(5,)))
    groups = make_runbook(
        seeded, users, surface="groups", depends_on=pages, depends_on_bp=5000, depends_on_hold_s=2 * 86400
    )
    with pytest.raises(ConflictError, match="dependency not met"):
        services.runbook_start(runbook=groups, actor=users["operator"], reason="too early", now=T0)
    services.runbook_schedule(
        runbook=groups, start_at=T0, actor=users["operator"], reason="after pages", now=T0
    )
    services.runbook_start(runbook=pages, actor=users["operator"], reason="go", now=T0)
    now = T0
    while now < T0 + 5 * DAY:
        now += 6 * HOUR
        tick(now)
    pages.refresh_from_db()
    groups.refresh_from_db()
    assert pages.current_step == 4  # reached 50% at T0 + 4 days
    assert groups.status == "scheduled"
    assert "has been" not in groups.status_reason and "needs 48.0 h" in groups.status_reason
    while groups.status == "scheduled":
        now += 6 * HOUR
        tick(now)
        groups.refresh_from_db()
    reached = pages.steps.get(index=4).started_at
    assert now - reached >= 2 * DAY
    assert (groups.status, groups.current_step) == ("running", 0)
    assert groups.evaluations.filter(outcome="blocked").exists()


def test_capacity_gate_refuses_a_step_beyond_the_fleet(seeded, users, scripted_analysis, scripted_parity):
    scripted_analysis.results["pages"] = analysis_result()
    services.capacity_config_update(actor=users["operator"], now=T0, reason="gpu quota", max_gpu_replicas=1)
    rb = make_runbook(seeded, users, steps=fast_steps())
    services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=T0)
    for d in range(1, 5):
        tick(T0 + d * DAY)
    rb.refresh_from_db()
    # 1% and 5% fit one GPU replica (pages 1200 qps: 5% = 60 qps); 25% = 300 qps needs 1 by throughput
    # but host CPU 300·1.3·3 ms = 1.17 cores fits 2 cores; 50% = 600 qps needs 2 replicas by host CPU.
    assert rb.status == "held" and rb.current_step == 3
    cap = rb.evaluations.first().gates.get(gate="capacity", outcome="hold")
    assert (cap.value, cap.threshold) == (2.0, 1.0)
    assert "fleet limit 1" in cap.reason


def test_steps_are_validated_and_editable(seeded, users):
    with pytest.raises(ApplicationError, match="monotone"):
        make_runbook(
            seeded, users, steps=[{"name": "a", "treatment_bp": 500}, {"name": "b", "treatment_bp": 100}]
        )
    with pytest.raises(ApplicationError, match="last step"):
        make_runbook(seeded, users, steps=[{"name": "a", "treatment_bp": 500}])
    rb = make_runbook(seeded, users, steps=fast_steps())
    services.runbook_update_steps(
        runbook=rb,
        steps=[
            {"name": "10%", "treatment_bp": 1000},
            {"name": "all", "treatment_bp": 10000, "needs_approval": True},
        ],
        actor=users["operator"],
        reason="shorter plan",
        now=T0,
    )
    assert list(rb.steps.values_list("name", flat=True)) == ["10%", "all"]
    # The decision is taken where a control group remains; 100% bakes on serving health.
    assert rb.steps.get(index=0).gates["ship_decision"] is True
    assert rb.steps.get(index=1).gates["ship_decision"] is False and "serving" in rb.steps.get(index=1).gates
    with pytest.raises(ApplicationError, match="control group"):
        make_runbook(seeded, users, steps=[{"name": "all", "treatment_bp": 10000}])
    assert not Approval.objects.exists()
