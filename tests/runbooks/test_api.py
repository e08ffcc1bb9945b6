"""Runbook REST API: create, act, approve (four-eyes), read gates, capacity, program, tick."""

from __future__ import annotations

import pytest

from tests.runbooks.conftest import DAY, T0, analysis_result, fast_steps

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_mode(settings):
    settings.DEMO_MODE = True


def create(client, **extra):
    body = {
        "surface": "pages",
        "target_stack": "unified-mtl@1",
        "steps": fast_steps(approval_at=(1,)),
        **extra,
    }
    return client.post("/api/v1/runbooks/", body, format="json")


def test_create_start_tick_approve_over_the_api(
    seeded, users, api_client_for, scripted_analysis, scripted_parity, demo_mode
):
    scripted_analysis.results["pages"] = analysis_result()
    op, approver, viewer = (api_client_for(users[k]) for k in ("operator", "approver", "viewer"))

    assert create(viewer).status_code == 403
    response = create(op)
    assert response.status_code == 201, response.json()
    rb = response.json()
    assert rb["status"] == "draft" and [s["name"] for s in rb["steps"]] == [
        "shadow",
        "1%",
        "5%",
        "25%",
        "50%",
        "100%",
    ]
    url = f"/api/v1/runbooks/{rb['id']}/"

    missing_reason = op.post(url + "start/", {}, format="json")
    assert missing_reason.status_code == 400 and "reason" in missing_reason.json()["errors"]
    started = op.post(url + "start/", {"reason": "kick-off"}, format="json")
    assert started.status_code == 200 and started.json()["status"] == "running"

    ticked = op.post("/api/v1/runbooks/tick/", {"now": (T0 + 10 * DAY).isoformat()}, format="json")
    assert ticked.status_code == 200
    # The runbook started at the real clock; a simulated 'now' before that leaves the step young.
    detail = op.get(url).json()
    assert detail["current_step"] == 0

    # Approvals over the API: the starter cannot approve; a viewer cannot; the approver can.
    from migrations_runbooks import services
    from migrations_runbooks.models import Runbook

    runbook = Runbook.objects.get(pk=rb["id"])
    step0 = runbook.steps.get(index=0)
    step0.started_at = T0  # age the step so the simulated clock below matures it
    step0.save()
    Runbook.objects.filter(pk=runbook.pk).update(next_check_at=T0)
    services.ramps_advance_due(now=T0 + DAY)
    detail = op.get(url).json()
    assert detail["status"] == "waiting_approval" and detail["open_approval"]["step_index"] == 1
    assert detail["current_gates"]["gates"], "the evaluation behind the wait is shown"
    assert viewer.post(url + "approve/", {"reason": "x"}, format="json").status_code == 403
    assert op.post(url + "approve/", {"reason": "x"}, format="json").status_code == 403
    approved = approver.post(url + "approve/", {"reason": "neutral at shadow"}, format="json")
    assert approved.status_code == 200
    assert approved.json()["approvals"][0]["status"] == "approved"

    evaluations = op.get(url + "evaluations/?limit=5").json()
    assert evaluations and {"gate", "value", "threshold", "outcome", "reason"} <= set(
        evaluations[0]["gates"][0]
    )
    capacity = op.get(url + "capacity/").json()
    assert [s["name"] for s in capacity["steps"]] == ["shadow", "1%", "5%", "25%", "50%", "100%"]
    assert capacity["promoted"]["savings"]["legacy_replicas_freed"] > 0

    paused = op.post(url + "pause/", {"reason": "freeze week"}, format="json")
    assert paused.json()["status"] == "paused"
    assert op.post(url + "start/", {"reason": "again"}, format="json").status_code == 200  # idempotent
    aborted = op.post(url + "abort/", {"reason": "replanned"}, format="json")
    assert aborted.json()["status"] == "aborted"
    conflict = op.post(url + "resume/", {"reason": "x"}, format="json")
    assert conflict.status_code == 409 and conflict.json()["code"] == "conflict"


def test_validation_errors_name_the_field(seeded, users, api_client_for):
    op = api_client_for(users["operator"])
    bad_gate = create(op, steps=[{"name": "all", "treatment_bp": 10000, "gates": {"latency": 5}}])
    assert bad_gate.status_code == 400 and "steps[0].gates" in bad_gate.json()["errors"]
    unknown = create(op, target_stack="nope@1")
    assert unknown.status_code == 400 and "target_stack" in unknown.json()["errors"]
    legacy = create(op, target_stack="content-first@1")
    assert legacy.status_code == 400 and "target_stack" in legacy.json()["errors"]
    assert op.get("/api/v1/runbooks/999/").status_code == 404
    first = create(op)
    op.post(f"/api/v1/runbooks/{first.json()['id']}/start/", {"reason": "go"}, format="json")
    second = create(op)
    refused = op.post(f"/api/v1/runbooks/{second.json()['id']}/start/", {"reason": "go"}, format="json")
    assert refused.status_code == 409 and "already has an active runbook" in refused.json()["detail"]


def test_simulated_clock_only_in_demo_mode(seeded, users, api_client_for, settings):
    settings.DEMO_MODE, settings.DEBUG = False, False
    op = api_client_for(users["operator"])
    refused = op.post("/api/v1/runbooks/tick/", {"now": T0.isoformat()}, format="json")
    assert refused.status_code == 400 and "now" in refused.json()["errors"]
    assert op.post("/api/v1/runbooks/tick/", {}, format="json").status_code == 200


def test_templates_webhooks_capacity_config_program(seeded, users, api_client_for, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]  # an internal receiver, explicitly allowed
    op, viewer = api_client_for(users["operator"]), api_client_for(users["viewer"])
    t = op.post("/api/v1/runbook-templates/", {"key": "standard", "name": "Standard ramp"}, format="json")
    assert t.status_code == 200 and len(t.json()["steps"]) == 6
    rb = create(op, template="standard", steps=None)
    assert rb.status_code == 201 and rb.json()["template"] == "standard"

    hook = op.post(
        "/api/v1/runbook-webhooks/",
        {"name": "pager", "url": "http://127.0.0.1:9/x", "secret": "s" * 20, "events": ["rollback"]},
        format="json",
    )
    assert hook.status_code == 200 and "secret" not in hook.json()
    bad = op.post(
        "/api/v1/runbook-webhooks/",
        {"name": "p2", "url": "http://127.0.0.1:9/x", "secret": "s" * 20, "events": ["nope"]},
        format="json",
    )
    assert bad.status_code == 400 and "events" in bad.json()["errors"]

    cfg = op.put("/api/v1/capacity/config/", {"reason": "quota", "max_gpu_replicas": 4}, format="json")
    assert cfg.status_code == 200 and cfg.json()["max_gpu_replicas"] == 4
    assert viewer.put("/api/v1/capacity/config/", {"reason": "x"}, format="json").status_code == 403

    from migrations_runbooks import services

    services.milestone_upsert(
        key="unified-mtl", name="Unified MTL model on every surface", actor="system:test", now=T0
    )
    program = viewer.get("/api/v1/program/").json()
    assert program["milestones"][0]["key"] == "unified-mtl"
    assert program["milestones"][0]["progress"]["now"]["traffic_share_on_target"] == 0.0
    # Deliveries name receivers and carry payloads: operators only (issue 17).
    assert viewer.get("/api/v1/runbook-notifications/").status_code == 403
    assert op.get("/api/v1/runbook-notifications/").status_code == 200


def test_openapi_documents_the_runbook_api(client):
    schema = client.get("/api/schema/?format=json").json()
    ops = {
        op["operationId"] for path in schema["paths"].values() for op in path.values() if isinstance(op, dict)
    }
    assert {
        "runbooks_list",
        "runbooks_create",
        "runbooks_retrieve",
        "runbooks_start",
        "runbooks_approve",
        "runbooks_promote",
        "runbooks_capacity",
        "program_progress",
        "runbooks_tick",
    } <= ops


def test_ramps_tick_command(seeded, users, scripted_analysis, scripted_parity, settings):
    from io import StringIO

    from django.core.management import call_command

    from migrations_runbooks import services

    settings.SIMULATED_CLOCK_ALLOWED = True
    rb = services.runbook_create(
        surface=seeded["pages"],
        target_stack=seeded["unified"],
        actor=users["operator"],
        now=T0,
        steps=fast_steps(),
    )
    services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=T0)
    out = StringIO()
    call_command("ramps_tick", "--now", (T0 + DAY).isoformat(), stdout=out)
    assert "advance" in out.getvalue()
    rb.refresh_from_db()
    assert rb.current_step == 1 and "1 runbook(s) evaluated" in out.getvalue()
