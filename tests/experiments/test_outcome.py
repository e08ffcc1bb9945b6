"""The analysis outcome contract: serialisation round trip, and one adapter for every stored schema.

Pure (no database): the engine runs on hand-built sufficient statistics.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from experiments import analysis
from experiments.outcome import (
    SCHEMA_VERSION,
    AnalysisOutcome,
    MetricOutcome,
    Verdict,
    analysis_outcome,
)

AS_OF = dt.date(2026, 3, 5)


def _rows(effects: dict[str, float], n: int = 4000, seed: int = 3) -> list[dict[str, Any]]:
    """One day of summed per-unit statistics per arm × population."""
    rng = np.random.default_rng(seed)
    rows = []
    for pop in ("content_first", "interest_first"):
        for arm in ("control", "treatment"):
            row: dict[str, Any] = {"arm": arm, "population": pop, "day": AS_OF.isoformat(), "n": n}
            row["allocation_version"] = 1
            for key, mean in (("time_spent", 300.0), ("hides", 0.2)):
                lift = effects.get(key, 1.0) if arm == "treatment" else 1.0
                y = rng.normal(mean * lift, mean * 0.3, n)
                row[f"{key}__sum"] = float(y.sum())
                row[f"{key}__sum_squares"] = float((y**2).sum())
            rows.append(row)
    return rows


def _design(sequential: bool = True) -> analysis.Design:
    return analysis.Design(
        alpha=0.05,
        power=0.8,
        sequential=sequential,
        metrics=(
            analysis.MetricDesign("time_spent", "Time spent", "primary", "mean", "higher", margin=0.02),
            analysis.MetricDesign("hides", "Hides", "guardrail", "mean", "lower", margin=0.05),
            analysis.MetricDesign(
                "latency_p99", "p99", "guardrail", "quantile", "lower", "absolute", 10.0, quantile=0.99
            ),
        ),
        populations={"content_first": 0.6, "interest_first": 0.4},
        splits={1: analysis.AllocationSplit(1, 5000, 0)},
        has_pre_period=False,
    )


def _inputs(effects: dict[str, float], extra_ms: float = 0.0) -> analysis.Inputs:
    rng = np.random.default_rng(11)
    samples = {
        (arm, pop): rng.gamma(4.0, 12.0 + (extra_ms if arm == "treatment" else 0.0) / 4, 3000)
        for arm in ("control", "treatment")
        for pop in ("content_first", "interest_first")
    }
    return analysis.Inputs(rows=_rows(effects), as_of=AS_OF, quantile_samples={"latency_p99": samples})


@pytest.fixture(params=["neutral", "regression"])
def outcome(request: pytest.FixtureRequest) -> AnalysisOutcome:
    effects = {"hides": 1.3} if request.param == "regression" else {}
    return analysis.analyze(_design(), _inputs(effects), computed_at="2026-03-05T12:00:00+00:00")


def test_round_trip_through_json_is_lossless(outcome: AnalysisOutcome) -> None:
    stored = json.loads(json.dumps(outcome.to_dict()))
    assert stored["schema_version"] == SCHEMA_VERSION
    assert analysis_outcome(stored) == outcome
    assert analysis_outcome(outcome) is outcome


def test_margins_have_one_meaning_each(outcome: AnalysisOutcome) -> None:
    ts = outcome.metric("time_spent")
    lat = outcome.metric("latency_p99")
    assert ts is not None and lat is not None and ts.control_mean and lat.control_mean
    # Relative configured: margin_rel is the fraction, margin_abs the δ the tests used.
    assert (ts.margin_kind, ts.margin_rel) == ("relative", 0.02)
    assert ts.margin_abs == pytest.approx(0.02 * abs(ts.control_mean))
    assert ts.equivalence is not None and ts.margin_abs == pytest.approx(ts.equivalence.margin)
    # Absolute configured: margin_abs is the value, margin_rel its share of the control mean.
    assert (lat.margin_kind, lat.margin_abs) == ("absolute", 10.0)
    assert lat.margin_rel == pytest.approx(10.0 / abs(lat.control_mean))
    assert "margin" not in outcome.to_dict()["metrics"][0]


def test_regression_is_decided_once_by_the_engine() -> None:
    result = analysis.analyze(_design(), _inputs({"hides": 1.3}), computed_at="now")
    hides = result.metric("hides")
    assert hides is not None and hides.verdict == Verdict.INFERIOR
    assert hides.harm_beyond_margin is True and hides.sequential_worse is True
    assert result.recommendation.verdict == "rollback" and "hides" in result.recommendation.blocking


def _as_schema_1(stored: dict[str, Any], design: analysis.Design) -> dict[str, Any]:
    """What the engine stored before the outcome had a version (keys as of the previous release)."""
    configured = {m.key: m.margin for m in design.metrics}
    old = {k: v for k, v in stored.items() if k != "schema_version"}
    old["metrics"] = []
    for m in stored["metrics"]:
        entry = {
            k: v for k, v in m.items() if k not in ("margin_rel", "harm_beyond_margin", "sequential_worse")
        }
        entry["margin"] = configured[m["metric"]]
        old["metrics"].append(entry)
    return old


def test_schema_1_rows_read_the_same_as_schema_2(outcome: AnalysisOutcome) -> None:
    new = outcome.to_dict()
    old = analysis_outcome(_as_schema_1(new, _design()))
    assert old is not None and old.schema_version == 1
    assert old.verdicts() == outcome.verdicts()
    for a, b in zip(old.metrics, outcome.metrics, strict=True):
        assert (a.margin_kind, a.margin_abs, a.harm_beyond_margin, a.sequential_worse) == (
            b.margin_kind,
            b.margin_abs,
            b.harm_beyond_margin,
            b.sequential_worse,
        ), a.subject
        assert a.margin_rel == pytest.approx(b.margin_rel), a.subject
    assert old.recommendation == outcome.recommendation
    assert dataclasses.replace(old, schema_version=SCHEMA_VERSION) == outcome


def test_hand_written_partial_rows_are_tolerated() -> None:
    m = MetricOutcome.from_dict(
        {
            "metric": "hide_report_rate",
            "role": "guardrail",
            "direction": "lower",
            "verdict": "inconclusive",
            "diff": 0.001,
            "rel_lift": 0.05,
            "noninferiority": {"margin": 0.001, "p_value": 0.3},
            "sequential": {"ci": [0.0002, 0.0009], "computable": True},
        }
    )
    assert m.noninferiority is None and m.ni_p_value == 0.3 and m.margin_abs == 0.001
    assert m.sequential is None and m.sequential_ci == (0.0002, 0.0009) and m.sequential_worse is True
    assert m.harm_beyond_margin is None  # no configured margin: the gates treat it as a breach
    assert MetricOutcome.from_dict({"metric": "x", "computable": False}).verdict == Verdict.NOT_COMPUTABLE


def test_a_newer_schema_is_refused_not_misread() -> None:
    with pytest.raises(ValueError, match="newer"):
        analysis_outcome({"schema_version": SCHEMA_VERSION + 1, "metrics": []})
    assert analysis_outcome(None) is None and analysis_outcome({}) is None


def test_outcome_module_imports_without_django() -> None:
    code = "import sys, experiments.outcome, experiments.analysis; assert 'django' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
