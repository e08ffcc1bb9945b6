"""The readout for program managers: one data document, rendered as a web page, a self-contained
HTML file (plotly.js inlined, opens offline), CSV and JSON.

``readout_data`` gathers everything the report shows into plain JSON — design, the analysis
result, the cumulative-lift timeline, shadow parity and daily latency — so a decision can keep
a frozen snapshot of it and the renderers are pure functions of it.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from django.db import transaction
from django.template.loader import render_to_string

from controlplane.serving import selectors as serving_logs
from experiments import charts
from experiments.models import AnalysisRun, Experiment
from experiments.outcome import POOLED, AnalysisOutcome, MetricOutcome, analysis_outcome
from experiments.selectors import experiment_timeline

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "metric",
    "name",
    "role",
    "kind",
    "direction",
    "population",
    "verdict",
    "n_control",
    "n_treatment",
    "control_mean",
    "treatment_mean",
    "diff",
    "ci_low",
    "ci_high",
    "rel_lift",
    "rel_lift_ci_low",
    "rel_lift_ci_high",
    "p_value",
    "p_adjusted",
    "margin_kind",
    "margin_abs",
    "margin_rel",
    "tost_p",
    "equivalent",
    "ni_p",
    "noninferior",
    "sequential_p",
    "variance_reduction",
    "method",
    "reason",
    # Added by issue #16 (appended, nothing renamed).
    "skewness_control",
    "skewness_treatment",
    "skew_rule_holds",
    "capped_at",
)


def _unavailable(section: str, experiment: Experiment, exc: Exception) -> str:
    log.exception("readout of %s: %s unavailable", experiment.key, section)
    return f"unavailable: {type(exc).__name__}: {exc}"


def _shadow_parity(experiment: Experiment, since: dt.date) -> tuple[list[dict[str, Any]], str]:
    """Daily shadow parity of the treatment stack on the surface, from serving; ``(rows, "")`` or
    ``([], "unavailable: why")`` when the read fails (the rest of the readout still renders)."""
    try:
        with transaction.atomic():  # a failed read must not poison a caller's transaction
            rows = list(
                serving_logs.shadow_parity_daily(
                    surface=experiment.surface, stack=experiment.treatment_stack.label, since=since
                )
            )
    except Exception as exc:  # any read failure: the section says why instead of vanishing
        return [], _unavailable("shadow parity", experiment, exc)
    out = []
    for row in rows:
        item = dict(row) if isinstance(row, Mapping) else {k: getattr(row, k, None) for k in _PARITY_FIELDS}
        item["day"] = str(item.get("day"))
        out.append({k: item.get(k) for k in _PARITY_FIELDS})
    return out, ""


_PARITY_FIELDS = (
    "day",
    "n",
    "overlap_10",
    "overlap_50",
    "rbo",
    "kendall_tau",
    "calibration_diff",
    "live_p50_ms",
    "live_p99_ms",
    "shadow_p50_ms",
    "shadow_p99_ms",
    "errors",
)


def _daily_latency(experiment: Experiment, until: dt.date) -> tuple[list[dict[str, Any]], str]:
    """p50/p99 per day and arm of the requests served under the experiment's salt; ``(rows, "")``
    or ``([], "unavailable: why")`` when the read fails."""
    import numpy as np

    start = dt.datetime.combine(experiment.window_start, dt.time.min, tzinfo=dt.UTC)
    end = dt.datetime.combine(until + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    grouped: dict[tuple[str, str], list[float]] = {}
    try:
        with transaction.atomic():
            rows = serving_logs.latency_rows(
                surface_id=experiment.surface_id,
                salt=experiment.salt,
                start=start,
                end=end,
                fields=("arm", "ts", "ms"),
            )
            for arm, ts, ms in rows.iterator(chunk_size=20000):
                grouped.setdefault((ts.date().isoformat(), arm), []).append(ms)
    except Exception as exc:  # any read failure: the section says why instead of vanishing
        return [], _unavailable("serving latency", experiment, exc)
    out = []
    for (day, arm), values in sorted(grouped.items()):
        a = np.asarray(values)
        out.append(
            {
                "day": day,
                "arm": arm,
                "n": int(a.size),
                "p50": float(np.quantile(a, 0.5, method="inverted_cdf")),
                "p99": float(np.quantile(a, 0.99, method="inverted_cdf")),
            }
        )
    return out, ""


def readout_data(*, experiment: Experiment, run: AnalysisRun) -> dict[str, Any]:
    """Everything the report shows, as JSON (the frozen snapshot a decision keeps)."""
    from experiments.services import experiment_design

    design = experiment_design(experiment)
    design["status"] = experiment.status
    outcome = analysis_outcome(run.result)
    parity, parity_unavailable = _shadow_parity(experiment, experiment.window_start)
    latency, latency_unavailable = _daily_latency(experiment, run.as_of)
    unavailable = {
        name: why for name, why in (("parity", parity_unavailable), ("latency", latency_unavailable)) if why
    }
    return {
        "schema": 1,
        "experiment": design,
        "analysis": {
            "id": run.pk,
            "as_of": run.as_of.isoformat(),
            "source": run.source,
            "trigger": run.trigger,
            "created_at": run.created_at.isoformat(),
            "query_ms": run.query_ms,
            "analysis_ms": run.analysis_ms,
        },
        # The outcome in the current schema, whatever schema the run was stored with.
        "result": outcome.to_dict() if outcome is not None else {},
        "timeline": experiment_timeline(experiment=experiment, until=run.as_of),
        "parity": parity,
        "latency": latency,
        "unavailable": unavailable,
    }


def _outcome(data: Mapping[str, Any]) -> AnalysisOutcome:
    """The snapshot's analysis through the one adapter (frozen snapshots may hold schema 1)."""
    outcome = analysis_outcome(data.get("result"))
    return outcome if outcome is not None else AnalysisOutcome(computed_at="")


def _figures(
    data: Mapping[str, Any], outcome: AnalysisOutcome, *, inline_plotlyjs: bool
) -> tuple[dict[str, str], dict[str, str]]:
    """(figure HTML by name, "unavailable: why" by name for figures that could not be drawn)."""
    builders: dict[str, Callable[[], Any]] = {
        "forest": lambda: charts.forest_plot(outcome),
        "timeline": lambda: charts.cumulative_lift(data.get("timeline") or []),
        "srm": lambda: charts.srm_chart(outcome),
        "parity": lambda: charts.parity_chart(data.get("parity") or []),
        "latency": lambda: charts.latency_chart(data.get("latency") or [], data.get("parity") or []),
    }
    out: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    first = True
    for name, build in builders.items():
        try:
            fig = build()
            if fig is None:
                continue
            # The standalone file inlines plotly.js once, with the first figure (include_plotlyjs=True).
            out[name] = charts.figure_html(
                fig,
                div_id=f"readout-{name}",
                include_plotlyjs=inline_plotlyjs and first,
                data_block=not inline_plotlyjs,  # a site page: app.js draws it (CSP: no inline script)
            )
        except Exception as exc:  # one broken chart must not take the whole readout down
            log.exception("readout chart %s could not be drawn", name)
            unavailable[name] = f"unavailable: {type(exc).__name__}: {exc}"
            continue
        first = False
    return out, unavailable


def render_html(
    data: Mapping[str, Any], *, standalone: bool, plotly_src: str | None = None, request: Any = None
) -> str:
    """The report. ``standalone``: one self-contained file (plotly.js inline, no external URL)."""
    outcome = _outcome(data)
    figures, broken = _figures(data, outcome, inline_plotlyjs=standalone or plotly_src is None)
    context = {
        "data": data,
        "design": data["experiment"],
        "result": outcome,
        "decision": outcome.recommendation,
        "rows": list(outcome.metrics),
        "pooled_rows": [m for m in outcome.metrics if m.population == POOLED],
        "populations": outcome.populations(),
        "figures": figures,
        "unavailable": {**(data.get("unavailable") or {}), **broken},
        "plotly_src": None if standalone else plotly_src,
        "standalone": standalone,
        "generated": data["analysis"]["created_at"],
    }
    template = "experiments/readout_standalone.html" if standalone else "experiments/readout_page.html"
    return render_to_string(template, context, request=request)


def csv_row(m: MetricOutcome) -> dict[str, Any]:
    """One metric × population with every number the table shows."""
    ci = m.ci_abs or (None, None)
    rel_ci = m.ci_rel or (None, None)
    return {
        "metric": m.metric,
        "name": m.name,
        "role": m.role,
        "kind": m.kind,
        "direction": m.direction,
        "population": m.population,
        "verdict": str(m.verdict),
        "n_control": m.n_control,
        "n_treatment": m.n_treatment,
        "control_mean": m.control_mean,
        "treatment_mean": m.treatment_mean,
        "diff": m.estimate_abs,
        "ci_low": ci[0],
        "ci_high": ci[1],
        "rel_lift": m.estimate_rel,
        "rel_lift_ci_low": rel_ci[0],
        "rel_lift_ci_high": rel_ci[1],
        "p_value": m.p_value,
        "p_adjusted": m.p_adjusted,
        "margin_kind": m.margin_kind,
        "margin_abs": m.margin_abs,
        "margin_rel": m.margin_rel,
        "tost_p": m.tost_p_value,
        "equivalent": m.equivalent,
        "ni_p": m.ni_p_value,
        "noninferior": m.noninferior,
        "sequential_p": m.sequential_p_value,
        "variance_reduction": m.variance_reduction,
        "method": m.method,
        "reason": m.reason,
        "skewness_control": (m.skewness or {}).get("control"),
        "skewness_treatment": (m.skewness or {}).get("treatment"),
        "skew_rule_holds": m.skew_rule.holds if m.skew_rule is not None else None,
        "capped_at": m.capping.cap if m.capping is not None else None,
    }


def render_csv(data: Mapping[str, Any]) -> str:
    """One row per metric × population with every number the table shows."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for m in _outcome(data).metrics:
        writer.writerow(csv_row(m))
    return buffer.getvalue()


def render_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)
