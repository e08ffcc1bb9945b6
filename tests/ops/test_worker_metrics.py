"""A real Celery worker counts and times its tasks and serves them on CELERY_METRICS_PORT."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def worker_metrics_port(monkeypatch, tmp_path) -> int:
    # The worker subprocess inherits these (the fixture below builds its environment from os.environ).
    port = _free_port()
    folder = tmp_path / "prometheus"
    folder.mkdir()
    monkeypatch.setenv("CELERY_METRICS_PORT", str(port))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    return port


@pytest.mark.redis
def test_worker_serves_task_counts_durations_and_heartbeat(
    worker_metrics_port, celery_app_on_redis, celery_worker_process, seeded
):
    from controlplane.core.tasks import heartbeat

    assert heartbeat.delay().get(timeout=60)
    name = "controlplane.core.tasks.heartbeat"
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker_metrics_port}/metrics", timeout=5) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
        events = families.get("celery_task_events")
        succeeded = [
            s
            for s in (events.samples if events else [])
            if s.name == "celery_task_events_total" and s.labels == {"name": name, "state": "succeeded"}
        ]
        if succeeded or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert succeeded and succeeded[0].value >= 1, celery_worker_process.log()[-2000:]
    runtime = [
        s
        for s in families["celery_task_runtime_seconds"].samples
        if s.name == "celery_task_runtime_seconds_count" and s.labels.get("name") == name
    ]
    assert runtime and runtime[0].value >= 1
    (beat,) = families["controlplane_celery_heartbeat_timestamp_seconds"].samples
    assert abs(beat.value - time.time()) < 120
