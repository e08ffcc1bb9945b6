"""Runbook pages: create and start from the page, four-eyes approval, rollback with its reason,
gates with values/thresholds, htmx partial, role enforcement on the server, capacity page."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from controlplane.core.selectors import allocation_current
from migrations_runbooks import services as rb_services
from migrations_runbooks.models import Runbook
from tests.web.runbook_helpers import quick_template

pytestmark = [pytest.mark.django_db, pytest.mark.sqlite_path]


@pytest.fixture
def client_for():
    def make(user) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


def field_block(html: str, field_id: str) -> str:
    match = re.search(rf'<div class="field has-error">\s*<label for="{field_id}">.*?</div>', html, re.S)
    return match.group(0) if match else ""


def create_runbook(client, seeded, template=None) -> Runbook:
    response = client.post(
        reverse("web-runbooks"),
        {
            "surface": "pages",
            "target_stack": seeded["unified"].pk,
            "template": template.key if template else "",
            "name": "",
            "reason": "pages onto the unified stack",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    return Runbook.objects.get()


def test_operator_creates_and_starts_then_approver_approves_and_step_advances(seeded, users, client_for):
    operator, approver = client_for(users["operator"]), client_for(users["approver"])
    template = quick_template(users["operator"], timezone.now())
    rb = create_runbook(operator, seeded, template)
    assert rb.status == "draft" and rb.template == template
    detail_url = reverse("web-runbook-detail", args=[rb.pk])
    page = operator.get(detail_url).content.decode()
    assert f'href="/runbooks/{rb.pk}/start/"' in page
    # Start needs a reason: the server's message sits next to the field, nothing starts.
    start_url = reverse("web-runbook-action", args=[rb.pk, "start"])
    response = operator.post(start_url, {"reason": ""})
    assert "This field is required." in field_block(response.content.decode(), "id_reason")
    rb.refresh_from_db()
    assert rb.status == "draft"
    response = operator.post(start_url, {"reason": "kick-off after review"})
    assert response.status_code == 302
    rb.refresh_from_db()
    assert (rb.status, rb.current_step) == ("running", 0)
    assert allocation_current(surface=seeded["pages"]).treatment_bp == 100

    # One simulated hour later the sweeper finds step 0 done; step 1 needs an approver.
    now = rb.step_started_at + dt.timedelta(hours=1, minutes=1)
    rb_services.ramps_advance_due(now=now)
    rb.refresh_from_db()
    assert rb.status == "waiting_approval"
    home = operator.get("/").content.decode()
    assert "Needs attention" in home and "approve step 1" in home

    # The operator who started it is not offered Approve (no role) and is refused by the server anyway.
    assert "/approve/" not in operator.get(detail_url).content.decode()
    assert (
        operator.post(reverse("web-runbook-action", args=[rb.pk, "approve"]), {"reason": "me"}).status_code
        == 403
    )
    # A second person with the approver role approves.
    assert f"/runbooks/{rb.pk}/approve/" in approver.get(detail_url).content.decode()
    response = approver.post(
        reverse("web-runbook-action", args=[rb.pk, "approve"]), {"reason": "1% was clean"}
    )
    assert response.status_code == 302
    rb_services.ramps_advance_due(now=now + dt.timedelta(minutes=2))
    rb.refresh_from_db()
    assert (rb.status, rb.current_step) == ("running", 1)
    assert allocation_current(surface=seeded["pages"]).treatment_bp == 500
    html = approver.get(detail_url).content.decode()
    assert "1 · 5%" in html and "1% was clean" in html


def test_viewer_sees_no_actions_and_every_action_is_refused(seeded, users, client_for):
    template = quick_template(users["operator"], timezone.now())
    rb = rb_services.runbook_create(
        surface=seeded["pages"],
        target_stack=seeded["unified"],
        template=template,
        actor=users["operator"],
        now=timezone.now(),
    )
    viewer = client_for(users["viewer"])
    html = viewer.get(reverse("web-runbook-detail", args=[rb.pk])).content.decode()
    assert "runbook-actions" not in html
    assert "New runbook" not in viewer.get(reverse("web-runbooks")).content.decode()
    for action in ("start", "pause", "resume", "approve", "reject", "rollback", "abort"):
        url = reverse("web-runbook-action", args=[rb.pk, action])
        assert viewer.post(url, {"reason": "try"}).status_code == 403, action
    assert viewer.post(reverse("web-runbooks"), {"surface": "pages"}).status_code == 403
    rb.refresh_from_db()
    assert rb.status == "draft"


def test_rollback_shows_its_reason_and_resets_traffic(seeded, users, client_for):
    operator = client_for(users["operator"])
    template = quick_template(users["operator"], timezone.now())
    rb = rb_services.runbook_create(
        surface=seeded["pages"],
        target_stack=seeded["unified"],
        template=template,
        actor=users["operator"],
        now=timezone.now(),
    )
    rb_services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=timezone.now())
    confirm = operator.get(reverse("web-runbook-action", args=[rb.pk, "rollback"])).content.decode()
    assert "Roll back" in confirm and "Confirm roll back" in confirm
    response = operator.post(
        reverse("web-runbook-action", args=[rb.pk, "rollback"]), {"reason": "hide rate spiked in groups"}
    )
    assert response.status_code == 302
    rb.refresh_from_db()
    assert rb.status == "rolled_back"
    assert allocation_current(surface=seeded["pages"]).treatment_bp == 0
    html = operator.get(reverse("web-runbook-detail", args=[rb.pk])).content.decode()
    assert "Rolled back" in html and "hide rate spiked in groups" in html
    # A finished runbook is not polled any more and offers no actions.
    assert "hx-trigger" not in re.search(r'<section id="runbook-status".*?>', html, re.S).group(0)
    assert "runbook-actions" not in html
    home = operator.get("/").content.decode()
    assert "rolled back" in home and "hide rate spiked in groups" in home
    # A second rollback is refused with the service's reason next to the form.
    response = operator.post(reverse("web-runbook-action", args=[rb.pk, "pause"]), {"reason": "again"})
    assert "only a live runbook can pause" in response.content.decode()


def test_status_partial_for_htmx_with_gates_and_change_trigger(seeded, users, client_for):
    operator = client_for(users["operator"])
    template = quick_template(users["operator"], timezone.now())
    rb = rb_services.runbook_create(
        surface=seeded["pages"],
        target_stack=seeded["unified"],
        template=template,
        actor=users["operator"],
        now=timezone.now(),
    )
    rb_services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=timezone.now())
    rb.refresh_from_db()
    url = reverse("web-runbook-detail", args=[rb.pk])
    full = operator.get(url).content.decode()
    state = re.search(r'data-state="([0-9a-f]+)"', full).group(1)
    assert "<html" in full and 'hx-trigger="every 3s"' in full
    rb_services.ramps_advance_due(now=rb.step_started_at + dt.timedelta(minutes=5))  # too young: waits
    partial = operator.get(url, {"state": state}, HTTP_HX_REQUEST="true")
    body = partial.content.decode()
    assert "<html" not in body and body.lstrip().startswith('<section id="runbook-status"')
    # The gate table shows values, thresholds and the reason of the minimum-duration gate.
    row = re.search(r'<tr class="gate-wait"><td>min_duration</td>.*?</tr>', body, re.S).group(0)
    assert "300.000" in row and "&gt;= 3,600.000" in row and "of the required" in row
    assert "HX-Trigger" not in partial  # same step, same allocation: the timeline need not reload
    rb_services.ramps_advance_due(now=rb.step_started_at + dt.timedelta(hours=2))
    partial = operator.get(url, {"state": state}, HTTP_HX_REQUEST="true")
    assert partial["HX-Trigger"] == "runbook-changed"
    assert "Approval needed" in partial.content.decode()
    timeline = operator.get(url, {"part": "timeline"}, HTTP_HX_REQUEST="true").content.decode()
    assert re.search(rf'id="runbook-timeline-{rb.pk}-\d+"', timeline) and "Plotly.newPlot" in timeline
    history = operator.get(url, {"part": "history"}, HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in history and 'aria-current="step"' in history
    assert re.search(
        r"<tr><td>[0-9-]+ [0-9:]+</td><td>0</td><td><span class=\"badge badge-approval\">", history
    )


def test_create_form_shows_service_errors_next_to_the_field(seeded, users, client_for):
    operator = client_for(users["operator"])
    # A legacy stack is not offered as a target; posting one anyway is refused next to the field.
    response = operator.post(
        reverse("web-runbooks"),
        {"surface": "pages", "target_stack": seeded["content_first"].pk, "reason": "x"},
    )
    assert "Select a valid choice" in field_block(response.content.decode(), "id_target_stack")
    response = operator.post(reverse("web-runbooks"), {"surface": "", "target_stack": seeded["unified"].pk})
    assert "This field is required." in field_block(response.content.decode(), "id_surface")
    assert not Runbook.objects.exists()


def test_capacity_page_shows_replicas_per_step_and_savings(seeded, users, client_for):
    template = quick_template(users["operator"], timezone.now())
    rb = rb_services.runbook_create(
        surface=seeded["groups"],
        target_stack=seeded["unified"],
        template=template,
        actor=users["operator"],
        now=timezone.now(),
    )
    response = client_for(users["viewer"]).get(reverse("web-runbook-capacity", args=[rb.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    from migrations_runbooks.selectors import capacity_plan

    plan = capacity_plan(runbook=rb)
    saved = plan["promoted"]["savings"]["cost_saved_per_hour"]
    assert f'data-testid="saved-per-hour">${saved:,.2f}/h' in html
    rows = re.findall(r"<tr><th scope=\"row\">(\d) · ([^<]+)</th>", html)
    assert rows == [("0", "1%"), ("1", "5%"), ("2", "100%")]
    assert f'id="capacity-{rb.pk}"' in html and f'id="savings-{rb.pk}"' in html
    # Replicas of the unified stack at 100% equal the plan's figure for that step.
    unified = next(s for s in plan["steps"][2]["plan"]["stacks"] if s["stack"] == "unified-mtl@1")
    assert unified["replicas"] and unified["replicas"] > 0


def test_four_eyes_operator_who_is_also_approver_cannot_approve_own_runbook(seeded, users, client_for):
    olga = client_for(users["operator2"])  # operator and approver
    template = quick_template(users["operator2"], timezone.now())
    rb = rb_services.runbook_create(
        surface=seeded["pages"],
        target_stack=seeded["unified"],
        template=template,
        actor=users["operator2"],
        now=timezone.now(),
    )
    rb_services.runbook_start(runbook=rb, actor=users["operator2"], reason="go", now=timezone.now())
    rb.refresh_from_db()
    rb_services.ramps_advance_due(now=rb.step_started_at + dt.timedelta(hours=2))
    rb.refresh_from_db()
    assert rb.status == "waiting_approval"
    detail = olga.get(reverse("web-runbook-detail", args=[rb.pk])).content.decode()
    assert "Approval needed" in detail and f"/runbooks/{rb.pk}/approve/" not in detail
    # Posting anyway: the service refuses (four-eyes) and the page says why, above the form.
    response = olga.post(reverse("web-runbook-action", args=[rb.pk, "approve"]), {"reason": "my own"})
    assert response.status_code == 200
    assert "four-eyes: the approver must be someone other than" in response.content.decode()
    rb.refresh_from_db()
    assert rb.approvals.get().status == "pending"
    # Anna (approver, not involved) is offered the button.
    anna = client_for(users["approver"])
    assert (
        f"/runbooks/{rb.pk}/approve/"
        in anna.get(reverse("web-runbook-detail", args=[rb.pk])).content.decode()
    )
