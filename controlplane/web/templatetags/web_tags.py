"""Small template helpers: roles, percentages, badges, JSON and the plotly.js script tag."""

from __future__ import annotations

import json
from typing import Any

from django import template
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from controlplane.core.permissions import has_role as _has_role
from controlplane.core.permissions import user_roles

register = template.Library()


@register.filter
def has_role(user: Any, role: str) -> bool:
    return _has_role(user, role)


@register.filter
def roles_of(user: Any) -> str:
    return ", ".join(sorted(user_roles(user))) or "no role"


@register.filter
def pct(fraction: Any, digits: int = 1) -> str:
    """0.0512 → "5.1%"; None → "–"."""
    if fraction is None or fraction == "":
        return "–"
    return f"{float(fraction) * 100:.{int(digits)}f}%"


@register.filter
def bp_pct(bp: Any) -> str:
    """Basis points → percent: 500 → "5%", 125 → "1.25%"."""
    if bp is None or bp == "":
        return "–"
    value = int(bp) / 100
    return f"{value:g}%"


@register.filter
def num(value: Any, digits: int = 1) -> str:
    if value is None or value == "":
        return "–"
    try:
        return f"{float(value):,.{int(digits)}f}"
    except (TypeError, ValueError):
        return str(value)


@register.filter
def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


@register.filter
def get_item(mapping: Any, key: Any) -> Any:
    try:
        return mapping[key]
    except (KeyError, IndexError, TypeError):
        return None


@register.simple_tag
def badge(status: Any, label: Any = None) -> SafeString:
    """A status pill; the class carries the tone (CSS), the text carries the meaning (a11y)."""
    text = str(label if label is not None else status).replace("_", " ")
    return format_html('<span class="badge badge-{}">{}</span>', str(status), text)


@register.simple_tag
def plotly_script() -> SafeString:
    """plotly.js from the plotly wheel; blocking on purpose: the figures' inline scripts call Plotly."""
    from controlplane.web.assets import plotly_version

    return format_html('<script src="{}"></script>', reverse("web-plotly-js", args=[plotly_version()]))


@register.filter
def duration(seconds: Any) -> str:
    """Seconds → "2 d 3 h", "4 h 5 min", "12 min", "40 s"."""
    if seconds is None or seconds == "":
        return "–"
    s = int(float(seconds))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


@register.filter
def hours(seconds: Any) -> str:
    """Seconds → hours or days, for step durations."""
    return duration(seconds)


@register.filter
def as_datetime(value: Any) -> Any:
    """A datetime, or an ISO-8601 string from a JSON snapshot, as a datetime (else unchanged)."""
    import datetime as dt

    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    return value
