"""The experiments API: designs, analyses, results, decisions, readout downloads, warehouse path."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from typing import Any

import pytest

from tests.experiments.approx import assert_close
from tests.experiments.conftest import NOW, WINDOW_START
from tests.experiments.simworld import populate

pytestmark = [pytest.mark.django_db, pytest.mark.sqlite_path]
PRE_DAY = WINDOW_START - dt.timedelta(days=1)


def _design(ramped: dict[str, Any], **over: Any) -> dict[str, Any]:
    return {
        "surface": "groups",
        "key": "groups-unified-a",
        "hypothesis": "unified is launch-neutral",
        "treatment_stack": "unified-mtl@1",
        "salt": ramped["allocation"].salt,
        "window_start": WINDOW_START.isoformat(),
        "start": True,
        "metrics": [
            {"metric": "time_spent", "role": "primary", "margin": 0.02},
            {"metric": "likes", "role": "secondary", "margin": 0.02},
            {"metric": "hide_report_rate", "role": "guardrail", "margin": 0.03},
        ],
        **over,
    }


@pytest.fixture
def api(users: dict[str, Any], api_client_for: Any) -> dict[str, Any]:
    return {role: api_client_for(user) for role, user in users.items()}


def test_create_refuses_bad_designs_with_field_errors(ramped: dict[str, Any], api: dict[str, Any]) -> None:
    from experiments.services import metric_definitions_ensure_standard

    metric_definitions_ensure_standard()
    bad = _design(ramped)
    bad["metrics"] = [
        {"metric": "time_spent", "role": "primary", "margin": -1},
        {"metric": "scroll_depth", "role": "guardrail", "kind": "mean", "margin": 0.1},
        {"metric": "reply_rate", "role": "secondary", "kind": "ratio", "numerator": "comments"},
    ]
    response = api["operator"].post("/api/v1/experiments/", bad, format="json")
    assert response.status_code == 400, response.content
    errors = response.json()["errors"]
    assert "metrics[0].margin" in errors
    assert "metrics[1].direction" in errors
    assert "metrics[2].denominator" in errors
    assert api["viewer"].post("/api/v1/experiments/", _design(ramped), format="json").status_code == 403


def test_full_flow_over_the_api(ramped: dict[str, Any], api: dict[str, Any], users: dict[str, Any]) -> None:
    from experiments.services import metric_definitions_ensure_standard

    metric_definitions_ensure_standard()
    created = api["operator"].post("/api/v1/experiments/", _design(ramped), format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["status"] == "running" and body["locked_at"]
    assert [m["metric"] for m in body["design"]["metrics"]] == ["time_spent", "likes", "hide_report_rate"]

    # Locked: a change without a reason is refused, with one it is applied and audited.
    patch = api["operator"].patch("/api/v1/experiments/groups-unified-a/", {"hypothesis": "x"}, format="json")
    assert patch.status_code == 400 and "reason" in patch.json()["errors"]
    patch = api["operator"].patch(
        "/api/v1/experiments/groups-unified-a/", {"hypothesis": "sharper", "reason": "typo"}, format="json"
    )
    assert patch.status_code == 200 and patch.json()["design"]["hypothesis"] == "sharper"

    populate(
        surface=ramped["groups"],
        allocation=ramped["allocation"],
        n_units=1500,
        window_start=WINDOW_START,
        window_days=2,
        pre_day=PRE_DAY,
    )
    assert api["viewer"].get("/api/v1/experiments/groups-unified-a/results/").status_code == 404
    run = api["operator"].post("/api/v1/experiments/groups-unified-a/analyses/", {}, format="json")
    assert run.status_code == 201, run.content
    result = run.json()["result"]
    assert set(result) >= {"computed_at", "units", "srm", "health", "metrics", "decision"}
    assert set(result["decision"]) == {"verdict", "reasons", "blocking", "days_needed"}
    entry = result["metrics"][0]
    for key in (
        "metric",
        "name",
        "role",
        "kind",
        "direction",
        "population",
        "computable",
        "reason",
        "control_mean",
        "treatment_mean",
        "diff",
        "ci",
        "rel_lift",
        "rel_lift_ci",
        "p_value",
        "p_adjusted",
        "equivalence",
        "noninferiority",
        "sequential",
        "verdict",
    ):
        assert key in entry
    results = api["viewer"].get("/api/v1/experiments/groups-unified-a/results/").json()
    assert results["analysis_id"] == run.json()["id"]
    detail = api["viewer"].get(f"/api/v1/experiments/groups-unified-a/analyses/{run.json()['id']}/").json()
    assert (
        sum(r["n"] for r in detail["statistics"]) == result["units"]["control"] + result["units"]["treatment"]
    )

    # Downloads.
    html = api["viewer"].get("/api/v1/experiments/groups-unified-a/readout.html")
    assert html.status_code == 200 and html["Content-Disposition"].startswith("attachment")
    text = html.content.decode()
    assert not re.search(r"<script[^>]+src=[\"']https?:", text)
    assert "Recommendation:" in text and "Plotly.newPlot" in text
    rows = list(
        csv.DictReader(
            io.StringIO(
                api["viewer"].get("/api/v1/experiments/groups-unified-a/readout.csv").content.decode()
            )
        )
    )
    assert len(rows) == len(result["metrics"]) and {r["population"] for r in rows} == {
        "pooled",
        "content_first",
        "interest_first",
    }
    as_json = json.loads(api["viewer"].get("/api/v1/experiments/groups-unified-a/readout.json").content)
    assert as_json["result"]["decision"] == result["decision"]
    assert api["viewer"].get("/api/v1/experiments/groups-unified-a/readout.exe").status_code == 404

    # Decisions need the approver role; overriding the recommendation needs a note.
    assert (
        api["operator"].post("/api/v1/experiments/groups-unified-a/decisions/", {}, format="json").status_code
        == 403
    )
    other = "ship" if result["decision"]["verdict"] != "ship" else "hold"
    refused = api["approver"].post(
        "/api/v1/experiments/groups-unified-a/decisions/", {"verdict": other}, format="json"
    )
    assert refused.status_code == 400 and "note" in refused.json()["errors"]
    decided = api["approver"].post(
        "/api/v1/experiments/groups-unified-a/decisions/",
        {"verdict": other, "note": "PM call"},
        format="json",
    )
    assert decided.status_code == 201 and decided.json()["recommended"] == result["decision"]["verdict"]
    frozen = api["viewer"].get(
        f"/api/v1/experiments/groups-unified-a/decisions/{decided.json()['id']}/readout.html"
    )
    assert frozen.status_code == 200 and b"Recommendation:" in frozen.content

    from django.test import Client

    client = Client()
    client.force_login(users["viewer"])
    response = client.get("/experiments/groups-unified-a/readout/")
    assert response.status_code == 200 and b"Per-population breakdown" in response.content
    assert b"Download HTML" in response.content


def test_warehouse_path_gives_identical_results(ramped: dict[str, Any], api: dict[str, Any]) -> None:
    """Export the SQL, run it as a warehouse would, upload its rows: same numbers as in-database."""
    from django.db import connection

    from experiments.services import experiment_create_for_surface

    experiment = experiment_create_for_surface(
        surface=ramped["groups"],
        treatment_stack=ramped["unified"],
        salt=ramped["allocation"].salt,
        actor="system:test",
        now=NOW,
        sequential=False,
    )
    populate(
        surface=ramped["groups"],
        allocation=ramped["allocation"],
        n_units=1500,
        window_start=WINDOW_START,
        window_days=3,
        pre_day=PRE_DAY,
        arrival_days=3,
    )
    url = f"/api/v1/experiments/{experiment.key}/"
    as_of = (WINDOW_START + dt.timedelta(days=2)).isoformat()
    exported = api["viewer"].get(url + f"warehouse/sql/?as_of={as_of}").json()
    assert exported["columns"][:5] == ["arm", "population", "day", "allocation_version", "n"]
    plain = api["viewer"].get(url + f"warehouse/sql/?as_of={as_of}&output=text")
    assert plain["Content-Type"].startswith("text/plain") and plain.content.decode().startswith(
        "WITH units AS"
    )
    with connection.cursor() as cursor:  # the "warehouse"
        cursor.execute(exported["sql"])
        names = [c[0] for c in cursor.description]
        rows = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    payload_rows = [{k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in r.items()} for r in rows]
    # Per-day rows: upload them in two batches (sufficient statistics add).
    days = sorted({r["day"] for r in payload_rows})
    assert len(days) == 3
    first = [r for r in payload_rows if r["day"] == days[0]]
    rest = [r for r in payload_rows if r["day"] != days[0]]
    up1 = api["operator"].post(
        url + "warehouse/statistics/",
        {"client_batch_id": "b1", "as_of": as_of, "rows": first, "analyze": False},
        format="json",
    )
    assert up1.status_code == 201, up1.content
    up2 = api["operator"].post(
        url + "warehouse/statistics/", {"client_batch_id": "b2", "as_of": as_of, "rows": rest}, format="json"
    )
    assert up2.status_code == 201, up2.content
    warehouse = up2.json()["analysis"]["result"]
    from experiments.services import experiment_analyze

    database = experiment_analyze(
        experiment=experiment,
        now=dt.datetime.combine(WINDOW_START + dt.timedelta(days=2), dt.time(23), tzinfo=dt.UTC),
    ).result
    strip = ("computed_at", "source")
    # Identical numbers (up to the floating-point summation order of the two scans).
    assert_close(
        {k: v for k, v in warehouse.items() if k not in strip},
        {k: v for k, v in database.items() if k not in strip},
    )
    assert warehouse["source"] == "warehouse" and database["source"] == "database"
    # A bad row rejects the whole upload, naming the row and column; re-sending a batch id is a no-op.
    broken = [dict(rest[0], time_spent__sum="NaN"), *rest[1:]]
    bad = api["operator"].post(
        url + "warehouse/statistics/",
        {"client_batch_id": "b3", "as_of": as_of, "rows": broken},
        format="json",
    )
    assert bad.status_code == 400 and "rows[0].time_spent__sum" in bad.json()["errors"]
    again = api["operator"].post(
        url + "warehouse/statistics/",
        {"client_batch_id": "b1", "as_of": as_of, "rows": first, "analyze": False},
        format="json",
    )
    assert again.json()["upload"] == up1.json()["upload"]


def test_analysis_task_and_openapi(ramped: dict[str, Any], experiment: Any, api: dict[str, Any]) -> None:
    from experiments.models import AnalysisRun
    from experiments.tasks import experiment_analyze_task, experiments_analyze_running

    run_id = experiment_analyze_task.apply(args=[experiment.pk]).get()
    assert AnalysisRun.objects.get(pk=run_id).trigger == "scheduled"
    assert experiment_analyze_task.apply(args=[999999]).get() is None
    schema = api["viewer"].get("/api/schema/?format=json")
    assert schema.status_code == 200
    ops = {
        op.get("operationId")
        for path in schema.json()["paths"].values()
        for op in path.values()
        if isinstance(op, dict)
    }
    assert {
        "experiments_create",
        "experiment_analyze",
        "experiment_results",
        "experiment_readout_download",
        "experiment_warehouse_sql",
        "experiment_warehouse_upload",
        "experiment_decide",
    } <= ops
    from unittest import mock

    with mock.patch.object(experiment_analyze_task, "delay") as delay:
        assert experiments_analyze_running() == 1
    delay.assert_called_once_with(experiment.pk)
