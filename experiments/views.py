"""The readout web page (the same document the HTML export renders, inside the site layout)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import NoReverseMatch, reverse

from controlplane.core.permissions import VIEWER, has_role
from experiments import readout, selectors
from experiments.models import AnalysisRun, Experiment


def _plotly_src() -> str | None:
    """plotly.js from the web app's asset route when it exists (else the page inlines it)."""
    try:
        from importlib.metadata import version

        return reverse("web-plotly-js", args=[version("plotly")])
    except (NoReverseMatch, ImportError):
        return None


@login_required
def experiment_readout(request: HttpRequest, key: str) -> HttpResponse:
    if not has_role(request.user, VIEWER):
        raise PermissionDenied("You need the viewer role to read experiments.")
    experiment = get_object_or_404(
        Experiment.objects.select_related("surface", "treatment_stack", "allocation"), key=key
    )
    analysis_id = request.GET.get("analysis", "")
    run: AnalysisRun | None
    if analysis_id.isdigit():
        run = get_object_or_404(AnalysisRun, pk=int(analysis_id), experiment=experiment)
    else:
        run = selectors.experiment_latest_analysis(experiment=experiment)
    if run is None:
        return render(request, "experiments/readout_empty.html", {"experiment": experiment}, status=200)
    data = readout.readout_data(experiment=experiment, run=run)
    return HttpResponse(
        readout.render_html(data, standalone=False, plotly_src=_plotly_src(), request=request)
    )
