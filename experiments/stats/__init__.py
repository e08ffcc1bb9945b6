"""Pure numpy/scipy statistics engine for online controlled experiments.

No Django, DRF, Celery, torch or plotly is imported here (guarded by import-linter and a
test).  Conventions follow ``DESIGN.md`` ("Statistical conventions"): effect =
treatment − control, Welch t by default, z for large samples and delta-method ratios,
CUPED with θ pooled over both arms, TOST for launch-neutrality, one-sided
non-inferiority for guardrails, χ² SRM against the configured split, and undefined cases
reported as ``computable=False`` with a reason.

Typical use, from SQL aggregates or arrays::

    c = MeanStatistic.from_row(row_c); t = MeanStatistic.from_values(y_t)
    res = welch(c, t)                       # ComparisonResult
    eq = tost(res, margin=0.01, relative=True)
    ni = noninferiority(res, margin=0.02, direction="lower", relative=True)
"""

from experiments.stats.comparisons import cuped, cuped_ratio, ratio_delta, welch, ztest
from experiments.stats.equivalence import noninferiority, superiority, tost
from experiments.stats.multiple import adjust_pvalues
from experiments.stats.power import (
    SampleSize,
    days_needed,
    mde,
    power,
    sample_size,
    tost_power,
    tost_sample_size,
)
from experiments.stats.quantiles import quantile_diff, quantile_interval
from experiments.stats.results import (
    AdjustedPValues,
    ComparisonResult,
    EquivalenceResult,
    NonInferiorityResult,
    SrmResult,
)
from experiments.stats.sequential import SequentialPath, SequentialResult, msprt, msprt_path
from experiments.stats.skew import KOHAVI_FACTOR, SkewRule, skew_rule, skew_rule_arms
from experiments.stats.srm import SRM_THRESHOLD, srm
from experiments.stats.statistics import (
    CovariateMeanStatistic,
    CovariateRatioStatistic,
    MeanStatistic,
    RatioStatistic,
)
from experiments.stats.stratified import StratifiedResult, stratified

__all__ = [
    "KOHAVI_FACTOR",
    "SRM_THRESHOLD",
    "AdjustedPValues",
    "ComparisonResult",
    "CovariateMeanStatistic",
    "CovariateRatioStatistic",
    "EquivalenceResult",
    "MeanStatistic",
    "NonInferiorityResult",
    "RatioStatistic",
    "SampleSize",
    "SequentialPath",
    "SequentialResult",
    "SkewRule",
    "SrmResult",
    "StratifiedResult",
    "adjust_pvalues",
    "cuped",
    "cuped_ratio",
    "days_needed",
    "mde",
    "msprt",
    "msprt_path",
    "noninferiority",
    "power",
    "quantile_diff",
    "quantile_interval",
    "ratio_delta",
    "sample_size",
    "skew_rule",
    "skew_rule_arms",
    "srm",
    "stratified",
    "superiority",
    "tost",
    "tost_power",
    "tost_sample_size",
    "welch",
    "ztest",
]
