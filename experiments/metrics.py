"""The standard metric catalogue and the metric set every unification experiment pre-registers.

Base metrics are ingested per unit per day (MetricObservation). Derived metrics are built from
them in the analysis query: a ratio's numerator/denominator is a base key or several keys joined
by ``+`` (summed per unit, e.g. ``hides+reports``); a quantile metric reads latency samples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

# key, name, kind, direction, numerator, denominator, quantile, description
BASE_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("impressions", "Impressions per user", "higher", "Feed items shown to the unit"),
    ("sessions", "Sessions per user", "higher", "Feed sessions started"),
    ("time_spent", "Time spent per user (s)", "higher", "Dwell seconds on feed items"),
    ("likes", "Likes per user", "higher", "Likes given"),
    ("comments", "Comments per user", "higher", "Comments written"),
    ("shares", "Shares per user", "higher", "Shares"),
    ("hides", "Hides per user", "lower", "Items hidden"),
    ("reports", "Reports per user", "lower", "Items reported"),
    ("integrity_impressions", "Integrity-violating impressions", "lower", "Impressions of violating items"),
    ("errors", "Errors per user", "lower", "Failed feed loads"),
    ("requests", "Requests per user", "higher", "Feed load requests"),
    (
        "meaningful_interactions",
        "Meaningful interactions per user",
        "higher",
        "Comments + shares (the program's north-star interaction count)",
    ),
    ("newcomer_impressions", "Newcomer-creator impressions", "higher", "Impressions of new creators' posts"),
)

RATIO_METRICS: tuple[tuple[str, str, str, str, str, str], ...] = (
    (
        "engagement_rate",
        "Engagement rate",
        "higher",
        "likes+comments+shares",
        "impressions",
        "(likes + comments + shares) / impressions, delta method over users",
    ),
    (
        "hide_report_rate",
        "Hide + report rate",
        "lower",
        "hides+reports",
        "impressions",
        "(hides + reports) / impressions",
    ),
    (
        "integrity_rate",
        "Integrity-violating impression rate",
        "lower",
        "integrity_impressions",
        "impressions",
        "Violating impressions / impressions",
    ),
    ("error_rate", "Error rate", "lower", "errors", "requests", "Failed feed loads / requests"),
    (
        "newcomer_exposure",
        "Newcomer-creator exposure",
        "higher",
        "newcomer_impressions",
        "impressions",
        "Share of impressions from new creators",
    ),
)

LATENCY_P99 = "latency_p99"


@dataclass(frozen=True, slots=True)
class StandardMetric:
    """One entry of the standard pre-registered set."""

    key: str
    role: str
    margin_kind: str | None
    margin: float | None
    cuped: bool


# The standard unification experiment (CONTRACTS.md): primaries are tested for equivalence
# (launch-neutral within ±2 % relative), guardrails for non-inferiority.  Latency's margin is
# absolute milliseconds on p99 (the unified stack is allowed to be a little slower, not more).
STANDARD_SET: tuple[StandardMetric, ...] = (
    StandardMetric("time_spent", "primary", "relative", 0.02, True),
    StandardMetric("meaningful_interactions", "primary", "relative", 0.02, True),
    StandardMetric("likes", "secondary", "relative", 0.02, True),
    StandardMetric("sessions", "secondary", "relative", 0.02, True),
    StandardMetric("engagement_rate", "secondary", "relative", 0.02, False),
    StandardMetric("hide_report_rate", "guardrail", "relative", 0.03, False),
    StandardMetric("integrity_rate", "guardrail", "relative", 0.05, False),
    StandardMetric(LATENCY_P99, "guardrail", "absolute", 25.0, False),
    StandardMetric("error_rate", "guardrail", "relative", 0.10, False),
)


def metric_components(expression: str) -> tuple[str, ...]:
    """Base keys of a numerator/denominator expression (``"hides+reports"`` → hides, reports)."""
    keys = tuple(part.strip() for part in expression.split("+") if part.strip())
    for key in keys:
        if not KEY_RE.match(key):
            raise ValueError(f"{key!r} is not a metric key (lowercase letters, digits, - and _)")
    return keys
