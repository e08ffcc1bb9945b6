"""Experiments list (status, latest verdict, power and days left, export buttons) and the shadow
parity page (overlap@k, RBO, Kendall τ over time; latency of shadow against live).

The readout itself is the experiments app's page (``experiment-readout``) and its downloads
(``experiment-readout-download``); this module links to them and never re-implements them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from controlplane.core import selectors as core_selectors
from controlplane.core.models import Surface
from controlplane.web import charts
from controlplane.web.access import viewer_required

#: Per-request latency pairs drawn for the distribution chart (most recent first).
LATENCY_SAMPLE_LIMIT = 5000


@viewer_required
def experiment_list(request: HttpRequest) -> HttpResponse:
    from experiments import selectors as exp_selectors
    from experiments.outcome import analysis_outcome
    from migrations_runbooks.models import Runbook

    status = request.GET.get("status") or None
    experiments = list(exp_selectors.experiment_list(status=status).order_by("-created_at"))
    runbooks = {
        rb.experiment_key: rb
        for rb in Runbook.objects.filter(experiment_key__in=[e.key for e in experiments]).select_related(
            "surface"
        )
    }
    rows: list[dict[str, Any]] = []
    for e in experiments:
        run = exp_selectors.experiment_latest_analysis(experiment=e)
        outcome = analysis_outcome(run.result if run else None)
        n = outcome.units.total if outcome else 0
        needed_known = outcome.units_needed_of_blocking() if outcome else []
        rows.append(
            {
                "experiment": e,
                "run": run,
                "verdict": str(outcome.recommendation.verdict or "") if outcome else None,
                "reasons": list(outcome.recommendation.reasons) if outcome else [],
                "days_needed": outcome.recommendation.days_needed if outcome else None,
                "units": n,
                # Share of the largest sample a blocking test needs for the target power.
                "sample_progress": min(1.0, n / max(needed_known)) if needed_known else None,
                "runbook": runbooks.get(e.key),
            }
        )
    return render(
        request,
        "web/experiments.html",
        {"rows": rows, "status": status or "", "statuses": ["draft", "running", "stopped", "decided"]},
    )


class ParityFilterForm(forms.Form):
    surface = forms.ModelChoiceField(
        queryset=Surface.objects.order_by("key"), to_field_name="key", label="Surface", empty_label=None
    )
    days = forms.TypedChoiceField(
        label="Period",
        coerce=int,
        choices=[(7, "Last 7 days"), (14, "Last 14 days"), (30, "Last 30 days"), (90, "Last 90 days")],
        initial=30,
    )


def latency_pairs(
    *, surface: Surface, since: dt.date, limit: int = LATENCY_SAMPLE_LIMIT
) -> tuple[list[float], list[float]]:
    """Live and shadow latency of the same shadowed requests (compared ones), newest first."""
    from controlplane.serving.models import ShadowComparison

    pairs = (
        ShadowComparison.objects.filter(surface=surface, day__gte=since, status="ok", shadow_ms__isnull=False)
        .order_by("-requested_at")
        .values_list("live_ms", "shadow_ms")[:limit]
    )
    live, shadow = [], []
    for live_ms, shadow_ms in pairs:
        if shadow_ms is None:
            continue
        live.append(float(live_ms))
        shadow.append(float(shadow_ms))
    return live, shadow


@viewer_required
def shadow_parity(request: HttpRequest) -> HttpResponse:
    from controlplane.serving import selectors as serving_selectors

    first = Surface.objects.order_by("key").first()
    form = ParityFilterForm(request.GET or {"surface": first.key if first else "", "days": 30})
    context: dict[str, Any] = {"form": form, "rows": [], "surface": None}
    if form.is_valid():
        surface: Surface = form.cleaned_data["surface"]
        since = timezone.now().date() - dt.timedelta(days=form.cleaned_data["days"])
        rows = serving_selectors.shadow_parity_daily(surface=surface, since=since)
        allocation = core_selectors.allocation_current(surface=surface)
        shadow_stack = allocation.shadow_stack if allocation else None
        slo = shadow_stack.latency_slo_ms if shadow_stack else None
        live, shadow = latency_pairs(surface=surface, since=since)
        context.update(
            {
                "surface": surface,
                "rows": rows,
                "shadow_stack": shadow_stack,
                "compared": sum(r.get("compared") or 0 for r in rows),
                "parity_chart": charts.parity_over_time(rows=rows, div_id="parity-over-time")
                if rows
                else None,
                "latency_chart": charts.latency_daily(rows=rows, div_id="latency-daily", slo_ms=slo)
                if rows
                else None,
                "distribution_chart": charts.latency_distribution(
                    live_ms=live, shadow_ms=shadow, div_id="latency-distribution", slo_ms=slo
                )
                if live
                else None,
                "sample_size": len(live),
            }
        )
    return render(request, "web/shadow_parity.html", context)
