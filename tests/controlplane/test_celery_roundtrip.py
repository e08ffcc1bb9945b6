"""A task goes through real Redis to a real `celery worker` process and back."""

from __future__ import annotations

import datetime as dt

import pytest


@pytest.mark.redis
def test_heartbeat_round_trip_through_worker_on_redis(celery_app_on_redis, celery_worker_process, seeded):
    from controlplane.core.tasks import heartbeat

    result = heartbeat.delay()
    stamped = dt.datetime.fromisoformat(result.get(timeout=60))
    assert stamped.tzinfo is not None
    assert "controlplane.core.tasks.heartbeat" in celery_worker_process.log()


def test_celery_defaults_follow_the_style_guide():
    from controlplane.celery import app

    assert app.conf.task_acks_late is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_time_limit and app.conf.task_soft_time_limit < app.conf.task_time_limit
    assert app.conf.task_reject_on_worker_lost is True
    for name, entry in app.conf.beat_schedule.items():
        expires = entry["options"]["expires"]
        # A beat message must expire before the next one is sent, so a backlog never piles up.
        minutes = entry["schedule"].minute
        period = (
            60
            if len(minutes) == 60
            else 3600
            if len(minutes) == 1
            else 60
            * min(
                (b - a) % 60 or 60
                for a, b in zip(sorted(minutes), [*sorted(minutes)[1:], sorted(minutes)[0]], strict=True)
            )
        )
        assert 0 < expires < period, (name, expires, period)
