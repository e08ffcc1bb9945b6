"""Celery entry points: ids in, one service call, retry only on transient database errors."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def experiment_analyze_task(
    experiment_id: int, trigger: str = "scheduled", source: str = "database"
) -> int | None:
    """Analyse one experiment; returns the AnalysisRun id (None if the experiment is gone or a draft)."""
    from django.utils import timezone

    from experiments.models import Experiment
    from experiments.services import experiment_analyze

    experiment = Experiment.objects.filter(pk=experiment_id).first()
    if experiment is None or experiment.status == Experiment.Status.DRAFT:
        return None
    run = experiment_analyze(experiment=experiment, now=timezone.now(), trigger=trigger, source=source)
    return run.pk


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def experiments_analyze_running() -> int:
    """Beat: enqueue an analysis of every running experiment (each one a separate task)."""
    from experiments.models import Experiment

    ids = list(Experiment.objects.filter(status=Experiment.Status.RUNNING).values_list("pk", flat=True))
    for pk in ids:
        experiment_analyze_task.delay(pk)
    return len(ids)
