"""Ingestion: per-row errors, good rows kept, idempotent batch ids, event roll-ups, COPY and SQLite paths."""

from __future__ import annotations

import datetime as dt
import gc
import json

import pytest
from django.utils import timezone

from controlplane.serving.models import Exposure, IngestBatch
from experiments.ingestion import metric_definitions_ensure
from experiments.models import MetricDefinition, MetricObservation

NOW = timezone.now()
TODAY = NOW.date()


@pytest.fixture
def known_units(seeded):
    """u0..u9 exposed on pages (known to ingestion); standard metric definitions present."""
    metric_definitions_ensure()
    pages = seeded["pages"]
    Exposure.objects.bulk_create(
        Exposure(
            surface=pages,
            salt="s1",
            unit_id=f"u{i}",
            arm="control",
            population="content_first",
            stack="content-first@1",
            allocation_version=1,
            first_exposed_at=NOW,
        )
        for i in range(10)
    )
    return pages


def _day(offset: int) -> str:
    return (TODAY + dt.timedelta(days=offset)).isoformat()


def test_migrate_creates_the_standard_metric_definitions(db):
    """Issue 17: ``migrate`` accepts metric rows with no demo step. The data migration runs on an
    emptied table (not read off the test database: a transactional test's flush empties it, and the
    result would depend on test order)."""
    import importlib

    from django.apps import apps

    migration = importlib.import_module("experiments.migrations.0008_standard_metric_definitions")
    MetricDefinition.objects.all().delete()
    migration.create_standard_definitions(apps, None)
    keys = {
        "impressions",
        "time_spent",
        "likes",
        "hides",
        "engagement_rate",
        "hide_report_rate",
        "latency_p99",
    }
    assert set(MetricDefinition.objects.filter(key__in=keys).values_list("key", flat=True)) == keys
    assert metric_definitions_ensure() == 0  # the same set the demo step seeds: nothing left to add
    migration.create_standard_definitions(apps, None)  # idempotent


def test_metric_definitions_are_seeded_idempotently(db):
    MetricDefinition.objects.all().delete()  # as before the data migration
    created = metric_definitions_ensure()
    assert created >= 20 and metric_definitions_ensure() == 0
    ratio = MetricDefinition.objects.get(key="hide_report_rate")
    assert (ratio.kind, ratio.numerator, ratio.denominator, ratio.direction) == (
        "ratio", "hides+reports", "impressions", "lower",
    )  # fmt: skip
    # The serving extras exist beside the experiments app's standard set.
    assert (
        MetricDefinition.objects.filter(key__in=["engagements", "negative_feedback", "latency_p50"]).count()
        == 3
    )
    assert MetricDefinition.objects.get(key="latency_p99").quantile == 0.99
    for key in ("impressions", "sessions", "time_spent", "meaningful_interactions", "newcomer_impressions"):
        assert MetricDefinition.objects.get(key=key).ingestible


@pytest.mark.sqlite_path
def test_mixed_batch_keeps_every_good_row_names_every_bad_one_and_counts_once(known_units, operator_client):
    rows = [
        {"unit_id": "u1", "day": _day(-1), "metric": "likes", "value": 3},  # 0 good
        {"unit_id": "ghost", "day": _day(-1), "metric": "likes", "value": 1},  # 1 unknown unit
        {"unit_id": "u2", "day": _day(-1), "metric": "karma", "value": 1},  # 2 unknown metric
        {"unit_id": "u3", "day": _day(-1), "metric": "hides", "value": -2},  # 3 negative count
        {"unit_id": "u4", "day": "1999-01-01", "metric": "likes", "value": 1},  # 4 out of range
        {"unit_id": "u5", "day": _day(-2), "metric": "time_spent", "value": 41.5},  # 5 good
        {"unit_id": "u6", "day": _day(30), "metric": "likes", "value": 1},  # 6 future
        {"unit_id": "u7", "day": "yesterday", "metric": "likes", "value": "many"},  # 7 two bad fields
        {"unit_id": "u8", "day": _day(0), "metric": "latency_p99", "value": 3},  # 8 not ingestible
        {"unit_id": "u9", "day": _day(0), "metric": "sessions", "value": 2},  # 9 good
        "not an object",  # 10
    ]
    payload = {"client_batch_id": "wh-2026-11-22", "surface": "pages", "rows": rows}
    response = operator_client.post("/api/v1/ingest/metric-rows/", payload, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["status"], body["received"], body["accepted"], body["rejected"]) == ("partial", 11, 3, 8)
    named = {(e["row"], e["field"]) for e in body["errors"]}
    assert named >= {
        (1, "unit_id"), (2, "metric"), (3, "value"), (4, "day"), (6, "day"), (7, "day"), (7, "value"),
        (8, "metric"), (10, "unit_id"),
    }  # fmt: skip
    assert {e["row"] for e in body["errors"]} == {1, 2, 3, 4, 6, 7, 8, 10}
    messages = {(e["row"], e["field"]): e["message"] for e in body["errors"]}
    assert "unknown unit" in messages[(1, "unit_id")] and "unknown metric" in messages[(2, "metric")]
    assert "negative count" in messages[(3, "value")] and "out of range" in messages[(4, "day")]
    stored = sorted(MetricObservation.objects.values_list("unit_id", "metric", "value"))
    assert stored == [("u1", "likes", 3.0), ("u5", "time_spent", 41.5), ("u9", "sessions", 2.0)]

    again = operator_client.post("/api/v1/ingest/metric-rows/", payload, format="json")
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert again.json()["accepted"] == 3 and MetricObservation.objects.count() == 3
    assert IngestBatch.objects.filter(client_batch_id="wh-2026-11-22").count() == 1

    conflict = operator_client.post(
        "/api/v1/ingest/metric-rows/", {**payload, "rows": rows[:2]}, format="json"
    )
    assert conflict.status_code == 409 and conflict.json()["code"] == "conflict"


@pytest.mark.sqlite_path
def test_a_batch_with_no_good_row_is_recorded_as_rejected(known_units, operator_client):
    payload = {
        "client_batch_id": "bad-1",
        "surface": "pages",
        "rows": [{"unit_id": "nobody", "day": _day(-1), "metric": "likes", "value": 1}],
    }
    response = operator_client.post("/api/v1/ingest/metric-rows/", payload, format="json")
    assert response.status_code == 422 and response.json()["status"] == "rejected"
    assert IngestBatch.objects.get(client_batch_id="bad-1").rejected == 1
    assert MetricObservation.objects.count() == 0


@pytest.mark.sqlite_path
def test_events_roll_up_into_unit_day_metric_rows(known_units, operator_client):
    ts = (NOW - dt.timedelta(hours=2)).isoformat()
    events = [
        {"unit_id": "u1", "ts": ts, "type": "like"},
        {"unit_id": "u1", "ts": ts, "type": "like"},
        {"unit_id": "u1", "ts": ts, "type": "like", "value": 2},
        {"unit_id": "u1", "ts": ts, "type": "comment"},
        {"unit_id": "u1", "ts": ts, "type": "dwell", "value": 12.5},
        {"unit_id": "u1", "ts": ts, "type": "hide"},
        {"unit_id": "u2", "ts": ts, "type": "share"},
        {"unit_id": "u2", "ts": ts, "type": "teleport"},  # 7 unknown type
        {"unit_id": "u2", "ts": "2001-01-01T00:00:00Z", "type": "like"},  # 8 out of range
        {"unit_id": "u2", "ts": ts, "type": "like", "value": -1},  # 9 negative count
        {"unit_id": "stranger", "ts": ts, "type": "like"},  # 10 unknown unit
        {"unit_id": "u2", "ts": "noon", "type": "like"},  # 11 unparseable
    ]
    response = operator_client.post(
        "/api/v1/ingest/events/",
        {"client_batch_id": "ev-1", "surface": "pages", "events": events},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (7, 5)
    assert {(e["row"], e["field"]) for e in body["errors"]} == {
        (7, "type"), (8, "ts"), (9, "value"), (10, "unit_id"), (11, "ts"),
    }  # fmt: skip
    day = (NOW - dt.timedelta(hours=2)).date()
    got = {
        (u, m): v
        for u, m, v in MetricObservation.objects.filter(day=day).values_list("unit_id", "metric", "value")
    }
    assert got == {
        ("u1", "likes"): 4.0,
        ("u1", "comments"): 1.0,
        ("u1", "meaningful_interactions"): 1.0,
        ("u1", "engagements"): 5.0,
        ("u1", "time_spent"): 12.5,
        ("u1", "hides"): 1.0,
        ("u1", "negative_feedback"): 1.0,
        ("u2", "shares"): 1.0,
        ("u2", "meaningful_interactions"): 1.0,
        ("u2", "engagements"): 1.0,
    }
    assert set(MetricObservation.objects.values_list("batch__client_batch_id", flat=True)) == {"ev-1"}
    replay = operator_client.post(
        "/api/v1/ingest/events/",
        {"client_batch_id": "ev-1", "surface": "pages", "events": events},
        format="json",
    )
    assert replay.status_code == 200 and MetricObservation.objects.count() == 10


@pytest.mark.sqlite_path
def test_exposure_and_latency_batches(known_units, operator_client):
    from controlplane.core.selectors import allocation_current
    from controlplane.serving.models import LatencySample
    from controlplane.serving.selectors import latency_samples_by_arm

    salt = allocation_current(surface=known_units).salt
    at = (NOW - dt.timedelta(minutes=5)).isoformat()
    exposures = [
        {"unit_id": "fleet-1", "salt": salt, "arm": "treatment", "population": "content_first",
         "stack": "unified-mtl@1", "allocation_version": 1, "first_exposed_at": at},
        {"unit_id": "fleet-2", "salt": "made-up", "arm": "control", "population": "content_first",
         "stack": "content-first@1", "allocation_version": 1, "first_exposed_at": at},
        {"unit_id": "fleet-3", "salt": salt, "arm": "sideways", "population": "content_first",
         "stack": "content-first@1", "allocation_version": 1, "first_exposed_at": at},
    ]  # fmt: skip
    body = operator_client.post(
        "/api/v1/ingest/exposures/",
        {"client_batch_id": "ex-1", "surface": "pages", "rows": exposures},
        format="json",
    ).json()
    assert (body["accepted"], body["rows_written"]) == (1, 1)
    assert {(e["row"], e["field"]) for e in body["errors"]} == {(1, "salt"), (2, "arm")}
    samples = [
        {
            "unit_id": "fleet-1",
            "stack": "unified-mtl@1",
            "arm": "treatment",
            "ts": at,
            "ms": 31.0,
            "salt": salt,
        },
        {"unit_id": "u1", "stack": "content-first@1", "arm": "control", "ts": at, "ms": 12.0, "salt": salt},
        {"unit_id": "u1", "stack": "content-first@1", "arm": "control", "ts": at, "ms": -3},
        {"unit_id": "u1", "stack": "no-such@9", "arm": "control", "ts": at, "ms": 3},
    ]
    body = operator_client.post(
        "/api/v1/ingest/latency/",
        {"client_batch_id": "lat-1", "surface": "pages", "rows": samples},
        format="json",
    ).json()
    assert body["accepted"] == 2 and {(e["row"], e["field"]) for e in body["errors"]} == {
        (2, "ms"),
        (3, "stack"),
    }
    assert LatencySample.objects.filter(source="ingested").count() == 2
    by_arm = latency_samples_by_arm(surface="pages", salt=salt)
    assert by_arm["treatment"].tolist() == [31.0] and by_arm["control"].tolist() == [12.0]


@pytest.mark.sqlite_path
def test_ingestion_needs_the_serving_or_operator_role_and_a_known_surface(
    known_units, viewer_client, operator_client, serving_client
):
    payload = {"client_batch_id": "x", "surface": "pages", "rows": []}
    assert viewer_client.post("/api/v1/ingest/metric-rows/", payload, format="json").status_code == 403
    # A serving fleet's identity may send batches (and nothing else: it cannot read).
    assert serving_client.post("/api/v1/ingest/metric-rows/", payload, format="json").status_code == 201
    assert serving_client.get("/api/v1/surfaces/").status_code == 403
    missing = operator_client.post(
        "/api/v1/ingest/metric-rows/", {**payload, "surface": "nope"}, format="json"
    )
    assert missing.status_code == 404 and missing.json()["code"] == "unknown_surface"
    not_a_list = operator_client.post(
        "/api/v1/ingest/metric-rows/", {**payload, "rows": {"a": 1}}, format="json"
    )
    assert not_a_list.status_code == 400 and "rows" in not_a_list.json()["errors"]


@pytest.mark.sqlite_path
@pytest.mark.parametrize("surface, expected", [("pages", 201), ("nope", 404)])
def test_a_finished_ingestion_request_keeps_neither_its_body_nor_its_rows(
    known_units, operator_client, surface, expected
):
    """Issue 10's soak: the body and the parsed rows go when the response is closed.

    DRF's and Django's requests are reference cycles, so whatever they hold waits for the cyclic
    collector, which in a gunicorn worker rarely runs a full collection: every batch stayed
    resident. With the collector off, nothing may be left holding them once the response is done.
    """
    from django.core.handlers.wsgi import WSGIRequest

    n = 1237  # a length no other list here has
    ts = (NOW - dt.timedelta(hours=1)).isoformat()
    events = [{"unit_id": f"u{i % 10}", "ts": ts, "type": "impression"} for i in range(n)]
    body = json.dumps({"client_batch_id": f"mem-{surface}", "surface": surface, "events": events})
    del events

    sent = body.encode()

    def held() -> dict[str, int]:
        # type(), not isinstance(): the heap may hold dead weakref proxies (left by earlier tests in
        # the same process), and isinstance() on one raises ReferenceError.
        objects = gc.get_objects()
        return {
            "parsed rows": sum(1 for o in objects if type(o) is list and len(o) == n),
            # Only this request's body: counting every request that holds a body made the test
            # depend on order and load (issue 17). Requests of earlier tests may still be alive (the
            # browser tests' live server thread, a kept response), and a form POST keeps its body
            # in ``_body`` (Django parses urlencoded fields from request.body).
            "request bodies": sum(
                1 for o in objects if issubclass(type(o), WSGIRequest) and vars(o).get("_body") == sent
            ),
        }

    gc.collect()
    gc.disable()
    try:
        response = operator_client.post("/api/v1/ingest/events/", body, content_type="application/json")
        assert response.status_code == expected, response.content
        del response
        assert held() == {"parsed rows": 0, "request bodies": 0}
    finally:
        gc.enable()


@pytest.mark.sqlite_path
def test_a_batch_id_is_unique_per_kind_and_surface(known_units, operator_client, seeded):
    """Issue 17: the same id on another surface is another batch, not a replay."""
    Exposure.objects.create(
        surface=seeded["groups"], salt="s1", unit_id="g1", arm="control", population="content_first",
        stack="content-first@1", allocation_version=1, first_exposed_at=NOW,
    )  # fmt: skip
    url = "/api/v1/ingest/metric-rows/"
    pages = {
        "client_batch_id": "day-1",
        "surface": "pages",
        "rows": [{"unit_id": "u1", "day": _day(-1), "metric": "likes", "value": 1}],
    }
    groups = {
        "client_batch_id": "day-1",
        "surface": "groups",
        "rows": [{"unit_id": "g1", "day": _day(-1), "metric": "likes", "value": 2}],
    }
    first = operator_client.post(url, pages, format="json").json()
    other = operator_client.post(url, groups, format="json").json()
    again = operator_client.post(url, pages, format="json").json()
    assert (first["replayed"], other["replayed"], again["replayed"]) == (False, False, True)
    assert (first["surface"], other["surface"]) == ("pages", "groups") and other["accepted"] == 1
    assert MetricObservation.objects.count() == 2
    detail = operator_client.get("/api/v1/ingest/batches/metric_rows/day-1/")
    assert detail.status_code == 400 and "surface" in detail.json()["errors"]
    assert (
        operator_client.get("/api/v1/ingest/batches/metric_rows/day-1/?surface=groups").json()["surface"]
        == "groups"
    )


@pytest.mark.sqlite_path
def test_management_command_ingests_a_csv_file(known_units, tmp_path):
    from io import StringIO

    from django.core.management import call_command

    path = tmp_path / "rows.csv"
    lines = ["unit_id,day,metric,value"]
    lines += [f"u{i % 10},{_day(-1)},likes,{i}" for i in range(200)]
    lines += [f"u1,{_day(-1)},karma,1", f"ghost,{_day(-1)},likes,1", f"u2,{_day(-1)},hides,-1"]
    path.write_text("\n".join(lines) + "\n")
    out = StringIO()
    call_command("ingest_metric_rows", str(path), surface="pages", batch_id="csv-1", stdout=out)
    text = out.getvalue()
    assert "accepted 200" in text and "rejected 3" in text
    assert "row 200 metric" in text and "row 201 unit_id" in text and "row 202 value" in text
    assert MetricObservation.objects.filter(metric="likes").count() == 200
    call_command("ingest_metric_rows", str(path), surface="pages", batch_id="csv-1", stdout=StringIO())
    assert MetricObservation.objects.count() == 200


def test_copy_path_on_postgresql(postgres, known_units):
    """The PostgreSQL path writes with COPY inside the batch's transaction."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from experiments.ingestion import ingest_metric_columns

    odd = ["team,a", 'say "hi"', "back\\slash", "tab\\t not a tab"]  # COPY text escapes backslashes
    Exposure.objects.bulk_create(
        Exposure(surface=known_units, salt="s1", unit_id=u, arm="control", population="content_first",
                 stack="content-first@1", allocation_version=1, first_exposed_at=NOW)
        for u in odd
    )  # fmt: skip
    n = 5000
    with CaptureQueriesContext(connection):
        result = ingest_metric_columns(
            surface=known_units,
            client_batch_id="copy-1",
            unit_ids=[odd[(i // 100) % 4] if i % 100 == 0 else f"u{i % 10}" for i in range(n)],
            days=[_day(-1)] * n,
            metrics=["time_spent"] * n,
            values=[float(i) for i in range(n)],
            actor="system:test",
        )
    assert result.batch.accepted == n and result.written == n
    assert MetricObservation.objects.filter(batch=result.batch).count() == n
    assert sum(MetricObservation.objects.values_list("value", flat=True)) == pytest.approx(n * (n - 1) / 2)
    assert MetricObservation.objects.filter(unit_id__in=odd).count() == 50
    assert set(MetricObservation.objects.filter(unit_id__in=odd).values_list("unit_id", flat=True)) == set(
        odd
    )


def test_metric_rows_table_has_no_foreign_key_constraints_and_one_secondary_index(postgres, known_units):
    """Integrity comes from the service (surface resolved, batch created in the rows' transaction):
    the table carries no FK triggers and only the index its readers use."""
    from django.db import connection

    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, MetricObservation._meta.db_table)
    assert not [name for name, c in constraints.items() if c["foreign_key"]]
    indexes = {name: c["columns"] for name, c in constraints.items() if c["index"] and not c["primary_key"]}
    assert indexes == {"metric_obs_surface_metric_day": ["surface_id", "metric", "day"]}


@pytest.mark.sqlite_path
def test_columnar_batch_with_bad_rows_keeps_the_good_ones_on_every_backend(known_units):
    """The columnar path (management command, bench) checks each distinct value once; errors still
    name every bad row, quote the row's own value, and the good rows are written with their values."""
    import numpy as np

    from experiments.ingestion import ingest_metric_columns

    n = 3000
    units = np.array([f"u{i % 10}" for i in range(n)], dtype=object)
    days = np.array([_day(-(i % 3) - 1) for i in range(n)], dtype=object)
    metrics = np.array(["likes", "time_spent", "sessions"] * (n // 3), dtype=object)
    values = np.arange(n, dtype=float)
    units[[5, 17]] = ["ghost", None]  # unknown unit, missing unit
    days[[6, 18]] = ["2001-01-01", "2026-02-30"]  # out of range, not a date
    metrics[[7, 19, 20]] = [1, True, "karma"]  # 1 and True hash alike: each message quotes its own row
    values[[8, 21]] = [-1.0, np.inf]
    result = ingest_metric_columns(
        surface=known_units, client_batch_id="cols-1", unit_ids=units, days=days, metrics=metrics,
        values=values, actor="system:test",
    )  # fmt: skip
    body = result.to_dict()
    bad = {5, 17, 6, 18, 7, 19, 20, 8, 21}
    assert (body["status"], body["accepted"], body["rejected"]) == ("partial", n - len(bad), len(bad))
    messages = {(e["row"], e["field"]): e["message"] for e in body["errors"]}
    assert set(messages) == {
        (5, "unit_id"), (17, "unit_id"), (6, "day"), (18, "day"), (7, "metric"), (19, "metric"),
        (20, "metric"), (8, "value"), (21, "value"),
    }  # fmt: skip
    assert "unknown unit" in messages[(5, "unit_id")] and "printable" in messages[(17, "unit_id")]
    assert messages[(7, "metric")] == "unknown metric 1" and messages[(19, "metric")] == "unknown metric True"
    assert "negative count" in messages[(8, "value")] and "finite" in messages[(21, "value")]
    stored = MetricObservation.objects.filter(batch=result.batch)
    assert stored.count() == result.written == n - len(bad)
    expected = sum(i for i in range(n) if i not in bad)
    assert sum(stored.values_list("value", flat=True)) == pytest.approx(expected)
    row = stored.get(value=3000 - 1)  # the last row: u9, third metric, third day
    assert (row.unit_id, row.metric, row.day.isoformat()) == ("u9", "sessions", _day(-3))
    again = ingest_metric_columns(
        surface=known_units, client_batch_id="cols-1", unit_ids=units, days=days, metrics=metrics,
        values=values, actor="system:test",
    )  # fmt: skip
    assert again.replayed and MetricObservation.objects.count() == n - len(bad)


@pytest.mark.sqlite_path
def test_management_command_ingests_an_events_file(known_units, tmp_path):
    import json
    from io import StringIO

    from django.core.management import call_command

    ts = (NOW - dt.timedelta(hours=1)).isoformat()
    path = tmp_path / "events.jsonl"
    events = [{"unit_id": "u3", "ts": ts, "type": "share"}] * 3 + [
        {"unit_id": "u3", "ts": ts, "type": "dwell", "value": 30.0},
        {"unit_id": "u3", "ts": ts, "type": "unknown"},
    ]
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    out = StringIO()
    call_command("ingest_events", str(path), surface="pages", batch_id="ev-file", stdout=out)
    assert "accepted 4" in out.getvalue() and "row 4 type" in out.getvalue()
    got = dict(MetricObservation.objects.filter(unit_id="u3").values_list("metric", "value"))
    assert got == {"shares": 3.0, "meaningful_interactions": 3.0, "engagements": 3.0, "time_spent": 30.0}


@pytest.mark.sqlite_path
def test_values_beyond_the_documented_bound_are_rejected_per_row(known_units, operator_client):
    # Issue #16: 1e308 used to be accepted and overflow the analysis; |value| > 1e15 is refused.
    from experiments.ingestion import MAX_ABS_VALUE

    rows = [
        {"unit_id": "u1", "day": _day(-1), "metric": "time_spent", "value": 1e308},  # 0 beyond
        {"unit_id": "u2", "day": _day(-1), "metric": "time_spent", "value": MAX_ABS_VALUE},  # 1 at the bound
        {"unit_id": "u3", "day": _day(-1), "metric": "likes", "value": 2e15},  # 2 beyond
    ]
    payload = {"client_batch_id": "wh-bound", "surface": "pages", "rows": rows}
    response = operator_client.post("/api/v1/ingest/metric-rows/", payload, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (1, 2)
    messages = {(e["row"], e["field"]): e["message"] for e in body["errors"]}
    assert set(messages) == {(0, "value"), (2, "value")}
    assert "1e+308 is beyond the bound |value| <= 1e+15" in messages[(0, "value")]
    assert sorted(MetricObservation.objects.values_list("unit_id", "value")) == [("u2", MAX_ABS_VALUE)]
