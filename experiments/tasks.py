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
    from experiments.rollups import rollup_refresh
    from experiments.services import experiment_analyze

    experiment = Experiment.objects.filter(pk=experiment_id).first()
    if experiment is None or experiment.status == Experiment.Status.DRAFT:
        return None
    if source == "database":
        # Fold the closed days first (its own transaction; a no-op when nothing is new), so the
        # analysis pivots only the rows of the days not folded yet (experiments/rollups.py).
        rollup_refresh(experiment=experiment, now=timezone.now())
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


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def rollups_refresh_running() -> int:
    """Beat: fold the closed days of every running experiment into its analysis rollup (PostgreSQL)."""
    from experiments.rollups import rollups_refresh_running as refresh

    return refresh()
