"""Browser: log in, read the overview, stacks and audit log, change an allocation with a validation
error first; a viewer sees no form. Screenshots of each page at 1280×800 and on a narrow screen."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from controlplane.core.models import Allocation
from tests.browser.conftest import NARROW, login, snap
from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser


def test_login_overview_stacks_and_audit(ui, seeded, users):
    login(ui, users["operator"].username, PASSWORD)
    expect(ui.get_by_role("heading", name="Program overview")).to_be_visible()
    groups_row = ui.locator('tr[data-surface="groups"]')
    expect(groups_row).to_contain_text("live 60.0%")
    expect(groups_row).to_contain_text("live 40.0%")
    expect(ui.get_by_test_id("unified-traffic")).to_have_text("0.0%")
    snap(ui, "overview")

    ui.get_by_role("link", name="Stacks", exact=True).click()
    expect(ui.get_by_role("heading", name="Stack registry")).to_be_visible()
    expect(ui.locator("table.stacks")).to_contain_text("unified-mtl")
    snap(ui, "stacks")

    # Change the pages allocation from its page: first a server-side validation error beside the field.
    ui.goto(ui.base + "/surfaces/pages/")
    expect(ui.locator("#timeline-pages .main-svg").first).to_be_visible()
    ui.get_by_label("Treatment share (% of units)").fill("5")
    ui.get_by_label("Reason").fill("first step to 5%")
    ui.get_by_role("button", name="Publish new allocation").click()
    treatment_field = ui.locator(".field.has-error", has=ui.get_by_label("Treatment stack"))
    expect(treatment_field).to_contain_text("required when treatment_bp > 0")
    snap(ui, "surface-form-error")
    ui.get_by_label("Treatment stack").select_option("unified-mtl@1")
    ui.get_by_role("button", name="Publish new allocation").click()
    expect(ui.get_by_role("status")).to_contain_text("Published allocation v2 of pages.")
    assert Allocation.objects.filter(surface=seeded["pages"]).order_by("-version").first().treatment_bp == 500
    snap(ui, "surface-pages")

    ui.get_by_role("link", name="Audit log", exact=True).click()
    ui.get_by_label("Surface").select_option("pages")
    ui.get_by_label("Verb").fill("allocation")
    ui.get_by_role("button", name="Filter").click()
    expect(ui.locator("table.audit tbody tr")).to_have_count(1)
    expect(ui.locator("table.audit")).to_contain_text("first step to 5%")
    snap(ui, "audit")

    ui.set_viewport_size(NARROW)
    ui.goto(ui.base + "/")
    expect(ui.get_by_role("heading", name="Program overview")).to_be_visible()
    snap(ui, "overview-narrow")
    # Nothing but the matrix' own scroller may overflow the narrow viewport horizontally.
    width = ui.evaluate("document.documentElement.scrollWidth")
    assert width <= NARROW["width"], f"page is {width}px wide on a {NARROW['width']}px screen"


def test_viewer_sees_no_change_form(ui, seeded, users):
    login(ui, users["viewer"].username, PASSWORD)
    ui.goto(ui.base + "/surfaces/groups/")
    expect(ui.get_by_role("heading", name=re.compile("Groups feed"))).to_be_visible()
    expect(ui.get_by_role("button", name="Publish new allocation")).to_have_count(0)
    expect(ui.get_by_text("vera (viewer)")).to_be_visible()
    # Nor any runbook action.
    from django.utils import timezone

    from migrations_runbooks import services as rb_services
    from tests.web.runbook_helpers import quick_template

    template = quick_template(users["operator"], timezone.now())
    rb = rb_services.runbook_create(
        surface=seeded["pages"],
        target_stack=seeded["unified"],
        template=template,
        actor=users["operator"],
        now=timezone.now(),
    )
    rb_services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=timezone.now())
    ui.goto(ui.base + f"/runbooks/{rb.pk}/")
    expect(ui.locator("#runbook-status")).to_contain_text("Running")
    expect(ui.get_by_role("group", name="Runbook actions")).to_have_count(0)
    for name in ("Pause", "Roll back", "Abort", "Approve"):
        expect(ui.get_by_role("link", name=name, exact=True)).to_have_count(0)
    snap(ui, "runbook-viewer")


def test_shadow_parity_and_capacity_pages(ui, seeded, users):
    from django.utils import timezone

    from migrations_runbooks import services as rb_services
    from tests.web.runbook_helpers import quick_template
    from tests.web.test_experiments_parity import shadow_days

    shadow_days(seeded, users, days=(4, 3, 2, 1), per_day=80)
    template = quick_template(users["operator"], timezone.now())
    rb = rb_services.runbook_create(
        surface=seeded["groups"],
        target_stack=seeded["unified"],
        template=template,
        actor=users["operator"],
        now=timezone.now(),
    )
    login(ui, users["viewer"].username, PASSWORD)
    ui.get_by_role("link", name="Shadow parity").click()
    ui.get_by_label("Surface", exact=True).select_option("pages")
    ui.get_by_role("button", name="Show").click()
    for div in ("parity-over-time", "latency-daily", "latency-distribution"):
        expect(ui.locator(f"#{div}.js-plotly-plot .legend")).to_be_visible()
    expect(ui.locator("table.parity tbody tr")).to_have_count(4)
    snap(ui, "shadow-parity")
    ui.goto(ui.base + f"/runbooks/{rb.pk}/capacity/")
    expect(ui.get_by_role("heading", level=1)).to_contain_text("Capacity plan")
    expect(ui.locator(f"#capacity-{rb.pk}.js-plotly-plot .legend")).to_be_visible()
    expect(ui.locator(f"#savings-{rb.pk}.js-plotly-plot .legend")).to_be_visible()
    expect(ui.locator("table.capacity tbody tr")).to_have_count(5)  # baseline, 3 steps, promoted
    snap(ui, "capacity")
