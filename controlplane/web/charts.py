"""Plotly figures for the pages, built in Python and rendered as ``<div>`` fragments.

plotly is imported inside the functions (STYLE.md: heavy imports stay out of module level so the
web process starts fast). The page loads plotly.js once from ``web-plotly-js`` (served from the
plotly wheel); each fragment is ``to_html(include_plotlyjs=False, full_html=False)``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

PLOT_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["select2d", "lasso2d"]}
COLORS = {
    "treatment": "#2f6fb3",
    "shadow": "#8e6bbf",
    "holdout": "#7a7a7a",
    "live": "#2f6fb3",
    "good": "#2e7d32",
    "warn": "#b26a00",
    "bad": "#c62828",
    "neutral": "#555",
}


@dataclass(frozen=True)
class ShareSample:
    """The allocation in force from ``at`` on (one allocation version)."""

    at: dt.datetime
    treatment_pct: float
    shadow_pct: float
    holdout_pct: float
    label: str


@dataclass(frozen=True)
class TimelineEvent:
    at: dt.datetime
    label: str
    detail: str = ""
    tone: str = "neutral"  # good | warn | bad | neutral: marker colour


def render(fig: Any, *, div_id: str, height: int = 320) -> SafeString:
    """A figure as an HTML fragment that expects plotly.js already on the page."""
    fig.update_layout(
        height=height,
        margin={"l": 56, "r": 16, "t": 64 if fig.layout.title.text else 36, "b": 40},
        template="plotly_white",
        font={"family": "system-ui, sans-serif", "size": 12},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
    )
    return figure_block(fig, div_id=div_id, height=height)


def figure_block(fig: Any, *, div_id: str, height: int) -> SafeString:
    """The figure as data, not code: an empty chart div and a ``<script type="application/json">``
    block that web/app.js draws with ``Plotly.newPlot`` (on load and after every htmx swap).

    No inline script, so the Content-Security-Policy keeps ``script-src 'self'`` (issue 17); the
    browser never executes a JSON block. ``<``, ``>`` and ``&`` are written as JSON escapes, so no
    text inside a figure can close the block.
    """
    import json

    import plotly.io as pio

    payload = '{"figure":' + pio.to_json(fig, validate=False) + ',"config":' + json.dumps(PLOT_CONFIG) + "}"
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    safe_id = escape(div_id)
    return mark_safe(
        f'<div class="plotly-figure"><div id="{safe_id}" class="plotly-graph-div" '
        f'style="height:{int(height)}px; width:100%;"></div>'
        f'<script type="application/json" data-plotly-figure="{safe_id}">{payload}</script></div>'
    )


def share_timeline(
    *,
    samples: Sequence[ShareSample],
    events: Iterable[TimelineEvent] = (),
    now: dt.datetime,
    div_id: str,
    title: str = "",
) -> SafeString:
    """Step lines of treatment/shadow/holdout shares per allocation version, events as markers.

    Shares are piecewise constant between versions (an allocation stays in force until the next
    one), so the lines use ``shape="hv"`` and the last version is carried forward to ``now``.
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    if samples:
        xs = [s.at for s in samples] + [max(now, samples[-1].at)]
        for key, name in (
            ("treatment_pct", "Unified (treatment) % of units"),
            ("shadow_pct", "Shadow % of requests"),
            ("holdout_pct", "Holdout % of units"),
        ):
            ys = [getattr(s, key) for s in samples]
            if not any(ys) and key != "treatment_pct":
                continue
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=[*ys, ys[-1]],
                    name=name,
                    mode="lines",
                    line={"shape": "hv", "width": 2.5, "color": COLORS[key.split("_")[0]]},
                    # plotly renders a subset of HTML in hover text; labels and reasons are user text.
                    text=[escape(s.label) for s in samples] + ["now"],
                    hovertemplate="%{y:.2f}%<br>%{text}<br>%{x|%Y-%m-%d %H:%M} UTC<extra></extra>",
                )
            )
    events = list(events)
    if events:

        def treatment_at(moment: dt.datetime) -> float:
            value = 0.0
            for s in samples:
                if s.at <= moment:
                    value = s.treatment_pct
            return value

        for tone in ("good", "warn", "bad", "neutral"):
            group = [e for e in events if e.tone == tone]
            if not group:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[e.at for e in group],
                    y=[treatment_at(e.at) for e in group],
                    mode="markers",
                    name={
                        "good": "Approvals/advances",
                        "warn": "Holds/pauses",
                        "bad": "Rollbacks/aborts",
                    }.get(tone, "Events"),
                    marker={
                        "size": 11,
                        "color": COLORS[tone],
                        "symbol": {"bad": "x", "warn": "diamond", "good": "triangle-up"}.get(tone, "circle"),
                        "line": {"width": 1, "color": "#fff"},
                    },
                    text=[escape(e.label) + (f"<br>{escape(e.detail)}" if e.detail else "") for e in group],
                    hovertemplate="%{text}<br>%{x|%Y-%m-%d %H:%M} UTC<extra></extra>",
                )
            )
    if title:  # pages usually give the chart an HTML heading instead (readable, navigable)
        fig.update_layout(title={"text": escape(title), "x": 0, "font": {"size": 14}})
    # Early steps are 1–5 %: a fixed 0–100 axis would flatten them, so scale to the largest share.
    peak = max([0.0, *(max(s.treatment_pct, s.shadow_pct, s.holdout_pct) for s in samples)])
    fig.update_yaxes(title="%", range=[0, min(105.0, max(10.0, peak * 1.2))])
    fig.update_xaxes(title=None)
    return render(fig, div_id=div_id)


def _step_labels(plan: dict[str, Any]) -> list[str]:
    return [f"{row['index']}: {row['name']}" for row in plan["steps"]] + ["promoted"]


def capacity_replicas(*, plan: dict[str, Any], stacks: Sequence[str], div_id: str) -> SafeString:
    """Stacked bars: replicas each stack needs at each ramp step (and after promotion)."""
    import plotly.graph_objects as go

    x = ["baseline", *_step_labels(plan)]
    palette = ["#7a7a7a", "#b26a00", "#2f6fb3", "#8e6bbf", "#2e7d32", "#c62828"]
    fig = go.Figure()
    for i, label in enumerate(stacks):

        def replicas(stack_rows: Sequence[dict[str, Any]], label: str = label) -> int:
            row = next((s for s in stack_rows if s["stack"] == label), None)
            return int(row["replicas"] or 0) if row else 0

        ys = [replicas(plan["baseline"]["stacks"])]
        ys += [replicas(row["plan"]["stacks"]) for row in plan["steps"]]
        ys += [replicas(plan["promoted"]["plan"]["stacks"])]
        fig.add_trace(
            go.Bar(
                x=x,
                y=ys,
                name=escape(label),
                marker_color=palette[i % len(palette)],
                hovertemplate="%{x}<br>" + escape(label) + ": %{y} replicas<extra></extra>",
            )
        )
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title="replicas", rangemode="tozero")
    return render(fig, div_id=div_id)


def capacity_savings(*, plan: dict[str, Any], div_id: str) -> SafeString:
    """Cost per hour of the surface's fleet along the plan, against the legacy baseline."""
    import plotly.graph_objects as go

    x = _step_labels(plan)
    savings = [row["savings"] for row in plan["steps"]] + [plan["promoted"]["savings"]]
    baseline = savings[0]["baseline_cost_per_hour"] if savings else 0.0
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[s["cost_per_hour"] for s in savings],
            name="Fleet cost $/h",
            mode="lines+markers",
            line={"color": COLORS["treatment"], "width": 2.5},
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[baseline] * len(x),
            name="Legacy baseline $/h",
            mode="lines",
            line={"color": COLORS["holdout"], "dash": "dash"},
        )
    )
    fig.add_trace(
        go.Bar(
            x=x,
            y=[s["cost_saved_per_hour"] for s in savings],
            name="Saved $/h (negative = extra)",
            marker_color=[
                COLORS["good"] if s["cost_saved_per_hour"] >= 0 else COLORS["bad"] for s in savings
            ],
            opacity=0.55,
        )
    )
    fig.update_yaxes(title="$ per hour")
    return render(fig, div_id=div_id)


def parity_over_time(*, rows: Sequence[dict[str, Any]], div_id: str) -> SafeString:
    """Daily overlap@10, overlap@50, RBO and Kendall τ of shadow against live (one line per stack)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    metrics = (
        ("overlap_10", "overlap@10", "solid"),
        ("overlap_50", "overlap@50", "dot"),
        ("rbo", "RBO", "dash"),
        ("kendall_tau", "Kendall τ", "dashdot"),
    )
    palette = ["#2f6fb3", "#2e7d32", "#8e6bbf", "#b26a00"]
    stacks = sorted({r["stack"] for r in rows})
    for si, stack in enumerate(stacks):
        mine = [r for r in rows if r["stack"] == stack]
        for mi, (key, name, dash) in enumerate(metrics):
            fig.add_trace(
                go.Scatter(
                    x=[r["day"] for r in mine],
                    y=[r.get(key) for r in mine],
                    name=f"{name}" + (f" · {escape(stack)}" if len(stacks) > 1 else ""),
                    mode="lines+markers",
                    line={
                        "dash": dash if len(stacks) > 1 else "solid",
                        "color": palette[(mi if len(stacks) == 1 else si) % 4],
                    },
                    customdata=[r.get("n") for r in mine],
                    hovertemplate=name + " %{y:.3f}<br>%{x|%Y-%m-%d}, n=%{customdata}<extra></extra>",
                )
            )
    fig.update_yaxes(title="agreement", range=[-0.05, 1.05])
    fig.update_xaxes(type="date")
    return render(fig, div_id=div_id)


def latency_daily(*, rows: Sequence[dict[str, Any]], div_id: str, slo_ms: float | None = None) -> SafeString:
    """Daily p50/p99 serving latency, shadow against live."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for key, name, color, dash in (
        ("live_p50_ms", "live p50", COLORS["holdout"], "dot"),
        ("live_p99_ms", "live p99", COLORS["holdout"], "solid"),
        ("shadow_p50_ms", "shadow p50", COLORS["shadow"], "dot"),
        ("shadow_p99_ms", "shadow p99", COLORS["shadow"], "solid"),
    ):
        fig.add_trace(
            go.Scatter(
                x=[r["day"] for r in rows],
                y=[r.get(key) for r in rows],
                name=name,
                mode="lines+markers",
                line={"color": color, "dash": dash},
                hovertemplate=name + " %{y:.1f} ms<br>%{x|%Y-%m-%d}<extra></extra>",
            )
        )
    if slo_ms:
        fig.add_hline(
            y=slo_ms, line_dash="dash", line_color=COLORS["bad"], annotation_text=f"SLO {slo_ms:g} ms"
        )
    fig.update_yaxes(title="ms", rangemode="tozero")
    fig.update_xaxes(type="date")
    return render(fig, div_id=div_id)


def latency_distribution(
    *, live_ms: Sequence[float], shadow_ms: Sequence[float], div_id: str, slo_ms: float | None = None
) -> SafeString:
    """Overlaid histograms of per-request latency of the live and the shadow stack (same requests)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for values, name, color in (
        (live_ms, "live", COLORS["holdout"]),
        (shadow_ms, "shadow", COLORS["shadow"]),
    ):
        fig.add_trace(
            go.Histogram(
                x=list(values),
                name=f"{name} (n={len(values)})",
                marker_color=color,
                opacity=0.6,
                nbinsx=60,
                histnorm="probability",
                hovertemplate=name + " %{x} ms: %{y:.1%}<extra></extra>",
            )
        )
    if slo_ms:
        fig.add_vline(
            x=slo_ms, line_dash="dash", line_color=COLORS["bad"], annotation_text=f"SLO {slo_ms:g} ms"
        )
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title="ms per request")
    fig.update_yaxes(title="share of requests", tickformat=".0%")
    return render(fig, div_id=div_id)
