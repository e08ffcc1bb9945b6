"""Pages of the web UI: roles, overview shares, stack registry, surface allocation form, audit filters."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.test import Client
from django.urls import reverse

from controlplane.core import services
from controlplane.core.models import Allocation, AuditEvent

pytestmark = [pytest.mark.django_db, pytest.mark.sqlite_path]


@pytest.fixture
def client_for():
    def make(user) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


def text_of(response) -> str:
    """Visible text, whitespace collapsed, for assertions on what a reader sees."""
    html = response.content.decode()
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_pages_require_login_and_a_role(seeded, users):
    anonymous = Client()
    for name in ("home", "web-stacks", "web-audit"):
        response = anonymous.get(reverse(name))
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    norole = Client()
    norole.force_login(users["norole"])
    response = norole.get("/")
    assert response.status_code == 403
    assert "no role" in response.content.decode()


def test_overview_shows_live_and_shadow_shares_and_progress(seeded, users, client_for):
    pages, groups, unified = seeded["pages"], seeded["groups"], seeded["unified"]
    services.allocation_change(
        surface=groups, actor=users["operator"], reason="5% ramp", treatment_stack=unified, treatment_bp=500
    )
    services.allocation_change(
        surface=pages, actor=users["operator"], reason="shadow", shadow_stack=unified, shadow_bp=1000
    )
    response = client_for(users["viewer"]).get("/")
    assert response.status_code == 200
    html = response.content.decode()
    groups_row = re.search(r'<tr data-surface="groups">(.*?)</tr>', html, re.S).group(1)
    # Groups: 60/40 legacy split, 5% of units moved to unified: 57% / 38% / 5%.
    assert "live 57.0%" in groups_row and "live 38.0%" in groups_row and "live 5.0%" in groups_row
    pages_row = re.search(r'<tr data-surface="pages">(.*?)</tr>', html, re.S).group(1)
    assert "live 100.0%" in pages_row and "shadow 10.0%" in pages_row
    # Unified traffic is QPS-weighted: 5% of groups' 800 QPS out of 2000 total = 2.0%.
    progress = re.search(r'data-testid="unified-traffic">([^<]+)<', html).group(1)
    assert progress == "2.0%"
    assert "0 / 2" in text_of(response)


def test_stack_registry_lists_measured_figures_and_offline_metrics(seeded, users, client_for):
    services.stack_register(
        key="unified-mtl",
        version="2",
        kind="unified_mtl",
        device="gpu",
        latency_slo_ms=80,
        p50_latency_ms=21.5,
        p99_latency_ms=95.25,
        throughput_per_replica=850,
        offline_metrics={"ndcg@10": 0.4123, "auc_like": 0.781},
        actor=users["operator"],
    )
    text = text_of(client_for(users["viewer"]).get(reverse("web-stacks")))
    assert "unified-mtl v2" in text
    assert "ndcg@10" in text and "0.4123" in text and "0.7810" in text
    assert "95.2 over SLO" in text or "95.3 over SLO" in text
    assert "850" in text


def test_viewer_sees_no_allocation_form_and_the_server_refuses_the_post(seeded, users, client_for):
    url = reverse("web-surface-detail", args=["pages"])
    viewer = client_for(users["viewer"])
    response = viewer.get(url)
    assert response.status_code == 200
    assert "Publish new allocation" not in response.content.decode()
    response = viewer.post(
        url,
        {
            "treatment_stack": "unified-mtl@1",
            "treatment_pct": "5",
            "shadow_pct": "0",
            "holdout_pct": "0",
            "reason": "sneaky",
        },
    )
    assert response.status_code == 403
    assert Allocation.objects.filter(surface=seeded["pages"]).count() == 1
    assert "Publish new allocation" in client_for(users["operator"]).get(url).content.decode()


def test_allocation_form_publishes_and_shows_service_errors_next_to_the_field(seeded, users, client_for):
    url = reverse("web-surface-detail", args=["pages"])
    operator = client_for(users["operator"])
    # Treatment share without a treatment stack: the service names treatment_stack.
    response = operator.post(
        url,
        {
            "treatment_stack": "",
            "treatment_pct": "5",
            "shadow_pct": "0",
            "holdout_pct": "0",
            "reason": "ramp to 5%",
        },
    )
    assert response.status_code == 200
    field = re.search(
        r'<div class="field has-error">\s*<label for="id_treatment_stack">.*?</div>',
        response.content.decode(),
        re.S,
    )
    assert field and "required when treatment_bp &gt; 0" in field.group(0)
    # Missing reason: the form's own validation, next to the reason field.
    response = operator.post(
        url,
        {
            "treatment_stack": "unified-mtl@1",
            "treatment_pct": "5",
            "shadow_pct": "0",
            "holdout_pct": "0",
            "reason": "",
        },
    )
    field = re.search(
        r'<div class="field has-error">\s*<label for="id_reason">.*?</div>', response.content.decode(), re.S
    )
    assert response.status_code == 200 and field and "This field is required." in field.group(0)
    # Holdout + treatment over 100%.
    response = operator.post(
        url,
        {
            "treatment_stack": "unified-mtl@1",
            "treatment_pct": "60",
            "shadow_pct": "0",
            "holdout_pct": "50",
            "reason": "too much",
        },
    )
    field = re.search(
        r'<div class="field has-error">\s*<label for="id_treatment_pct">.*?</div>',
        response.content.decode(),
        re.S,
    )
    assert response.status_code == 200 and field and "must not exceed 10000" in field.group(0)
    assert Allocation.objects.filter(surface=seeded["pages"]).count() == 1
    # A valid change publishes version 2, audited with the operator and the reason.
    response = operator.post(
        url,
        {
            "treatment_stack": "unified-mtl@1",
            "treatment_pct": "1.25",
            "shadow_pct": "10",
            "shadow_stack": "unified-mtl@1",
            "holdout_pct": "0",
            "reason": "first ramp step",
            "expected_version": "1",
        },
    )
    assert response.status_code == 302
    current = Allocation.objects.filter(surface=seeded["pages"]).order_by("-version").first()
    assert (current.version, current.treatment_bp, current.shadow_bp) == (2, 125, 1000)
    event = AuditEvent.objects.get(verb="allocation.change")
    assert event.actor_label == users["operator"].username and event.reason == "first ramp step"
    page = operator.get(url)
    assert "Published allocation v2 of pages." in page.content.decode()
    assert 'id="timeline-pages"' in page.content.decode()
    # A stale expected_version is refused (409 from the service) and shown above the form.
    response = operator.post(
        url,
        {
            "treatment_stack": "unified-mtl@1",
            "treatment_pct": "5",
            "shadow_pct": "0",
            "holdout_pct": "0",
            "reason": "stale form",
            "expected_version": "1",
        },
    )
    assert response.status_code == 200 and "reload and retry" in response.content.decode()


def test_audit_log_filters_by_actor_surface_verb_and_date(seeded, users, client_for):
    groups, pages, unified = seeded["groups"], seeded["pages"], seeded["unified"]
    day1 = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    day2 = dt.datetime(2026, 3, 5, 12, tzinfo=dt.UTC)
    services.allocation_change(
        surface=groups,
        actor=users["operator"],
        reason="groups 1%",
        treatment_stack=unified,
        treatment_bp=100,
        now=day1,
    )
    services.allocation_change(
        surface=pages,
        actor=users["operator2"],
        reason="pages 1%",
        treatment_stack=unified,
        treatment_bp=100,
        now=day2,
    )
    viewer = client_for(users["viewer"])
    url = reverse("web-audit")
    text = text_of(viewer.get(url, {"actor": users["operator"].username}))
    assert "groups 1%" in text and "pages 1%" not in text
    text = text_of(viewer.get(url, {"surface": "pages"}))
    assert "pages 1%" in text and "groups 1%" not in text
    text = text_of(viewer.get(url, {"verb": "allocation"}))
    assert "pages 1%" in text and "groups 1%" in text and "demo seed" not in text
    text = text_of(viewer.get(url, {"since": "2026-03-02", "until": "2026-03-05"}))
    assert "pages 1%" in text and "groups 1%" not in text
    text = text_of(viewer.get(url, {"until": "2026-03-01"}))
    assert "groups 1%" in text and "pages 1%" not in text
    # A reversed date range is a validation error shown next to the "To" field.
    response = viewer.get(url, {"since": "2026-03-05", "until": "2026-03-01"})
    assert response.status_code == 200
    field = re.search(
        r'<div class="field has-error">\s*<label for="id_until">.*?</div>', response.content.decode(), re.S
    )
    assert field and "before the start date" in field.group(0)
    # An unknown actor is not a valid choice.
    response = viewer.get(url, {"actor": "mallory"})
    field = re.search(
        r'<div class="field has-error">\s*<label for="id_actor">.*?</div>', response.content.decode(), re.S
    )
    assert field and "Select a valid choice" in field.group(0)
    # An invalid filter never silently widens to "everything": it shows the unfiltered log with the error.


def test_audit_log_paginates(seeded, users, client_for):
    pages, unified = seeded["pages"], seeded["unified"]
    for bp in range(1, 56):
        services.allocation_change(
            surface=pages,
            actor=users["operator"],
            reason=f"step {bp}",
            treatment_stack=unified,
            treatment_bp=bp,
        )
    viewer = client_for(users["viewer"])
    first = text_of(viewer.get(reverse("web-audit"), {"verb": "allocation"}))
    assert (
        "55 events match" in first
        and "Page 1 of 2" in first
        and "step 55" in first
        and "step 5 " not in first
    )
    second = text_of(viewer.get(reverse("web-audit"), {"verb": "allocation", "page": 2}))
    assert "step 1 " in second and "step 55" not in second


def test_plotly_js_is_served_from_the_wheel_with_caching(client, db):
    from importlib.metadata import version

    url = reverse("web-plotly-js", args=[version("plotly")])
    response = client.get(url, HTTP_ACCEPT_ENCODING="gzip")
    assert response.status_code == 200 and response["Content-Encoding"] == "gzip"
    assert "immutable" in response["Cache-Control"]
    import gzip

    body = gzip.decompress(response.content)
    assert body.startswith(b"/**") and b"plotly.js v" in body[:300]
    assert client.get(url, HTTP_IF_NONE_MATCH=response["ETag"]).status_code == 304
    assert client.get(reverse("web-plotly-js", args=["0.0.1"])).status_code == 404


def test_htmx_script_comes_from_the_django_htmx_wheel(seeded, users, client_for):
    html = client_for(users["viewer"]).get("/").content.decode()
    src = re.search(r'<script src="(/static/django_htmx/htmx-2\.min\.js)" defer>', html).group(1)
    # The file exists in the installed package (served by the static finders).
    from django.contrib.staticfiles import finders

    assert finders.find(src.removeprefix("/static/"))


def test_login_page_keeps_field_ids_and_rate_limit_message(db):
    client = Client()
    html = client.get("/accounts/login/").content.decode()
    assert 'id="id_username"' in html and 'id="id_password"' in html
    for _ in range(11):
        response = client.post("/accounts/login/", {"username": "x", "password": "y"})
    assert response.status_code == 429 and "Too many login attempts" in response.content.decode()


def test_stack_registry_shows_latency_measured_in_serving(seeded, users, client_for):
    from django.utils import timezone

    from controlplane.serving.models import LatencySample

    now = timezone.now()
    samples = [float(ms) for ms in range(1, 101)]  # p50 = 50.5, p99 = 99.01 (numpy linear)
    LatencySample.objects.bulk_create(
        LatencySample(
            surface=seeded["groups"], unit_id=f"u{i}", arm="treatment", stack="unified-mtl@1", ts=now, ms=ms
        )
        for i, ms in enumerate(samples)
    )
    html = client_for(users["viewer"]).get(reverse("web-stacks")).content.decode()
    row = re.search(
        r"<tr><td>groups</td><td>unified-mtl@1</td><td>treatment</td>(.*?)</tr>", html, re.S
    ).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    assert cells[0] == "100" and cells[3] == "50.5"
    assert cells[4].startswith("99.0") and "over SLO" in cells[4]  # SLO of unified-mtl@1 is 80 ms
