"""Celery task counts and durations, and log context, from Celery's own signals.

The families follow celery-exporter's conventions (task name label; sent, started, succeeded,
failed, retried states) but are counted in-process, so no events consumer needs to run.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from celery import signals

from controlplane.core import telemetry

HEARTBEAT_TASK = "controlplane.core.tasks.heartbeat"
_started: dict[str, float] = {}
# The log context around a task (an eager task runs inside a web request): restored after it.
_outer_context: dict[str, dict[str, Any]] = {}


def _name(sender: Any) -> str:
    return str(getattr(sender, "name", sender) or "unknown")


def on_published(sender: Any = None, headers: Any = None, **_: Any) -> None:
    # after_task_publish's sender is the task name.
    name = (headers or {}).get("task") or sender
    telemetry.CELERY_TASK_EVENTS.labels(name=str(name), state="sent").inc()


def on_prerun(task_id: str = "", task: Any = None, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    _started[task_id] = time.perf_counter()
    telemetry.CELERY_TASK_EVENTS.labels(name=_name(task), state="started").inc()
    _outer_context[task_id] = structlog.contextvars.get_contextvars()
    context: dict[str, Any] = {"task": _name(task), "task_id": task_id}
    for key in ("experiment_id", "runbook_id", "surface_key"):
        if kwargs and key in kwargs:
            context[key] = kwargs[key]
    if _name(task) == "experiments.tasks.experiment_analyze_task" and args:
        context["experiment_id"] = args[0]
    structlog.contextvars.bind_contextvars(**context)


def on_postrun(task_id: str = "", task: Any = None, state: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id, None)
    name = _name(task)
    if started is not None:
        telemetry.CELERY_TASK_RUNTIME.labels(name=name).observe(time.perf_counter() - started)
    if state == "SUCCESS":
        telemetry.CELERY_TASK_EVENTS.labels(name=name, state="succeeded").inc()
        if name == HEARTBEAT_TASK:
            telemetry.CELERY_HEARTBEAT.set_to_current_time()
    elif state == "FAILURE":
        telemetry.CELERY_TASK_EVENTS.labels(name=name, state="failed").inc()
    elif state == "RETRY":
        telemetry.CELERY_TASK_EVENTS.labels(name=name, state="retried").inc()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**_outer_context.pop(task_id, {}))


def connect() -> None:
    signals.after_task_publish.connect(on_published, weak=False, dispatch_uid="ops-published")
    signals.task_prerun.connect(on_prerun, weak=False, dispatch_uid="ops-prerun")
    signals.task_postrun.connect(on_postrun, weak=False, dispatch_uid="ops-postrun")
    signals.worker_process_init.connect(_worker_process_init, weak=False, dispatch_uid="ops-wpi")
    signals.worker_ready.connect(_worker_ready, weak=False, dispatch_uid="ops-ready")


def _worker_process_init(**_: Any) -> None:
    _started.clear()
    _outer_context.clear()


def _worker_ready(**_: Any) -> None:
    """Serve this worker host's metrics on ``CELERY_METRICS_PORT`` when it is set (scaled-out workers)."""
    import os

    port = os.environ.get("CELERY_METRICS_PORT")
    if not port:
        return
    from prometheus_client import start_http_server

    from controlplane.ops.metrics import process_registry

    start_http_server(
        int(port), addr=os.environ.get("CELERY_METRICS_ADDR", "127.0.0.1"), registry=process_registry()
    )
