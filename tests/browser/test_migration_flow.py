"""Browser: an operator creates and starts a ramp, a second person approves (four-eyes), the step
advances after a sweeper tick (seen live through htmx polling), the operator rolls back with a reason,
and a PM downloads the readout and opens it. Any JavaScript console error fails the test."""

from __future__ import annotations

import contextlib
import re
import time

import pytest
from django.utils import timezone
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect

from controlplane.core.selectors import allocation_current
from migrations_runbooks import services as rb_services
from migrations_runbooks.models import Runbook
from tests.browser.conftest import NARROW, login, snap
from tests.conftest import PASSWORD
from tests.web.runbook_helpers import instant_template

pytestmark = pytest.mark.browser
POLL_WAIT_MS = 12_000  # the status card polls every 3 s


def tick() -> None:
    """One sweep at the real time, once the runbook's next check is due (its steps last 1 s)."""
    rb = Runbook.objects.get()
    now = timezone.now()
    if rb.next_check_at and rb.next_check_at > now:
        time.sleep((rb.next_check_at - now).total_seconds() + 0.05)
    rb_services.ramps_advance_due(now=timezone.now())


def test_ramp_with_four_eyes_approval_tick_and_rollback(ui, new_user_page, seeded, users):
    instant_template(users["operator"], timezone.now())
    operator = ui
    login(operator, users["operator"].username, PASSWORD)

    # Create the runbook from the page and start it, giving a reason on the confirmation page.
    operator.get_by_role("link", name="Runbooks", exact=True).click()
    snap(operator, "runbooks-new")
    operator.get_by_label("Surface").select_option("pages")
    operator.get_by_label("Target stack").select_option(label="unified-mtl@1")
    operator.get_by_label("Plan").select_option("instant-ui")
    operator.get_by_label("Reason").fill("move pages to the unified stack")
    operator.get_by_role("button", name="Create draft runbook").click()
    expect(operator.get_by_role("heading", level=1)).to_have_text("pages → unified-mtl@1")
    operator.get_by_role("link", name="Start", exact=True).click()
    expect(operator.get_by_role("heading", level=1)).to_contain_text("Start")
    operator.get_by_label("Reason").fill("shadow parity was fine; start at 1%")
    operator.get_by_role("button", name="Confirm start").click()
    expect(operator.get_by_role("status").first).to_contain_text("Start: done")
    status = operator.locator("#runbook-status")
    expect(status).to_contain_text("Running")
    expect(operator.get_by_test_id("current-step")).to_contain_text("0 · 1%")
    rb = Runbook.objects.get()
    assert allocation_current(surface=seeded["pages"]).treatment_bp == 100
    snap(operator, "runbook-running")

    # The sweeper ticks (as beat would, on the real clock): step 0 is done, step 1 needs an approver.
    # The open page picks it up by htmx polling, without a reload.
    tick()
    expect(status).to_contain_text("Waiting for approval", timeout=POLL_WAIT_MS)
    expect(status).to_contain_text("Approval needed")
    # The operator who started it has no Approve button.
    expect(operator.get_by_role("link", name="Approve")).to_have_count(0)

    # A second person, with the approver role, sees it under "Needs attention" and approves.
    approver = new_user_page()
    login(approver, users["approver"].username, PASSWORD)
    attention = approver.locator("section.attention")
    expect(attention).to_contain_text("approve step 1")
    snap(approver, "overview-needs-attention")
    attention.get_by_role("link", name=re.compile("approve step 1")).click()
    approver.locator("#runbook-status").get_by_role("link", name="Approve").click()
    expect(approver.get_by_role("heading", level=1)).to_contain_text("Approve")
    # No reason: the server refuses, and says so next to the field.
    approver.get_by_role("button", name="Confirm approve").click()
    expect(approver.locator(".field.has-error")).to_contain_text("This field is required.")
    snap(approver, "approve-validation-error")
    approver.get_by_label("Reason").fill("1% was clean; proceed to 5%")
    approver.get_by_role("button", name="Confirm approve").click()
    expect(approver.locator("table.approvals")).to_contain_text("1% was clean; proceed to 5%")

    # The next tick applies the approval: both open pages show step 1 (5%) by polling.
    tick()
    expect(approver.get_by_test_id("current-step")).to_contain_text("1 · 5%", timeout=POLL_WAIT_MS)
    expect(operator.get_by_test_id("current-step")).to_contain_text("1 · 5%", timeout=POLL_WAIT_MS)
    assert allocation_current(surface=seeded["pages"]).treatment_bp == 500
    # The timeline reloaded on the change: its x range now includes the 5% step.
    timeline = operator.locator(f"#runbook-timeline .js-plotly-plot[id^='runbook-timeline-{rb.pk}-']")
    expect(timeline).to_have_count(1)  # re-rendered after the change, with plotly's classes intact
    expect(timeline.locator(".legend")).to_be_visible()
    snap(operator, "runbook-step-advanced")

    # The operator rolls back with a reason; the page shows the rollback and why.
    operator.reload()
    operator.locator("#runbook-status").get_by_role("link", name="Roll back").click()
    operator.get_by_label("Reason").fill("hide rate up 4% for interest-first users")
    operator.get_by_role("button", name="Confirm roll back").click()
    expect(status).to_contain_text("Rolled back")
    expect(operator.get_by_test_id("status-reason")).to_contain_text(
        "hide rate up 4% for interest-first users"
    )
    assert allocation_current(surface=seeded["pages"]).treatment_bp == 0
    snap(operator, "runbook-rolled-back")
    operator.goto(operator.base + "/")
    expect(operator.locator("section.attention")).to_contain_text("rolled back")
    expect(operator.locator("section.attention")).to_contain_text("hide rate up 4% for interest-first users")
    operator.goto(operator.base + f"/runbooks/{rb.pk}/")
    operator.set_viewport_size(NARROW)
    # Plotly re-lays out its charts on the resize event, asynchronously: give it a moment to
    # settle (the assertion below still fails if the page never fits).
    with contextlib.suppress(PlaywrightTimeoutError):
        operator.wait_for_function(f"document.documentElement.scrollWidth <= {NARROW['width']}", timeout=5000)
    snap(operator, "runbook-narrow")
    width = operator.evaluate("document.documentElement.scrollWidth")
    assert width <= NARROW["width"], f"runbook page is {width}px wide on a {NARROW['width']}px screen"


def test_download_readout_and_open_it(ui, seeded, users, tmp_path):
    from tests.web.test_experiments_parity import analysed_experiment

    experiment, _run = analysed_experiment(seeded, users)
    login(ui, users["viewer"].username, PASSWORD)
    ui.get_by_role("link", name="Experiments", exact=True).click()
    row = ui.locator(f'tr[data-experiment="{experiment.key}"]')
    expect(row).to_be_visible()
    snap(ui, "experiments")
    with ui.expect_download() as info:
        row.get_by_role("link", name="HTML", exact=True).click()
    download = info.value
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    assert path.suffix == ".html" and path.stat().st_size > 10_000
    # The downloaded readout is self-contained: it opens from disk, its charts render, no JS errors.
    ui.goto(path.as_uri())
    expect(ui.locator(".js-plotly-plot").first).to_be_visible()
    expect(ui.get_by_role("heading", level=1)).to_contain_text(experiment.name)
    snap(ui, "readout-downloaded", check=False)  # the experiments app's document
    with ui.expect_download() as info:
        ui.goto(ui.base + "/experiments/")
        ui.locator(f'tr[data-experiment="{experiment.key}"]').get_by_role("link", name="CSV").click()
    csv_path = tmp_path / info.value.suggested_filename
    info.value.save_as(csv_path)
    header = csv_path.read_text().splitlines()[0]
    assert "metric" in header
    # The readout page inside the site.
    ui.goto(ui.base + f"/experiments/{experiment.key}/readout/")
    expect(ui.locator(".js-plotly-plot").first).to_be_visible()
    snap(ui, "readout-page", check=False)
