"""An automatic rollback on a guardrail breach, as the runbook page shows it: the reason, and the
breaching gates with their values and thresholds (analysis scripted with the runbooks tests' helpers)."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.test import Client
from django.urls import reverse

from migrations_runbooks import services as rb_services
from tests.runbooks.conftest import (  # noqa: F401 - pytest fixtures used by name
    T0,
    analysis_result,
    scripted_analysis,
    scripted_parity,
)

pytestmark = [pytest.mark.django_db]

STEPS = [
    {"name": "5%", "treatment_bp": 500, "min_duration_s": 86400, "min_units": 100},
    {"name": "100%", "treatment_bp": 10000, "min_duration_s": 86400, "min_units": 100},
]


def test_guardrail_breach_rollback_shows_reason_and_breaching_gates(
    seeded,
    users,
    scripted_analysis,  # noqa: F811 - the runbooks tests' fixture
    scripted_parity,  # noqa: F811
):
    breach_ci = {"method": "msprt", "ci": [0.002, 0.009], "p_value": 0.001, "diff": 0.006, "computable": True}
    scripted_analysis.results["groups"] = analysis_result(
        hide_verdict="inconclusive", hide_sequential=breach_ci
    )
    rb = rb_services.runbook_create(
        surface=seeded["groups"], target_stack=seeded["unified"], actor=users["operator"], now=T0, steps=STEPS
    )
    rb_services.runbook_start(runbook=rb, actor=users["operator"], reason="kick-off", now=T0)
    rb_services.ramps_advance_due(now=T0 + dt.timedelta(hours=1))
    rb.refresh_from_db()
    assert rb.status == "rolled_back"

    client = Client()
    client.force_login(users["viewer"])
    html = client.get(reverse("web-runbook-detail", args=[rb.pk])).content.decode()
    reason = re.search(r'data-testid="status-reason">([^<]+)<', html).group(1)
    assert "guardrail breach at step 5%" in reason and "hide_report_rate" in reason
    rows = re.findall(r'<tr class="gate-rollback">(.*?)</tr>', html, re.S)
    assert rows, "the breaching gate is listed"
    cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[0], re.S)
    assert cells[0] == "guardrail" and "hide_report_rate" in cells[1]
    # Value and threshold come from the stored gate result, formatted to three decimals.
    gate = rb.evaluations.first().gates.get(outcome="rollback")
    assert f"{gate.value:,.3f}" in cells[3] and f"{gate.threshold:,.3f}" in cells[4]
    assert gate.reason.split(";")[0][:40] in cells[5].replace("&#x27;", "'")
    # The overview lists rollbacks of the last week only; this one happened on the simulated T0.
    home = client.get("/").content.decode()
    assert "guardrail breach at step 5%" not in home


def test_whole_migration_from_the_pages_to_promotion(
    seeded,
    users,
    scripted_analysis,  # noqa: F811
    scripted_parity,  # noqa: F811
):
    """Start, approvals and promotion all through the pages; the sweeper (simulated clock) between."""
    from controlplane.core.models import Surface
    from migrations_runbooks.models import Runbook
    from tests.runbooks.conftest import fast_steps

    scripted_analysis.results["pages"] = analysis_result()
    operator, approver = Client(), Client()
    operator.force_login(users["operator"])
    approver.force_login(users["approver"])
    template = rb_services.runbook_template_upsert(
        key="standard-fast",
        name="Standard, 1 h steps",
        actor=users["operator"],
        now=T0,
        steps=fast_steps(approval_at=(3,), hours=1),
    )
    response = operator.post(
        reverse("web-runbooks"),
        {
            "surface": "pages",
            "target_stack": seeded["unified"].pk,
            "template": template.key,
            "reason": "H2 plan",
        },
    )
    rb = Runbook.objects.get()
    assert response.status_code == 302
    assert (
        operator.post(
            reverse("web-runbook-action", args=[rb.pk, "start"]), {"reason": "go ahead"}
        ).status_code
        == 302
    )
    rb.refresh_from_db()
    now = rb.step_started_at
    approvals = 0
    for _ in range(40):
        rb.refresh_from_db()
        if rb.status == "promoted":
            break
        if rb.status == "waiting_approval":
            url = reverse("web-runbook-action", args=[rb.pk, "approve"])
            assert approver.post(url, {"reason": "reviewed the gates"}).status_code == 302
            approvals += 1
        now += dt.timedelta(minutes=61)
        rb_services.ramps_advance_due(now=now)
    rb.refresh_from_db()
    assert rb.status == "promoted" and approvals == 2  # entering 25%, and promotion
    pages = Surface.objects.get(key="pages")
    assert pages.status == "unified" and pages.production_stack == seeded["unified"]
    html = operator.get("/").content.decode()
    # Pages (1 200 of 2 000 peak QPS) now runs on the unified stack: 60% of the program's traffic.
    assert re.search(r'data-testid="unified-traffic">60.0%<', html)
    assert "1 / 2" in html
    detail = operator.get(reverse("web-runbook-detail", args=[rb.pk])).content.decode()
    assert "badge-promoted" in detail and "runbook-actions" not in detail
