"""What an analysis is asked: the pre-registered design, the configured splits, and the inputs."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from experiments import stats
from experiments.aggregation import AggregateMetric, StableRange, stable_ranges

POOLED = "pooled"
# A pre-period covariate mean that differs between arms at p below this is flagged: randomisation
# makes arms exchangeable before the experiment, so a difference means broken assignment or data.
PRE_PERIOD_IMBALANCE_P = 0.001
# Share of units seen in both arms above which the comparison is diluted enough to hold.
CROSSOVER_LIMIT = 0.01
# Beyond this many more days, "extend" becomes "hold": the experiment cannot settle the question.
MAX_EXTEND_DAYS = 90


@dataclass(frozen=True, slots=True)
class MetricDesign:
    key: str
    name: str
    role: str  # primary | secondary | guardrail
    kind: str  # mean | proportion | ratio | quantile
    direction: str  # higher | lower
    margin_kind: str = "relative"
    margin: float | None = None
    cuped: bool = False
    numerator: str = ""
    denominator: str = ""
    quantile: float | None = None
    # Pre-registered capping (mean metrics): winsorise at this quantile of the control arm
    # ("control") or of the pre-period ("pre"), computed in SQL (aggregation.cap_ctes).
    cap_quantile: float | None = None
    cap_source: str = "control"

    @property
    def relative(self) -> bool:
        return self.margin_kind == "relative"

    def aggregate(self) -> AggregateMetric | None:
        if self.kind == "quantile":
            return None
        return AggregateMetric(
            self.key,
            self.kind,
            self.numerator,
            self.denominator,
            self.cuped,
            self.cap_quantile,
            self.cap_source,
        )


@dataclass(frozen=True, slots=True)
class AllocationSplit:
    """The configured split of one allocation version: treatment share among non-holdout units."""

    version: int
    treatment_bp: int
    holdout_bp: int

    @property
    def treatment_share(self) -> float:
        eligible = 10000 - self.holdout_bp
        return self.treatment_bp / eligible if eligible > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Design:
    alpha: float
    power: float
    sequential: bool
    metrics: tuple[MetricDesign, ...]
    populations: Mapping[str, float]  # population → configured share (weights of the pooled estimate)
    splits: Mapping[int, AllocationSplit]
    has_pre_period: bool = True

    def stable(self) -> dict[int, StableRange]:
        """Per allocation version, the buckets whose arm never changed (see "Crossover")."""
        return stable_ranges((s.version, s.holdout_bp, s.treatment_bp) for s in self.splits.values())

    def aggregate_metrics(self) -> tuple[AggregateMetric, ...]:
        out = []
        for m in self.metrics:
            agg = m.aggregate()
            if agg is not None:
                out.append(
                    AggregateMetric(
                        agg.key,
                        agg.kind,
                        agg.numerator,
                        agg.denominator,
                        agg.cuped and self.has_pre_period,
                        agg.cap_quantile,
                        agg.cap_source if self.has_pre_period else "control",
                    )
                )
        return tuple(out)


@dataclass
class Inputs:
    """Everything measured: summed query rows, quantile samples, crossover sample, history."""

    rows: Sequence[Mapping[str, Any]]
    as_of: dt.date
    quantile_samples: Mapping[str, Mapping[tuple[str, str], np.ndarray]] = field(default_factory=dict)
    crossover: Mapping[str, Any] | None = None  # {"checked": k, "crossed": c, "source": …}
    # The previous run's always-valid tests, chained into this look (see verdicts.metric_outcome).
    previous_sequential: Mapping[tuple[str, str], stats.SequentialResult] = field(default_factory=dict)


def finite(value: float | None) -> float | None:
    """The value as a float, or None when it is missing or not finite (JSON has no inf/NaN)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return float(value)
