"""Structured logs: JSON lines with request id, user and ids; every audit event is a log event."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from controlplane.ops.logs import formatter
from tests.runbooks.conftest import fast_steps

pytestmark = pytest.mark.django_db


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The root logger also writes through the LOG_FORMAT=json formatter into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter("json"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_settings_select_the_json_formatter():
    from django.conf import settings

    assert settings.LOGGING["formatters"]["structured"]["()"] == "controlplane.ops.logs.formatter"
    # Console stays the default for make run; LOG_FORMAT=json switches.
    assert formatter("console").format(logging.makeLogRecord({"msg": "hi"})).find("{") == -1
    assert json.loads(formatter("json").format(logging.makeLogRecord({"msg": "hi", "levelname": "INFO"})))


def test_audit_events_are_json_log_lines_with_request_context(
    seeded,
    users,
    api_client_for,
    json_log,
    scripted_analysis,
    scripted_parity,
    django_capture_on_commit_callbacks,
):
    op = api_client_for(users["operator"])
    with django_capture_on_commit_callbacks(execute=True):
        created = op.post(
            "/api/v1/runbooks/",
            {"surface": "pages", "target_stack": "unified-mtl@1", "steps": fast_steps()},
            format="json",
        )
    runbook_id = created.json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        started = op.post(
            f"/api/v1/runbooks/{runbook_id}/start/",
            {"reason": "go"},
            format="json",
            HTTP_X_REQUEST_ID="req-42",
        )
    assert started.status_code == 200 and started["X-Request-ID"] == "req-42"

    audits = [line for line in lines(json_log) if line.get("logger") == "controlplane.audit"]
    start = [a for a in audits if a["verb"] == "runbook.start"]
    assert len(start) == 1, audits
    event = start[0]
    assert event["request_id"] == "req-42"
    assert event["user"] == users["operator"].username
    assert event["runbook_id"] == runbook_id
    assert event["surface_key"] == "pages"
    assert event["actor"] == users["operator"].username
    assert event["level"] == "info" and event["timestamp"].endswith("Z")
    # The audit table and the log agree.
    from controlplane.core.models import AuditEvent

    assert AuditEvent.objects.get(pk=event["audit_id"]).verb == "runbook.start"


def test_rolled_back_transactions_log_no_audit_event(seeded, json_log, django_capture_on_commit_callbacks):
    from django.db import transaction

    from controlplane.core.services import audit_record

    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            audit_record(actor="system:test", verb="surface.touch", target=seeded["pages"])
            raise RuntimeError("abort")
        audit_record(actor="system:test", verb="surface.kept", target=seeded["pages"])
    verbs = [line["verb"] for line in lines(json_log) if line.get("logger") == "controlplane.audit"]
    assert verbs == ["surface.kept"]


def test_structlog_loggers_share_the_context(json_log):
    structlog.contextvars.bind_contextvars(request_id="r-1", experiment_key="exp-1")
    try:
        structlog.get_logger("controlplane.test").info("analysis done", rows=3)
    finally:
        structlog.contextvars.clear_contextvars()
    (line,) = [x for x in lines(json_log) if x.get("event") == "analysis done"]
    assert (line["request_id"], line["experiment_key"], line["rows"]) == ("r-1", "exp-1", 3)


def test_an_eager_task_logs_with_its_ids_and_restores_the_request_context(db, json_log):
    from celery import shared_task

    @shared_task(name="tests.ops.log_something")
    def log_something(runbook_id: int) -> None:
        logging.getLogger("tests.ops").info("inside the task")

    structlog.contextvars.bind_contextvars(request_id="r-outer")
    try:
        log_something.apply(kwargs={"runbook_id": 7})
        assert structlog.contextvars.get_contextvars() == {"request_id": "r-outer"}
    finally:
        structlog.contextvars.clear_contextvars()
    (line,) = [x for x in lines(json_log) if x.get("event") == "inside the task"]
    assert line["task"] == "tests.ops.log_something" and line["runbook_id"] == 7 and line["task_id"]
