"""The edge guard (controlplane/edge.py) and the ingestion body limit: the inputs of issue 17, each
answered with a 4xx that names the parameter, never a server error."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.db import DataError
from django.utils import timezone

from controlplane.core.errors import api_exception_handler
from controlplane.edge import MAX_JSON_DEPTH
from controlplane.serving.models import Exposure
from experiments.ingestion import metric_definitions_ensure
from experiments.models import MetricObservation

YESTERDAY = (timezone.now() - dt.timedelta(days=1)).date().isoformat()


@pytest.fixture
def known_units(seeded):
    metric_definitions_ensure()
    Exposure.objects.bulk_create(
        Exposure(
            surface=seeded["pages"],
            salt="s1",
            unit_id=f"u{i}",
            arm="control",
            population="content_first",
            stack="content-first@1",
            allocation_version=1,
            first_exposed_at=timezone.now(),
        )
        for i in range(10)
    )
    return seeded["pages"]


@pytest.mark.parametrize("url", ["/api/v1/audit/?verb=a%00b", "/api/v1/surfaces/?status=%00"])
def test_a_nul_byte_in_a_query_parameter_is_a_400_naming_it(operator_client, seeded, url):
    response = operator_client.get(url)
    assert response.status_code == 400
    body = response.json()
    name = url.split("?")[1].split("=")[0]
    assert name in body["errors"] and "NUL" in body["errors"][name][0]


def test_a_nul_byte_on_a_page_is_a_400(client, users, seeded):
    client.force_login(users["viewer"])
    response = client.get("/audit/?verb=%00")
    assert response.status_code == 400 and b"verb" in response.content


def test_a_nul_byte_in_a_form_field_is_a_400(client, db):
    response = client.post(
        "/accounts/login/", "username=a%00b&password=x", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 400 and b"username" in response.content


@pytest.mark.parametrize(
    "raw, field",
    [
        ('{"unit_id": "u\\u0000", "context": {}}', "unit_id"),
        ('{"unit_id": "u1", "context": {"k": "\\ud800"}}', "context.k"),
        ('{"unit_id": "u1", "context": {"\\u0000": 1}}', "context.\x00"),
    ],
)
def test_nul_and_lone_surrogates_in_json_are_a_400_naming_the_field(operator_client, seeded, raw, field):
    response = operator_client.post("/api/v1/surfaces/pages/rank", raw, content_type="application/json")
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"], response.json()


def test_a_paired_surrogate_escape_is_fine(operator_client, seeded):
    raw = '{"unit_id": "u1", "context": {"emoji": "\\ud83d\\ude00"}}'
    response = operator_client.post("/api/v1/surfaces/pages/rank", raw, content_type="application/json")
    assert response.status_code == 200, response.content


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 100_000])
def test_json_nested_too_deep_is_a_400(operator_client, seeded, depth):
    raw = '{"unit_id": "u1", "context": ' + '{"a":' * depth + "1" + "}" * depth + "}"
    response = operator_client.post("/api/v1/surfaces/pages/rank", raw, content_type="application/json")
    assert response.status_code == 400
    assert "nested deeper" in response.json()["detail"]


def test_huge_finite_metric_values_are_a_per_row_error(known_units, operator_client):
    rows = [
        {"unit_id": "u1", "day": YESTERDAY, "metric": "likes", "value": 3},
        {"unit_id": "u2", "day": YESTERDAY, "metric": "likes", "value": 1e300},
        {"unit_id": "u3", "day": YESTERDAY, "metric": "likes", "value": 10**30},
    ]
    response = operator_client.post(
        "/api/v1/ingest/metric-rows/",
        {"client_batch_id": "big", "surface": "pages", "rows": rows},
        format="json",
    )
    body = response.json()
    assert response.status_code == 201 and body["accepted"] == 1
    assert [(e["row"], e["field"]) for e in body["errors"]] == [(1, "value"), (2, "value")]
    assert "MAX_ABS_VALUE" in body["errors"][0]["message"]
    assert MetricObservation.objects.count() == 1


def test_a_database_data_error_is_a_400_not_a_500():
    response = api_exception_handler(DataError("numeric field overflow"), {})
    assert response is not None and response.status_code == 400
    assert response.data["code"] == "invalid_value"


def _events_body(n: int) -> str:
    ts = (timezone.now() - dt.timedelta(hours=1)).isoformat()
    events = [{"unit_id": f"u{i % 10}", "ts": ts, "type": "impression"} for i in range(n)]
    return json.dumps({"client_batch_id": f"big-{n}", "surface": "pages", "events": events})


def test_an_ingestion_body_over_django_default_cap_is_accepted(known_units, operator_client):
    body = _events_body(40_000)  # ~3.4 MB, over Django's 2.5 MiB DATA_UPLOAD_MAX_MEMORY_SIZE
    assert len(body) > 2.5 * 1024 * 1024
    response = operator_client.post("/api/v1/ingest/events/", body, content_type="application/json")
    assert response.status_code == 201, response.content[:300]
    assert response.json()["accepted"] == 40_000


def test_an_ingestion_body_over_the_limit_is_a_json_413_naming_it(known_units, operator_client, settings):
    settings.INGEST_MAX_BODY_BYTES = 10_000
    response = operator_client.post(
        "/api/v1/ingest/events/", _events_body(500), content_type="application/json"
    )
    assert response.status_code == 413
    body = response.json()
    assert body["limit_bytes"] == 10_000 and "10000 bytes" in body["detail"]
    assert "INGEST_MAX_BODY_BYTES" in body["detail"]


def test_the_ingestion_limit_covers_the_promised_batch_size(settings):
    from experiments.ingestion import MAX_ROWS_PER_BATCH

    # A metric row as a warehouse sends it: ~80 bytes; the limit must hold the documented maximum.
    row = json.dumps(
        {"unit_id": "user-0012345678", "day": "2026-12-01", "metric": "time_spent", "value": 1234.5}
    )
    assert MAX_ROWS_PER_BATCH * (len(row) + 1) <= settings.INGEST_MAX_BODY_BYTES
