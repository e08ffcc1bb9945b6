"""/metrics: access rules, and every family read back with prometheus-client's own text parser."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from tests.runbooks.conftest import analysis_result, fast_steps

pytestmark = pytest.mark.django_db


def scrape(client: Any) -> dict[str, Any]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return {family.name: family for family in text_string_to_metric_families(response.content.decode())}


def value(families: dict[str, Any], family: str, sample: str | None = None, **labels: str) -> float:
    """The sum of the samples of ``family`` (named ``sample``, default the family) matching ``labels``."""
    if family not in families:
        return 0.0
    name = sample or families[family].name
    return sum(
        s.value
        for s in families[family].samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_need_an_operator_or_the_scrape_token(users, api_client_for, client, settings):
    settings.METRICS_SCRAPE_TOKEN = "scrape-token-for-tests"
    anonymous = client.get("/metrics")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"].startswith("Bearer")
    assert api_client_for(users["viewer"]).get("/metrics").status_code == 403
    assert api_client_for(users["operator"]).get("/metrics").status_code == 200
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    scraped = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-for-tests")
    assert scraped.status_code == 200
    client.force_login(users["operator"])
    assert client.get("/metrics").status_code == 200
    settings.METRICS_SCRAPE_TOKEN = ""
    assert api_client_for(None).get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401


def test_runbook_request_tick_and_gate_families(
    seeded, users, api_client_for, scripted_analysis, scripted_parity, django_capture_on_commit_callbacks
):
    from migrations_runbooks import services

    scripted_analysis.results["pages"] = analysis_result()
    op = api_client_for(users["operator"])
    before = scrape(op)
    with django_capture_on_commit_callbacks(execute=True):
        created = op.post(
            "/api/v1/runbooks/",
            {"surface": "pages", "target_stack": "unified-mtl@1", "steps": fast_steps()},
            format="json",
        )
        assert created.status_code == 201, created.content
        started = op.post(f"/api/v1/runbooks/{created.json()['id']}/start/", {"reason": "go"}, format="json")
        assert started.status_code == 200, started.content
    with django_capture_on_commit_callbacks(execute=True):
        services.ramps_advance_due(now=timezone.now() + dt.timedelta(hours=1))
    after = scrape(op)

    assert value(after, "controlplane_runbooks", state="running") == 1
    runbook_id = str(created.json()["id"])
    age_family = "controlplane_runbook_analysis_age_seconds"
    # At the shadow step the runbook has no experiment yet, so no analysis is expected of it.
    assert not [s for s in after[age_family].samples if s.labels["runbook"] == runbook_id]
    from migrations_runbooks.models import Runbook

    Runbook.objects.filter(pk=runbook_id).update(experiment_key="never-analysed")
    (age,) = [s for s in scrape(op)[age_family].samples if s.labels["runbook"] == runbook_id]
    # An experiment without an analysis row: +Inf, so the "no fresh analysis" alert fires.
    assert age.labels == {"runbook": runbook_id, "surface": "pages", "experiment": "never-analysed"}
    assert age.value == float("inf")
    assert value(after, "controlplane_runbooks", state="draft") == 0
    assert {s.labels["state"] for s in after["controlplane_runbooks"].samples} >= {"promoted", "rolled_back"}

    def delta(family: str, sample: str | None = None, **labels: str) -> float:
        return value(after, family, sample, **labels) - value(before, family, sample, **labels)

    hist = "controlplane_http_request_duration_seconds"
    assert delta(hist, hist + "_count", view="runbook-start", method="POST", status="200") == 1
    assert delta(hist, hist + "_count", view="runbook-list", method="POST", status="201") == 1
    assert delta("controlplane_ramp_ticks", "controlplane_ramp_ticks_total") == 1
    tick = "controlplane_ramp_tick_duration_seconds"
    assert delta(tick, tick + "_count") == 1 and delta(tick, tick + "_sum") > 0
    evaluations = "controlplane_runbook_evaluations"
    assert delta(evaluations, evaluations + "_total") == 1  # the tick's look at the shadow step
    gates = "controlplane_gate_outcomes"
    assert delta(gates, gates + "_total") >= 1
    assert all({"gate", "outcome"} <= set(s.labels) for s in after[gates].samples)


def test_rollback_is_counted_once_committed(
    seeded, users, api_client_for, scripted_analysis, scripted_parity, django_capture_on_commit_callbacks
):
    op = api_client_for(users["operator"])
    before = scrape(op)
    with django_capture_on_commit_callbacks(execute=True):
        rb = op.post(
            "/api/v1/runbooks/",
            {"surface": "pages", "target_stack": "unified-mtl@1", "steps": fast_steps()},
            format="json",
        ).json()
        op.post(f"/api/v1/runbooks/{rb['id']}/start/", {"reason": "go"}, format="json")
        rolled = op.post(f"/api/v1/runbooks/{rb['id']}/rollback/", {"reason": "pager"}, format="json")
        assert rolled.status_code == 200, rolled.content
    after = scrape(op)
    name = "controlplane_runbook_evaluations"
    rollbacks = value(after, name, name + "_total", outcome="rollback") - value(
        before, name, name + "_total", outcome="rollback"
    )
    assert rollbacks == 1
    assert value(after, "controlplane_runbooks", state="rolled_back") == 1


def test_analysis_age_and_duration(seeded, users, api_client_for, django_capture_on_commit_callbacks):
    from controlplane.core.services import allocation_change
    from experiments.services import experiment_analyze, experiment_create_for_surface, experiment_start

    now = timezone.now()
    allocation = allocation_change(
        surface=seeded["groups"],
        actor="system:test",
        reason="experiment",
        treatment_stack=seeded["unified"],
        treatment_bp=5000,
        salt="groups-ops-1",
        now=now,
    )
    experiment = experiment_create_for_surface(
        surface=seeded["groups"], treatment_stack=seeded["unified"], salt=allocation.salt, actor="t", now=now
    )
    experiment = experiment_start(experiment=experiment, actor="system:test", now=now)
    op = api_client_for(users["operator"])
    never = scrape(op)
    age = "controlplane_experiment_analysis_age_seconds"
    assert value(never, age, experiment=experiment.key, surface="groups") == float("inf")

    before = scrape(op)
    analysed_at = timezone.now() - dt.timedelta(minutes=90)
    with django_capture_on_commit_callbacks(execute=True):
        experiment_analyze(experiment=experiment, now=analysed_at)
    after = scrape(op)
    seconds = value(after, age, experiment=experiment.key, surface="groups")
    assert 90 * 60 <= seconds < 90 * 60 + 60  # "no fresh analysis for an hour" fires on this
    duration = "controlplane_analysis_duration_seconds"
    assert (
        value(after, duration, duration + "_count", source="database")
        - value(before, duration, duration + "_count", source="database")
        == 1
    )


def test_shadow_parity_gauge_is_the_newest_day(seeded, users, api_client_for):
    from controlplane.serving.models import ShadowParityDaily

    today = timezone.now().date()
    common = {"surface": seeded["pages"], "shadow_stack": "unified-mtl@1", "computed_at": timezone.now()}
    ShadowParityDaily.objects.create(
        **common, day=today - dt.timedelta(days=1), n=100, compared=100, errors=0, timeouts=0, rbo=0.5
    )
    ShadowParityDaily.objects.create(
        **common, day=today, n=200, compared=190, errors=6, timeouts=4, rbo=0.71, overlap_10=0.6
    )
    families = scrape(api_client_for(users["operator"]))
    parity = "controlplane_shadow_parity"
    labels = {"surface": "pages", "stack": "unified-mtl@1"}
    assert value(families, parity, measure="rbo", **labels) == pytest.approx(0.71)
    assert value(families, parity, measure="overlap_10", **labels) == pytest.approx(0.6)
    assert value(families, parity, measure="error_rate", **labels) == pytest.approx(10 / 200)
    assert value(families, "controlplane_metrics_collect_errors") == 0


def test_ingestion_rows_and_rejects_by_reason(
    seeded, users, api_client_for, django_capture_on_commit_callbacks
):
    from experiments.ingestion import metric_definitions_ensure

    metric_definitions_ensure()
    op = api_client_for(users["operator"])
    day = timezone.now().date().isoformat()
    before = scrape(op)
    with django_capture_on_commit_callbacks(execute=True):
        response = op.post(
            "/api/v1/ingest/metric-rows/",
            {
                "client_batch_id": "ops-metrics-1",
                "surface": "pages",
                "rows": [
                    {"unit_id": "stranger", "day": day, "metric": "likes", "value": 1},
                    {"unit_id": "stranger", "day": day, "metric": "teleports", "value": 1},
                ],
            },
            format="json",
        )
    assert response.status_code == 422, response.content
    after = scrape(op)
    rows, rejects = "controlplane_ingest_rows", "controlplane_ingest_rejects"

    def delta(family: str, **labels: str) -> float:
        return value(after, family, family + "_total", **labels) - value(
            before, family, family + "_total", **labels
        )

    assert delta(rows, kind="metric_rows", result="rejected") == 2
    assert delta(rows, kind="metric_rows", result="accepted") == 0
    assert delta(rejects, kind="metric_rows", reason="unit_id") == 2
    assert delta(rejects, kind="metric_rows", reason="metric") == 1


def test_celery_task_families_and_heartbeat(users, api_client_for):
    from controlplane.core.tasks import heartbeat

    op = api_client_for(users["operator"])
    before = scrape(op)
    heartbeat.apply()  # runs in this process, through Celery's task signals
    after = scrape(op)
    name = "controlplane.core.tasks.heartbeat"
    events = "celery_task_events"
    for state in ("started", "succeeded"):
        assert (
            value(after, events, events + "_total", name=name, state=state)
            - value(before, events, events + "_total", name=name, state=state)
            == 1
        )
    runtime = "celery_task_runtime_seconds"
    assert (
        value(after, runtime, runtime + "_count", name=name)
        - value(before, runtime, runtime + "_count", name=name)
        == 1
    )
    beat = value(after, "controlplane_celery_heartbeat_timestamp_seconds")
    assert abs(beat - time.time()) < 60
