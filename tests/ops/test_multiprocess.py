"""Several processes (gunicorn workers, Celery prefork children) add up in one /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
from controlplane.core import telemetry
telemetry.tick_finished(seconds=0.25)
telemetry.CELERY_TASK_EVENTS.labels(name="migrations_runbooks.tasks.ramps_tick", state="succeeded").inc()
telemetry.CELERY_HEARTBEAT.set({beat})
"""


@pytest.mark.django_db
def test_metrics_add_up_the_processes_sharing_the_multiprocess_dir(
    tmp_path, monkeypatch, users, api_client_for
):
    folder = tmp_path / "prometheus"
    folder.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    for beat in (1000.0, 2000.0):  # two separate processes, as two workers would be
        subprocess.run([sys.executable, "-c", CHILD.format(beat=beat)], check=True, cwd=ROOT, env=env)
    assert len(list(folder.glob("*.db"))) >= 2

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    response = api_client_for(users["operator"]).get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    ticks = [s for s in families["controlplane_ramp_ticks"].samples if s.name.endswith("_total")]
    assert sum(s.value for s in ticks) == 2
    events = families["celery_task_events"].samples
    assert sum(s.value for s in events if s.labels.get("state") == "succeeded") == 2
    (beat,) = families["controlplane_celery_heartbeat_timestamp_seconds"].samples
    assert beat.value == 2000.0  # the newest heartbeat of any process
    assert "controlplane_runbooks" in families  # the database gauges still come along
