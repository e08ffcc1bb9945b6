"""The product's Celery app with a shorter Redis visibility timeout, for fault tests only.

``celery -A tests.faults.worker_app worker`` runs the same app, tasks and settings as
``-A controlplane.celery``; only the redelivery timing differs: ``visibility_timeout`` (how long
Redis keeps an unacknowledged message before it is delivered again; an hour by default) comes from
``FAULTS_VISIBILITY_TIMEOUT``, and kombu looks for such messages every second instead of every
~100 s (``unacked_restore_interval`` × ``unacked_restore_throttle``).
"""

from __future__ import annotations

import os

from controlplane.celery import app

app.conf.broker_transport_options = {
    **dict(app.conf.broker_transport_options or {}),
    "visibility_timeout": float(os.environ["FAULTS_VISIBILITY_TIMEOUT"]),
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}

__all__ = ["app"]
