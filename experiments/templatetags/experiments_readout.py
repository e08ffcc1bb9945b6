"""Number formatting for readouts (templates stay free of arithmetic)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from django import template

register = template.Library()

_VERDICTS = {
    "ship": "ship (launch-neutral)",
    "hold": "hold",
    "rollback": "roll back",
    "extend": "extend the experiment",
}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@register.filter
def pct(value: Any) -> str:
    return f"{value * 100:+.2f}%" if _finite(value) else "–"


@register.filter
def pct_ci(value: Sequence[Any] | None) -> str:
    if not value or len(value) != 2 or not all(_finite(v) for v in value):
        return "–"
    return f"[{value[0] * 100:+.2f}%, {value[1] * 100:+.2f}%]"


@register.filter
def num(value: Any) -> str:
    if not _finite(value):
        return "–"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 1:
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return f"{value:.4g}"


@register.filter
def pval(value: Any) -> str:
    if not _finite(value):
        return "–"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


@register.filter
def population(value: Any) -> str:
    return {
        "pooled": "pooled",
        "content_first": "content-first users",
        "interest_first": "interest-first users",
    }.get(str(value), str(value))


@register.filter
def verdict_label(value: Any) -> str:
    return _VERDICTS.get(str(value), str(value))


@register.filter
def margin_text(metric: Mapping[str, Any]) -> str:
    margin = metric.get("margin")
    if margin is None:
        return "–"
    kind = "equivalence ±" if metric.get("role") != "guardrail" else "non-inferiority "
    if metric.get("margin_kind") == "relative":
        return f"{kind}{margin * 100:g}%"
    return f"{kind}{margin:g} (absolute)"


@register.filter
def get_item(mapping: Any, key: Any) -> Any:
    return mapping.get(key) if isinstance(mapping, Mapping) else None
