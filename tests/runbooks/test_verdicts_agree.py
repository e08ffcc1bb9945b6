"""One verdict per metric: the readout, the gate table, the runbook's *Why* and the API agree.

Each scenario runs a runbook on the experiments app's real analysis (evidence synthesized per
unit-day, tests/runbooks/evidence.py), then reads the verdicts back the way a PM and a client do:
the readout page and its CSV export, the runbook page's gate table and its *Why*, and the results
API. The engine decided every verdict once; every reader must show that one.
"""

from __future__ import annotations

import csv
import html as html_lib
import io
import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from experiments.models import AnalysisRun
from experiments.outcome import POOLED, analysis_outcome
from migrations_runbooks import services
from migrations_runbooks.models import Runbook
from tests.runbooks.conftest import DAY, HOUR, T0
from tests.runbooks.evidence import synthesize_day

pytestmark = pytest.mark.django_db

#: The verdict statement every gate reason and *Why* uses (MetricOutcome.statement).
STATEMENT = re.compile(r"([\w-]+)/([\w-]+): verdict (\w+)")
ROW = re.compile(r'data-metric="([^"]+)" data-population="([^"]+)" data-verdict="([^"]+)"')


def _steps(min_units: int) -> list[dict[str, Any]]:
    return [
        {
            "name": "shadow",
            "treatment_bp": 0,
            "shadow_bp": 1000,
            "min_duration_s": 86400,
            "gates": {"parity": False, "latency": False},
        },
        {"name": "50%", "treatment_bp": 5000, "min_duration_s": 86400, "min_units": min_units},
        {
            "name": "100%",
            "treatment_bp": 10000,
            "min_duration_s": 86400,
            "min_units": 100,
            "needs_approval": True,
        },
    ]


SCENARIOS = {
    # surface, units on the comparative day, treatment effects, the 50% step's min units, expected status
    "neutral": ("pages", 3000, {}, 500, "waiting_approval"),
    "regression": ("groups", 3000, {"hides": 1.6}, 500, "rolled_back"),
    "underpowered": ("pages", 160, {}, 50, "held"),
}


def _run(seeded: dict[str, Any], users: dict[str, Any], scenario: str) -> Runbook:
    surface_key, units, effects, min_units, status = SCENARIOS[scenario]
    surface = seeded[surface_key]
    rb = services.runbook_create(
        surface=surface,
        target_stack=seeded["unified"],
        actor=users["operator"],
        now=T0,
        steps=_steps(min_units),
    )
    services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=T0)
    services.ramps_advance_due(now=T0 + DAY)
    synthesize_day(surface=surface, day=(T0 + DAY).date(), units=units, treatment_effects=effects)
    services.ramps_advance_due(now=T0 + 2 * DAY + HOUR)
    rb.refresh_from_db()
    assert rb.status == status, rb.status_reason
    return rb


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_readout_gate_table_why_and_api_show_the_same_verdicts(seeded, users, scenario):
    rb = _run(seeded, users, scenario)
    key = rb.experiment_key
    run = AnalysisRun.objects.filter(experiment__key=key).order_by("-created_at", "-id").first()
    assert run is not None and run.result["schema_version"] == 2
    truth = analysis_outcome(run.result)
    assert truth is not None
    verdicts = truth.verdicts()
    client = Client()
    client.force_login(users["viewer"])

    # The readout page (the same document as the HTML export) and the CSV export.
    page = client.get(reverse("experiment-readout", args=[key])).content.decode()
    shown = {(m, p): v for m, p, v in ROW.findall(page)}
    assert shown == verdicts
    csv_rows = csv.DictReader(
        io.StringIO(client.get(f"/api/v1/experiments/{key}/readout.csv").content.decode())
    )
    assert {(r["metric"], r["population"]): r["verdict"] for r in csv_rows} == verdicts

    # The API.
    results = client.get(f"/api/v1/experiments/{key}/results/").json()
    assert results["analysis_id"] == run.pk
    assert {(m["metric"], m["population"]): m["verdict"] for m in results["metrics"]} == verdicts

    # The runbook page: its gate table and its Why.
    detail = html_lib.unescape(client.get(reverse("web-runbook-detail", args=[rb.pk])).content.decode())
    table = re.search(r'<table class="gates">(.*?)</table>', detail, re.S)
    assert table is not None
    gated = {(m, p): v for m, p, v in STATEMENT.findall(table.group(1))}
    judged = {(m.metric, m.population) for m in truth.metrics if m.role in ("primary", "guardrail")}
    assert judged <= set(gated), "every primary and guardrail has a gate naming its verdict"
    assert {k: verdicts[k] for k in gated} == gated
    why = re.search(r'data-testid="status-reason">([^<]+)<', detail)
    said = {(m, p): v for m, p, v in STATEMENT.findall(why.group(1) if why else "")}
    assert {k: verdicts[k] for k in said} == said
    if scenario == "regression":
        assert said.get(("hide_report_rate", POOLED)) == verdicts[("hide_report_rate", POOLED)] == "inferior"
    if scenario == "underpowered":
        assert truth.recommendation.verdict in ("extend", "hold")
        # Too few units: nothing is shown either way; the Why names what is still open.
        assert said and set(said.values()) <= {"inconclusive", "not_computable"}, why
    if scenario == "neutral":
        assert truth.recommendation.verdict == "ship"
