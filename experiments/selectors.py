"""Reads of the experiments app (the UI, runbook gates and the API call these)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import QuerySet

from experiments.models import AnalysisRun, Decision, Experiment
from experiments.outcome import POOLED, analysis_outcome


def experiment_list(
    *, surface: str | None = None, status: str | None = None, stack: str | None = None
) -> QuerySet[Experiment]:
    qs = Experiment.objects.select_related("surface", "treatment_stack")
    if surface:
        qs = qs.filter(surface__key=surface)
    if status:
        qs = qs.filter(status=status)
    if stack:
        key, _, version = stack.partition("@")
        qs = qs.filter(treatment_stack__key=key, treatment_stack__version=version)
    return qs


def experiment_get(*, key: str) -> Experiment | None:
    return (
        Experiment.objects.select_related("surface", "treatment_stack", "allocation").filter(key=key).first()
    )


def experiment_latest_analysis(*, experiment: Experiment) -> AnalysisRun | None:
    return AnalysisRun.objects.filter(experiment=experiment).order_by("-created_at", "-id").first()


def analysis_list(*, experiment: Experiment) -> QuerySet[AnalysisRun]:
    return AnalysisRun.objects.filter(experiment=experiment).order_by("-created_at", "-id")


def decision_list(*, experiment: Experiment) -> QuerySet[Decision]:
    return (
        Decision.objects.filter(experiment=experiment)
        .select_related("analysis")
        .order_by("-decided_at", "-id")
    )


def experiment_timeline(*, experiment: Experiment, until: dt.date | None = None) -> list[dict[str, Any]]:
    """Cumulative lift over time from the analysis history: the last run of each as-of day.

    Every scheduled or on-demand analysis is cumulative over the window up to its as-of day, so
    the history of runs is the cumulative-lift curve (the sequential test makes looking at it
    at every point valid).
    """
    runs: dict[str, AnalysisRun] = {}
    qs = AnalysisRun.objects.filter(experiment=experiment).order_by("created_at", "id")
    if until is not None:
        qs = qs.filter(as_of__lte=until)
    for run in qs.only("as_of", "result", "created_at"):
        runs[run.as_of.isoformat()] = run
    points: list[dict[str, Any]] = []
    for day in sorted(runs):
        outcome = analysis_outcome(runs[day].result)
        if outcome is None:
            continue
        for m in outcome.metrics:
            if m.population != POOLED:
                continue
            points.append(
                {
                    "day": day,
                    "metric": m.metric,
                    "name": m.name,
                    "role": m.role,
                    "verdict": str(m.verdict),
                    "rel_lift": m.estimate_rel,
                    "rel_lift_ci": list(m.ci_rel) if m.ci_rel else None,
                    "sequential_ci": list(m.sequential_ci) if m.sequential_ci else None,
                    "control_mean": m.control_mean,
                    "diff": m.estimate_abs,
                    "units": outcome.units.total,
                }
            )
    return points
