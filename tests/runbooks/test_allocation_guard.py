"""Issue 17: no silent allocation change on a surface a runbook drives."""

from __future__ import annotations

import pytest
from django.test import Client

from controlplane.core.models import Allocation, AuditEvent
from migrations_runbooks import services
from migrations_runbooks.allocation_drift import allocation_drift
from migrations_runbooks.models import Runbook
from tests.runbooks.conftest import DAY, T0, analysis_result, fast_steps

pytestmark = pytest.mark.django_db
URL = "/api/v1/surfaces/pages/allocation/"


def _ramping(seeded, users, scripted_analysis, scripted_parity):
    scripted_analysis.results["pages"] = analysis_result()
    rb = services.runbook_create(
        surface=seeded["pages"],
        target_stack=seeded["unified"],
        actor=users["operator"],
        now=T0,
        steps=fast_steps(),
    )
    services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=T0)
    services.ramps_advance_due(now=T0 + DAY)  # shadow → 1%
    services.ramps_advance_due(now=T0 + 2 * DAY)  # 1% → 5%
    rb.refresh_from_db()
    assert (rb.status, rb.current_step) == ("running", 2), rb.status_reason
    return rb


def test_a_manual_change_under_an_active_runbook_is_a_409_naming_it(
    seeded, users, api_client_for, scripted_analysis, scripted_parity
):
    rb = _ramping(seeded, users, scripted_analysis, scripted_parity)
    before = Allocation.objects.filter(surface=seeded["pages"]).count()
    response = api_client_for(users["operator"]).post(
        URL,
        {"reason": "more traffic", "treatment_stack": "unified-mtl@1", "treatment_bp": 9000},
        format="json",
    )
    assert response.status_code == 409
    body = response.json()
    assert (
        body["code"] == "runbook_active"
        and f"runbook {rb.pk}" in body["detail"]
        and "override" in body["detail"]
    )
    assert Allocation.objects.filter(surface=seeded["pages"]).count() == before
    assert Runbook.objects.get(pk=rb.pk).status == "running"
    assert allocation_drift(runbook=rb, step=rb.steps.get(index=2)) == ""


def test_the_manual_override_pauses_the_runbook_is_audited_shows_on_its_page_and_the_gate_holds(
    seeded, users, api_client_for, scripted_analysis, scripted_parity
):
    rb = _ramping(seeded, users, scripted_analysis, scripted_parity)
    response = api_client_for(users["operator"]).post(
        URL,
        {
            "reason": "incident: all on unified",
            "treatment_stack": "unified-mtl@1",
            "treatment_bp": 9000,
            "override": True,
        },
        format="json",
    )
    assert response.status_code == 200 and response.json()["treatment_bp"] == 9000
    rb.refresh_from_db()
    assert rb.status == "paused" and "manual allocation override by otto: incident" in rb.status_reason
    event = AuditEvent.objects.get(verb="runbook.override")
    assert event.reason == "incident: all on unified"
    web = Client()
    web.force_login(users["viewer"])
    assert "manual allocation override" in web.get(f"/runbooks/{rb.pk}/").content.decode()
    # Resumed with the live split still at 90%: the step's gates hold with the reason.
    services.runbook_resume(runbook=rb, actor=users["operator"], reason="incident over", now=T0 + 2 * DAY)
    services.ramps_advance_due(now=T0 + 4 * DAY)
    rb.refresh_from_db()
    assert rb.status == "held" and rb.current_step == 2
    assert "differs from step" in rb.status_reason and "treatment 90%" in rb.status_reason
