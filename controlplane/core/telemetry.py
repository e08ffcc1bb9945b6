"""Prometheus counters and histograms that the code increments where the work happens.

This module sits in the core layer (it imports only prometheus-client and Django's transaction
hook) so every layer can count its own work; ``controlplane.ops`` serves them at ``/metrics``
together with the gauges it computes from the database at scrape time.

Counts are taken when the transaction commits (``transaction.on_commit``): a tick that rolls back
did not happen, and must not show up as a rollback in an alert.

Several processes (gunicorn workers, Celery prefork children) each hold their own counters. With
``PROMETHEUS_MULTIPROC_DIR`` set before start-up, prometheus-client writes them to files in that
folder and ``/metrics`` (or a worker's ``CELERY_METRICS_PORT``) adds them up; see the README.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable

from django.db import transaction
from prometheus_client import Counter, Gauge, Histogram

# Seconds: 5 ms .. 5 min, for requests, ticks, analyses and tasks alike.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

HTTP_REQUEST_DURATION = Histogram(
    "controlplane_http_request_duration_seconds",
    "Time to answer an HTTP request, by URL name (view), method and status code.",
    ["view", "method", "status"],
    buckets=DURATION_BUCKETS,
)
GATE_OUTCOMES = Counter(
    "controlplane_gate_outcomes",
    "Gate results recorded by runbook evaluations, by gate and outcome (pass, wait, hold, rollback).",
    ["gate", "outcome"],
)
RUNBOOK_EVALUATIONS = Counter(
    "controlplane_runbook_evaluations",
    "Runbook evaluations (sweeper ticks and operator actions) by outcome: advance, hold, rollback, ….",
    ["outcome"],
)
RAMP_TICKS = Counter("controlplane_ramp_ticks", "Sweeps of the due runbooks (ramps_advance_due).")
RAMP_TICK_DURATION = Histogram(
    "controlplane_ramp_tick_duration_seconds",
    "Wall time of one sweep of the due runbooks.",
    buckets=DURATION_BUCKETS,
)
ANALYSIS_DURATION = Histogram(
    "controlplane_analysis_duration_seconds",
    "Wall time of one experiment analysis (query plus statistics), by source.",
    ["source"],
    buckets=DURATION_BUCKETS,
)
INGEST_ROWS = Counter(
    "controlplane_ingest_rows",
    "Rows received by ingestion, by kind and result (accepted or rejected); rate() is rows per second.",
    ["kind", "result"],
)
INGEST_REJECTS = Counter(
    "controlplane_ingest_rejects",
    "Rejected ingestion rows by kind and reason (the field at fault).",
    ["kind", "reason"],
)
CELERY_TASK_EVENTS = Counter(
    # Named after celery-exporter's celery_task_<state>_total families, folded into one label.
    "celery_task_events",
    "Celery task lifecycle events by task name and state (sent, started, succeeded, failed, retried).",
    ["name", "state"],
)
CELERY_TASK_RUNTIME = Histogram(
    "celery_task_runtime_seconds",
    "Celery task run time in the worker, by task name.",
    ["name"],
    buckets=DURATION_BUCKETS,
)
CELERY_HEARTBEAT = Gauge(
    "controlplane_celery_heartbeat_timestamp_seconds",
    "Unix time of the last heartbeat task a Celery worker finished (beat sends one a minute).",
    multiprocess_mode="max",
)


def _after_commit(fn: Callable[[], object]) -> None:
    transaction.on_commit(fn)


def evaluation_recorded(*, outcome: str, gates: Iterable[tuple[str, str]]) -> None:
    """Count one runbook evaluation and each of its gate results, once the transaction commits."""
    pairs = list(gates)

    def count() -> None:
        RUNBOOK_EVALUATIONS.labels(outcome=outcome).inc()
        for gate, gate_outcome in pairs:
            GATE_OUTCOMES.labels(gate=gate, outcome=gate_outcome).inc()

    _after_commit(count)


def tick_finished(*, seconds: float) -> None:
    RAMP_TICKS.inc()
    RAMP_TICK_DURATION.observe(seconds)


def analysis_finished(*, source: str, seconds: float) -> None:
    _after_commit(lambda: ANALYSIS_DURATION.labels(source=source).observe(seconds))


def ingest_counted(*, kind: str, accepted: int, rejected: int, reasons: Iterable[str]) -> None:
    """Count one ingestion batch's rows; ``reasons`` holds one field name per rejected (row, field)."""
    by_reason = collections.Counter(reasons)

    def count() -> None:
        INGEST_ROWS.labels(kind=kind, result="accepted").inc(accepted)
        INGEST_ROWS.labels(kind=kind, result="rejected").inc(rejected)
        for reason, n in by_reason.items():
            INGEST_REJECTS.labels(kind=kind, reason=reason).inc(n)

    _after_commit(count)
