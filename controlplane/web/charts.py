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
    html = fig.to_html(include_plotlyjs=False, full_html=False, div_id=div_id, config=PLOT_CONFIG)
    # Safe: plotly escapes <, > and / inside the figure JSON, and user text is escaped below.
    return mark_safe(html)


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
    fig.update_yaxes(title="%", rangemode="tozero", range=[0, 105])
    fig.update_xaxes(title=None)
    return render(fig, div_id=div_id)
