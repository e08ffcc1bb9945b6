"""Plotly figures of a readout. plotly is imported inside each function (heavy; web starts fast).

Each function takes the analysis outcome (forest, SRM) or the readout data (plain JSON) and returns a ``plotly.graph_objects.Figure``
or None when there is nothing to draw; ``figure_html`` turns one into an HTML fragment.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from experiments.outcome import AnalysisOutcome, MetricOutcome

POPULATION_COLOURS = {"pooled": "#1f3a5f", "content_first": "#d9822b", "interest_first": "#2b8a3e"}
VERDICT_COLOURS = {
    "better": "#2b8a3e",
    "equivalent": "#2b8a3e",
    "noninferior": "#2b8a3e",
    "worse": "#c92a2a",
    "inferior": "#c92a2a",
    "inconclusive": "#e8a317",
    "not_computable": "#868e96",
}
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def _label(m: MetricOutcome) -> str:
    return f"{m.name} ({m.role})"


def forest_plot(outcome: AnalysisOutcome) -> Any:
    """Relative lift with its CI per metric and population, over each metric's equivalence band."""
    import plotly.graph_objects as go

    metrics = [m for m in outcome.metrics if m.estimate_rel is not None]
    if not metrics:
        return None
    lift = {id(m): float(m.estimate_rel or 0.0) for m in metrics}
    order: list[str] = []
    for m in outcome.metrics:
        label = _label(m)
        if label not in order:
            order.append(label)
    order.reverse()  # first metric on top
    position = {label: i for i, label in enumerate(order)}
    offsets = {"pooled": 0.0, "content_first": 0.22, "interest_first": -0.22}
    # Axis range from the intervals and the margins, so a one-sided band cannot stretch it.
    xs = [0.0]
    for m in metrics:
        xs += list(m.ci_rel or (lift[id(m)], lift[id(m)]))
    for m in outcome.metrics:
        xs += list(m.rel_band or ())
    lo_x, hi_x = min(xs) * 100, max(xs) * 100
    pad = max(0.5, (hi_x - lo_x) * 0.08)
    x_range = [lo_x - pad, hi_x + pad]
    fig = go.Figure()
    # Equivalence / non-inferiority bands as shaded rectangles behind each metric's row.
    seen: set[str] = set()
    for m in outcome.metrics:
        label = _label(m)
        band = m.rel_band
        if label in seen or not band:
            continue
        seen.add(label)
        y = position[label]
        lo, hi = band[0] * 100, band[1] * 100
        if m.role == "guardrail":
            # One-sided: everything on the good side of the margin is acceptable.
            lo, hi = (lo, x_range[1]) if m.direction == "higher" else (x_range[0], hi)
        fig.add_shape(
            type="rect",
            x0=lo,
            x1=hi,
            y0=y - 0.42,
            y1=y + 0.42,
            xref="x",
            yref="y",
            fillcolor="rgba(43,138,62,0.10)",
            line={"width": 0},
            layer="below",
        )
    for population in ("pooled", "content_first", "interest_first"):
        rows = [m for m in metrics if m.population == population]
        if not rows:
            continue
        ci = [m.ci_rel or (lift[id(m)], lift[id(m)]) for m in rows]
        fig.add_trace(
            go.Scatter(
                x=[lift[id(m)] * 100 for m in rows],
                y=[position[_label(m)] + offsets[population] for m in rows],
                mode="markers",
                name=population.replace("_", "-"),
                marker={
                    "size": 11 if population == "pooled" else 8,
                    "symbol": "diamond" if population == "pooled" else "circle",
                    "color": [VERDICT_COLOURS.get(str(m.verdict), "#868e96") for m in rows],
                    "line": {"color": POPULATION_COLOURS[population], "width": 2},
                },
                error_x={
                    "type": "data",
                    "symmetric": False,
                    "array": [(c[1] - lift[id(m)]) * 100 for c, m in zip(ci, rows, strict=True)],
                    "arrayminus": [(lift[id(m)] - c[0]) * 100 for c, m in zip(ci, rows, strict=True)],
                    "color": POPULATION_COLOURS[population],
                },
                text=[
                    html.escape(f"{m.name} · {population}: {m.verdict}, lift {lift[id(m)] * 100:+.2f}%")
                    for m in rows
                ],
                hoverinfo="text",
            )
        )
    fig.add_vline(x=0, line={"color": "#495057", "width": 1, "dash": "dot"})
    fig.update_layout(
        title="Relative lift (treatment vs legacy control) with 95% CI; shaded: equivalence / non-inferiority margin",
        xaxis={"title": "relative lift, %", "zeroline": False, "range": x_range},
        yaxis={
            "tickvals": list(range(len(order))),
            "ticktext": [html.escape(o) for o in order],
            "range": [-0.7, len(order) - 0.3],
        },
        height=max(320, 46 * len(order) + 120),
        margin={"l": 260, "r": 30, "t": 60, "b": 50},
        legend={"orientation": "h", "y": -0.12},
    )
    return fig


def cumulative_lift(timeline: Sequence[Mapping[str, Any]]) -> Any:
    """Pooled relative lift of primaries and guardrails per analysis day, with its CI band."""
    import plotly.graph_objects as go

    points = [
        p for p in timeline if p.get("rel_lift") is not None and p.get("role") in ("primary", "guardrail")
    ]
    if len({p["day"] for p in points}) < 2:
        return None  # a curve needs at least two analysis days
    fig = go.Figure()
    palette = ["#1f3a5f", "#d9822b", "#2b8a3e", "#c92a2a", "#7048e8", "#1098ad", "#e64980", "#5c940d"]
    for i, key in enumerate(dict.fromkeys(p["metric"] for p in points)):
        series = [p for p in points if p["metric"] == key]
        colour = palette[i % len(palette)]
        days = [p["day"] for p in series]
        lifts = [p["rel_lift"] * 100 for p in series]
        lo = [(p["rel_lift_ci"] or [p["rel_lift"]] * 2)[0] * 100 for p in series]
        hi = [(p["rel_lift_ci"] or [p["rel_lift"]] * 2)[1] * 100 for p in series]
        name = html.escape(series[0]["name"])
        fig.add_trace(
            go.Scatter(
                x=days + days[::-1],
                y=hi + lo[::-1],
                fill="toself",
                fillcolor=_rgba(colour, 0.12),
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
                legendgroup=key,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=days, y=lifts, mode="lines+markers", name=name, line={"color": colour}, legendgroup=key
            )
        )
    fig.add_hline(y=0, line={"color": "#495057", "width": 1, "dash": "dot"})
    fig.update_layout(
        title="Cumulative relative lift over time (pooled, 95% CI)",
        xaxis={"title": "as of", "type": "date", "tickformat": "%b %d"},
        yaxis={"title": "relative lift, %"},
        height=380,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
    )
    return fig


def srm_chart(outcome: AnalysisOutcome) -> Any:
    """Observed unit counts against the configured split, per population."""
    import plotly.graph_objects as go

    srm = outcome.srm
    pops = [p for p in srm if p != "pooled"] + (["pooled"] if "pooled" in srm else [])
    if not pops:
        return None
    fig = go.Figure()
    for arm, colour in (("control", "#868e96"), ("treatment", "#1f3a5f")):
        observed = [srm[p].observed[arm] for p in pops]
        expected = []
        for p in pops:
            share = srm[p].expected_share
            total = srm[p].observed_control + srm[p].observed_treatment
            expected.append(None if share is None else total * (share if arm == "treatment" else 1 - share))
        fig.add_trace(go.Bar(x=pops, y=observed, name=f"{arm} observed", marker_color=colour))
        fig.add_trace(
            go.Scatter(
                x=pops,
                y=expected,
                mode="markers",
                name=f"{arm} expected",
                marker={"symbol": "line-ew-open", "size": 28, "color": colour, "line": {"width": 3}},
            )
        )
    fig.update_layout(
        title="Units per arm vs the configured split",
        barmode="group",
        height=320,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
    )
    return fig


def parity_chart(parity: Sequence[Mapping[str, Any]]) -> Any:
    """Shadow ranking parity per day: overlap@10, overlap@50, RBO, Kendall τ."""
    import plotly.graph_objects as go

    if not parity:
        return None
    fig = go.Figure()
    days = [str(p.get("day")) for p in parity]
    for key, name in (
        ("overlap_10", "overlap@10"),
        ("overlap_50", "overlap@50"),
        ("rbo", "RBO"),
        ("kendall_tau", "Kendall τ"),
    ):
        values = [p.get(key) for p in parity]
        if any(v is not None for v in values):
            fig.add_trace(go.Scatter(x=days, y=values, mode="lines+markers", name=name))
    fig.update_layout(
        title="Shadow parity: unified vs live ranking",
        yaxis={"range": [-0.05, 1.05]},
        height=340,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
    )
    return fig


def latency_chart(latency: Sequence[Mapping[str, Any]], parity: Sequence[Mapping[str, Any]]) -> Any:
    """p50/p99 serving latency per day by arm, and live vs shadow p99 from shadow parity."""
    import plotly.graph_objects as go

    if not latency and not any(p.get("shadow_p99_ms") is not None for p in parity):
        return None
    fig = go.Figure()
    for arm, colour in (("control", "#868e96"), ("treatment", "#1f3a5f")):
        rows = [r for r in latency if r["arm"] == arm]
        if rows:
            days = [r["day"] for r in rows]
            fig.add_trace(
                go.Scatter(x=days, y=[r["p99"] for r in rows], name=f"{arm} p99", line={"color": colour})
            )
            fig.add_trace(
                go.Scatter(
                    x=days,
                    y=[r["p50"] for r in rows],
                    name=f"{arm} p50",
                    line={"color": colour, "dash": "dot"},
                )
            )
    shadow = [p for p in parity if p.get("shadow_p99_ms") is not None]
    if shadow:
        days = [str(p["day"]) for p in shadow]
        fig.add_trace(
            go.Scatter(
                x=days, y=[p["shadow_p99_ms"] for p in shadow], name="shadow p99", line={"color": "#d9822b"}
            )
        )
        fig.add_trace(
            go.Scatter(
                x=days,
                y=[p.get("live_p99_ms") for p in shadow],
                name="live p99 (shadowed requests)",
                line={"color": "#d9822b", "dash": "dot"},
            )
        )
    fig.update_layout(
        title="Serving latency per day (ms)",
        yaxis={"title": "ms"},
        height=340,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
    )
    return fig


def figure_html(fig: Any, *, div_id: str, include_plotlyjs: bool = False) -> str:
    """An HTML fragment of one figure; ``include_plotlyjs=True`` inlines plotly.js (no CDN)."""
    fig.update_layout(template="plotly_white", font={"family": "system-ui, sans-serif", "size": 12})
    return str(
        fig.to_html(include_plotlyjs=include_plotlyjs, full_html=False, div_id=div_id, config=PLOT_CONFIG)
    )


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"
