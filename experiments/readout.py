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
from collections.abc import Mapping
from typing import Any

from django.template.loader import render_to_string

from controlplane.serving import selectors as serving_logs
from experiments import charts
from experiments.models import AnalysisRun, Experiment
from experiments.selectors import experiment_timeline

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
    "margin",
    "tost_p",
    "equivalent",
    "ni_p",
    "noninferior",
    "sequential_p",
    "variance_reduction",
    "method",
    "reason",
)


def _shadow_parity(experiment: Experiment, since: dt.date) -> list[dict[str, Any]]:
    """Daily shadow parity of the treatment stack on the surface, from serving (when present)."""
    try:
        rows = serving_logs.shadow_parity_daily(
            surface=experiment.surface, stack=experiment.treatment_stack.label, since=since
        )
    except Exception:
        return []
    out = []
    for row in rows:
        item = dict(row) if isinstance(row, Mapping) else {k: getattr(row, k, None) for k in _PARITY_FIELDS}
        item["day"] = str(item.get("day"))
        out.append({k: item.get(k) for k in _PARITY_FIELDS})
    return out


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


def _daily_latency(experiment: Experiment, until: dt.date) -> list[dict[str, Any]]:
    """p50/p99 per day and arm of the requests served under the experiment's salt."""
    import numpy as np

    start = dt.datetime.combine(experiment.window_start, dt.time.min, tzinfo=dt.UTC)
    end = dt.datetime.combine(until + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    grouped: dict[tuple[str, str], list[float]] = {}
    try:
        rows = serving_logs.latency_rows(
            surface_id=experiment.surface_id,
            salt=experiment.salt,
            start=start,
            end=end,
            fields=("arm", "ts", "ms"),
        )
        for arm, ts, ms in rows.iterator(chunk_size=20000):
            grouped.setdefault((ts.date().isoformat(), arm), []).append(ms)
    except Exception:
        return []
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
    return out


def readout_data(*, experiment: Experiment, run: AnalysisRun) -> dict[str, Any]:
    """Everything the report shows, as JSON (the frozen snapshot a decision keeps)."""
    from experiments.services import experiment_design

    design = experiment_design(experiment)
    design["status"] = experiment.status
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
        "result": run.result,
        "timeline": experiment_timeline(experiment=experiment, until=run.as_of),
        "parity": _shadow_parity(experiment, experiment.window_start),
        "latency": _daily_latency(experiment, run.as_of),
    }


def _figures(data: Mapping[str, Any], *, inline_plotlyjs: bool) -> dict[str, str]:
    figures = {
        "forest": charts.forest_plot(data["result"]),
        "timeline": charts.cumulative_lift(data.get("timeline") or []),
        "srm": charts.srm_chart(data["result"]),
        "parity": charts.parity_chart(data.get("parity") or []),
        "latency": charts.latency_chart(data.get("latency") or [], data.get("parity") or []),
    }
    out: dict[str, str] = {}
    first = True
    for name, fig in figures.items():
        if fig is None:
            continue
        # The standalone file inlines plotly.js once, with the first figure (include_plotlyjs=True).
        out[name] = charts.figure_html(
            fig, div_id=f"readout-{name}", include_plotlyjs=inline_plotlyjs and first
        )
        first = False
    return out


def _table_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for m in result.get("metrics", []):
        eq = m.get("equivalence") or {}
        ni = m.get("noninferiority") or {}
        test = ""
        if eq:
            test = f"TOST p={eq['p_value']:.3g}" if eq.get("p_value") is not None else "TOST n/a"
        elif ni:
            test = f"NI p={ni['p_value']:.3g}" if ni.get("p_value") is not None else "NI n/a"
        rows.append({**m, "test": test})
    return rows


def render_html(
    data: Mapping[str, Any], *, standalone: bool, plotly_src: str | None = None, request: Any = None
) -> str:
    """The report. ``standalone``: one self-contained file (plotly.js inline, no external URL)."""
    context = {
        "data": data,
        "design": data["experiment"],
        "result": data["result"],
        "decision": data["result"].get("decision", {}),
        "rows": _table_rows(data["result"]),
        "pooled_rows": [r for r in _table_rows(data["result"]) if r["population"] == "pooled"],
        "populations": [p for p in (data["result"].get("units") or {}).get("by_population", {})],
        "figures": _figures(data, inline_plotlyjs=standalone or plotly_src is None),
        "plotly_src": None if standalone else plotly_src,
        "standalone": standalone,
        "generated": data["analysis"]["created_at"],
    }
    template = "experiments/readout_standalone.html" if standalone else "experiments/readout_page.html"
    return render_to_string(template, context, request=request)


def render_csv(data: Mapping[str, Any]) -> str:
    """One row per metric × population with every number the table shows."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for m in data["result"].get("metrics", []):
        eq = m.get("equivalence") or {}
        ni = m.get("noninferiority") or {}
        seq = m.get("sequential") or {}
        ci = m.get("ci") or [None, None]
        rel_ci = m.get("rel_lift_ci") or [None, None]
        writer.writerow(
            {
                **{k: m.get(k) for k in CSV_COLUMNS if k in m},
                "ci_low": ci[0],
                "ci_high": ci[1],
                "rel_lift_ci_low": rel_ci[0],
                "rel_lift_ci_high": rel_ci[1],
                "tost_p": eq.get("p_value"),
                "equivalent": eq.get("equivalent") if eq else None,
                "ni_p": ni.get("p_value"),
                "noninferior": ni.get("noninferior") if ni else None,
                "sequential_p": seq.get("p_value"),
            }
        )
    return buffer.getvalue()


def render_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)
