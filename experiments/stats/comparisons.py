"""Two-arm comparisons from sufficient statistics: Welch t, z, CUPED, delta-method ratios.

Conventions (DESIGN.md): effect = treatment − control, α two-sided.  Hot-path code uses
plain ``math`` and the ``scipy.special`` ufuncs in ``_dist`` — no ``scipy.stats`` objects —
so one comparison from ready statistics costs a few microseconds.

Formulas
--------
Welch (Welch 1947, *Biometrika* 34:28–35; Satterthwaite 1946)::

    diff = ȳ_t − ȳ_c,   se² = s²_t/n_t + s²_c/n_c
    df   = se⁴ / ((s²_t/n_t)²/(n_t − 1) + (s²_c/n_c)²/(n_c − 1))
    p    = 2·F_t(−|diff/se|; df),   CI = diff ± t_{1−α/2, df}·se

z (unpooled two-sample z): the same with the standard normal in place of t.

Relative lift L = ȳ_t/ȳ_c − 1, delta method for the ratio of independent means
(Casella & Berger §5.5.4; Deng et al. 2018, KDD, §3)::

    Var(L) ≈ se²_t/ȳ_c² + ȳ_t²·se²_c/ȳ_c⁴

or Fieller's interval (Fieller 1954, *JRSS B* 16:175–185): the set of ρ with
(ȳ_t − ρ·ȳ_c)² ≤ q²·(se²_t + ρ²·se²_c), i.e. the roots of
ρ²(ȳ_c² − q²se²_c) − 2ρ·ȳ_tȳ_c + (ȳ_t² − q²se²_t) = 0.

CUPED (Deng, Xu, Kohavi & Walker 2013, "Improving the Sensitivity of Online Controlled
Experiments by Utilizing Pre-Experiment Data", WSDM, §3.3), θ pooled over both arms::

    θ = cov(x, y) / var(x)          (all units of both arms together)
    ȳ_adj,arm = ȳ_arm − θ(x̄_arm − x̄)
    s²_adj,arm = s²_y − 2θ·s_xy + θ²·s²_x      (within the arm)

then Welch on the adjusted means and variances (θ treated as fixed, which is
asymptotically exact).  Variance reduction = 1 − se²_adj/se²_unadj.

Ratio metrics, delta method (Deng, Knoblich & Lu 2018, "Applying the Delta Method in
Metric Analytics: A Practical Guide with Novel Ideas", KDD, eq. 4)::

    R = Σnum/Σden,   Var(R) = (s²_num − 2R·s_num,den + R²·s²_den) / (n·d̄²)

and a z-test on R_t − R_c.  CUPED on ratios linearises both the metric ratio and the
pre-period ratio, Y = (num − R·den)/d̄ and X = (pre_num − R_x·pre_den)/pre_d̄, and applies
the CUPED formulas to Y with covariate X (Deng et al. 2018 §4.3; Booking.com's
"CUPED on ratio metrics" uses the same construction).
"""

from __future__ import annotations

import math
from typing import Any

from experiments.stats import _dist
from experiments.stats.results import ComparisonResult
from experiments.stats.statistics import (
    CovariateMeanStatistic,
    CovariateRatioStatistic,
    MeanStatistic,
    RatioStatistic,
)

__all__ = ["cuped", "cuped_ratio", "ratio_delta", "welch", "ztest"]

_nan = math.nan


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _none_if_nan(v: float) -> float | None:
    return None if v != v else v  # NaN != NaN


def _empty_result(
    method: str, alpha: float, n_c: int, n_t: int, reason: str, **means: float | None
) -> ComparisonResult:
    return ComparisonResult(
        method=method,
        alpha=alpha,
        n_control=n_c,
        n_treatment=n_t,
        control_mean=means.get("control_mean"),
        treatment_mean=means.get("treatment_mean"),
        control_variance=means.get("control_variance"),
        treatment_variance=means.get("treatment_variance"),
        diff=means.get("diff"),
        se=None,
        df=None,
        statistic=None,
        p_value=None,
        ci=None,
        rel_lift=None,
        rel_lift_se=None,
        rel_lift_ci=None,
        control_se=None,
        treatment_se=None,
        computable=False,
        reason=reason,
    )


def _compare(
    method: str,
    alpha: float,
    n_c: int,
    n_t: int,
    m_c: float,
    m_t: float,
    v_c: float | None,
    v_t: float | None,
    use_t: bool,
    rel_ci: str,
    *,
    report_c: float | None = None,
    report_t: float | None = None,
    theta: float | None = None,
    variance_reduction: float | None = None,
    b_c: float | None = None,
    b_t: float | None = None,
    rel_over: tuple[float, float, float] | None = None,
) -> ComparisonResult:
    """Shared core: arm means ``m`` and per-unit variances ``v`` (already validated n ≥ 2).

    ``b_c``/``b_t`` (squared SEs of the arm means) default to v/n; estimators whose SE is
    not a per-unit variance over n (quantiles, stratified pools) pass them directly.
    ``rel_over`` = (ȳ_c unadjusted, Var(ȳ_c), Cov(D, ȳ_c)): the relative lift is D/ȳ_c (CUPED).
    """
    if b_c is None or b_t is None:
        assert v_c is not None and v_t is not None
        b_c = v_c / n_c
        b_t = v_t / n_t
    var = b_c + b_t
    diff = m_t - m_c
    adjusted = report_c is not None
    shown_c = report_c if adjusted else m_c
    shown_t = report_t if adjusted else m_t
    common = {
        "method": method,
        "alpha": alpha,
        "n_control": n_c,
        "n_treatment": n_t,
        "control_mean": shown_c,
        "treatment_mean": shown_t,
        "control_variance": v_c,
        "treatment_variance": v_t,
        "theta": theta,
        "variance_reduction": variance_reduction,
        "control_mean_adjusted": m_c if adjusted else None,
        "treatment_mean_adjusted": m_t if adjusted else None,
        "rel_ci_method": rel_ci,
        "control_mean_variance": rel_over[1] if rel_over is not None else None,
        "diff_control_covariance": rel_over[2] if rel_over is not None else None,
    }
    if not var > 0.0:
        return ComparisonResult(
            diff=diff,
            se=0.0,  # DESIGN.md: both arms without variance: SE 0, p and CI not computable
            df=None,
            statistic=None,
            p_value=None,
            ci=None,
            rel_lift=None,
            rel_lift_se=None,
            rel_lift_ci=None,
            control_se=0.0,
            treatment_se=0.0,
            computable=False,
            reason="zero variance in both arms: the difference has no sampling error to test against",
            **common,  # type: ignore[arg-type]
        )
    se = math.sqrt(var)
    if use_t:
        # Welch–Satterthwaite; one arm with zero variance leaves df = n_other − 1.
        df: float | None = var * var / (b_c * b_c / (n_c - 1) + b_t * b_t / (n_t - 1))
    else:
        df = None
    stat = diff / se
    p = _dist.two_sided_p(stat, df)
    q = _dist.quantile(1.0 - alpha / 2.0, df)
    half = q * se
    ci = (diff - half, diff + half)
    # DESIGN.md: the relative-lift CI is the delta-method interval with the NORMAL quantile
    # (the delta method is asymptotic; a t quantile would pretend to small-sample exactness).
    q_rel = q if df is None else _dist.quantile(1.0 - alpha / 2.0, None)

    computable = True
    reason = ""
    rel = rel_se = None
    rel_ci_v: tuple[float, float] | None = None
    rel_base = m_c if rel_over is None else rel_over[0]
    if rel_base == 0.0:
        computable = False
        reason = "control mean is 0: the relative lift is undefined (absolute difference reported)"
    elif rel_over is not None:
        # CUPED (DESIGN.md): L = D / ȳ_c with D the adjusted difference and ȳ_c the UNADJUSTED
        # control mean; delta method with Var(D) = var, Var(ȳ_c) and Cov(D, ȳ_c) from the caller:
        # Var(L) = Var(D)/ȳ_c² + D²·Var(ȳ_c)/ȳ_c⁴ − 2D·Cov(D, ȳ_c)/ȳ_c³.
        _, v0, c0 = rel_over
        m0 = rel_base
        rel = diff / m0
        rv = var / (m0 * m0) + diff * diff * v0 / m0**4 - 2.0 * diff * c0 / m0**3
        rel_se = math.sqrt(rv) if rv > 0.0 else 0.0
        rel_ci_v = (rel - q_rel * rel_se, rel + q_rel * rel_se)
    else:
        rel = m_t / m_c - 1.0
        # Delta method for the ratio of two independent means.
        rel_se = math.sqrt(b_t / (m_c * m_c) + m_t * m_t * b_c / (m_c**4))
        if rel_ci == "fieller":
            a = m_c * m_c - q * q * b_c
            if a <= 0.0:
                computable = False
                reason = (
                    "Fieller interval is unbounded: the control mean is not significantly different from 0"
                )
            else:
                disc = q * q * (m_t * m_t * b_c + m_c * m_c * b_t - q * q * b_t * b_c)
                root = math.sqrt(disc) if disc > 0.0 else 0.0
                rel_ci_v = ((m_t * m_c - root) / a - 1.0, (m_t * m_c + root) / a - 1.0)
        else:
            rel_ci_v = (rel - q_rel * rel_se, rel + q_rel * rel_se)
    return ComparisonResult(
        diff=diff,
        se=se,
        df=df,
        statistic=stat,
        p_value=p,
        ci=ci,
        rel_lift=rel,
        rel_lift_se=rel_se,
        rel_lift_ci=rel_ci_v,
        control_se=math.sqrt(b_c),
        treatment_se=math.sqrt(b_t),
        computable=computable,
        reason=reason,
        **common,  # type: ignore[arg-type]
    )


def _undefined_arms(
    method: str, alpha: float, n_c: int, n_t: int, m_c: float, m_t: float
) -> ComparisonResult | None:
    """The 'empty arm' and 'fewer than 2 units' cases, or None when both arms are usable."""
    if n_c <= 0 or n_t <= 0:
        empty = " and ".join(a for a, n in (("control", n_c), ("treatment", n_t)) if n <= 0)
        return _empty_result(
            method,
            alpha,
            max(n_c, 0),
            max(n_t, 0),
            f"empty arm: {empty} has no units",
            control_mean=_none_if_nan(m_c) if n_c > 0 else None,
            treatment_mean=_none_if_nan(m_t) if n_t > 0 else None,
        )
    if n_c < 2 or n_t < 2:
        small = " and ".join(a for a, n in (("control", n_c), ("treatment", n_t)) if n < 2)
        return _empty_result(
            method,
            alpha,
            n_c,
            n_t,
            f"{small} has fewer than 2 units: the variance is undefined",
            control_mean=_none_if_nan(m_c),
            treatment_mean=_none_if_nan(m_t),
            diff=_none_if_nan(m_t - m_c),
        )
    return None


def _invalid(method: str, alpha: float, control: Any, treatment: Any) -> ComparisonResult | None:
    """Not computable, with the reason, when either arm's sums are impossible (non-finite, …)."""
    for arm, s in (("control", control), ("treatment", treatment)):
        reason = s.problem
        if reason is not None:
            return _empty_result(
                method, alpha, max(control.n, 0), max(treatment.n, 0), f"{arm} statistics refused: {reason}"
            )
    return None


def _check_rel_ci(rel_ci: str) -> None:
    if rel_ci not in ("delta", "fieller"):
        raise ValueError(f"rel_ci must be 'delta' or 'fieller', got {rel_ci!r}")


def welch(
    control: MeanStatistic, treatment: MeanStatistic, alpha: float = 0.05, *, rel_ci: str = "delta"
) -> ComparisonResult:
    """Welch's unequal-variance t-test of treatment − control (the default for means).

    Pinned to ``scipy.stats.ttest_ind(treatment, control, equal_var=False)``.  One arm with
    zero variance is a valid test (df = n_other − 1); both zero is not computable.
    """
    _check_alpha(alpha)
    _check_rel_ci(rel_ci)
    refused = _invalid("welch", alpha, control, treatment)
    if refused is not None:
        return refused
    n_c, n_t = control.n, treatment.n
    m_c = control.mean
    m_t = treatment.mean
    bad = _undefined_arms("welch", alpha, n_c, n_t, m_c, m_t)
    if bad is not None:
        return bad
    return _compare("welch", alpha, n_c, n_t, m_c, m_t, control.variance, treatment.variance, True, rel_ci)


def ztest(
    control: MeanStatistic | RatioStatistic,
    treatment: MeanStatistic | RatioStatistic,
    alpha: float = 0.05,
    *,
    rel_ci: str = "delta",
) -> ComparisonResult:
    """Two-sample z-test with unpooled variances (large samples).

    For ``RatioStatistic`` arms this is the delta-method test (same as ``ratio_delta``).
    Pinned to statsmodels ``CompareMeans.ztest_ind(usevar='unequal')``.
    """
    if isinstance(control, RatioStatistic) and isinstance(treatment, RatioStatistic):
        return ratio_delta(control, treatment, alpha, rel_ci=rel_ci)
    if not (isinstance(control, MeanStatistic) and isinstance(treatment, MeanStatistic)):
        raise TypeError("ztest needs two MeanStatistic or two RatioStatistic arms")
    _check_alpha(alpha)
    _check_rel_ci(rel_ci)
    refused = _invalid("z", alpha, control, treatment)
    if refused is not None:
        return refused
    n_c, n_t = control.n, treatment.n
    m_c = control.mean
    m_t = treatment.mean
    bad = _undefined_arms("z", alpha, n_c, n_t, m_c, m_t)
    if bad is not None:
        return bad
    return _compare("z", alpha, n_c, n_t, m_c, m_t, control.variance, treatment.variance, False, rel_ci)


def cuped(
    control: CovariateMeanStatistic,
    treatment: CovariateMeanStatistic,
    alpha: float = 0.05,
    *,
    test: str = "welch",
    rel_ci: str = "delta",
) -> ComparisonResult:
    """CUPED-adjusted comparison with θ = cov(x, y)/var(x) pooled over both arms.

    ``test`` is ``"welch"`` (default, Welch df on the adjusted variances) or ``"z"``.
    A constant covariate gives θ = 0 (no adjustment).  Reports ``theta`` and
    ``variance_reduction`` = 1 − Var(adjusted diff)/Var(unadjusted diff).
    Pinned to ``scipy.stats.ttest_ind`` on the adjusted per-unit values y − θ(x − x̄).
    """
    _check_alpha(alpha)
    _check_rel_ci(rel_ci)
    if test not in ("welch", "z"):
        raise ValueError(f"test must be 'welch' or 'z', got {test!r}")
    method = "cuped-welch" if test == "welch" else "cuped-z"
    refused = _invalid(method, alpha, control, treatment)
    if refused is not None:
        return refused
    n_c, n_t = control.n, treatment.n
    m_c = control.mean
    m_t = treatment.mean
    bad = _undefined_arms(method, alpha, n_c, n_t, m_c, m_t)
    if bad is not None:
        return bad
    # Pooled over both arms; treatment's sums are moved to control's shifts if they differ.
    pooled = (
        treatment
        if (treatment.shift, treatment.x_shift) == (control.shift, control.x_shift)
        else (control + treatment)
    )
    if pooled is treatment:
        n = n_c + n_t
        sx = control.x_sum + treatment.x_sum
        sy = control.sum + treatment.sum
        var_x = (control.x_sum_squares + treatment.x_sum_squares - sx * sx / n) / (n - 1)
        cov_xy = (control.xy_sum + treatment.xy_sum - sx * sy / n) / (n - 1)
        x_bar = control.x_shift + sx / n
    else:
        var_x, cov_xy, x_bar = pooled.x_variance, pooled.covariance, pooled.x_mean
    theta = cov_xy / var_x if var_x > 0.0 else 0.0

    def adjusted(s: CovariateMeanStatistic) -> tuple[float, float]:
        mean = s.mean - theta * (s.x_mean - x_bar)
        v = s.variance - 2.0 * theta * s.covariance + theta * theta * s.x_variance
        return mean, (v if v > 0.0 else 0.0)

    a_c, av_c = adjusted(control)
    a_t, av_t = adjusted(treatment)
    raw_var = control.variance / n_c + treatment.variance / n_t
    adj_var = av_c / n_c + av_t / n_t
    reduction = 1.0 - adj_var / raw_var if raw_var > 0.0 else None
    # Relative lift over the unadjusted control mean: Var(ȳ_c) = s²_y,c/n_c and
    # Cov(D, ȳ_c) = −(s²_y,c − θ·s_xy,c)/n_c (D = ȳ_t − ȳ_c − θ(x̄_t − x̄_c), θ fixed; the pooled
    # covariate mean x̄ enters both adjusted means and cancels from D exactly).
    rel_over = (m_c, control.variance / n_c, -(control.variance - theta * control.covariance) / n_c)
    return _compare(
        method,
        alpha,
        n_c,
        n_t,
        a_c,
        a_t,
        av_c,
        av_t,
        test == "welch",
        rel_ci,
        report_c=m_c,
        report_t=m_t,
        theta=theta,
        variance_reduction=reduction,
        rel_over=rel_over,
    )


def ratio_delta(
    control: RatioStatistic, treatment: RatioStatistic, alpha: float = 0.05, *, rel_ci: str = "delta"
) -> ComparisonResult:
    """Ratio metric Σnum/Σden per arm, delta-method variance, z-test (df = None).

    Pinned to statsmodels ``ztest_ind(usevar='unequal')`` on the linearised per-unit
    values (num − R·den)/d̄ + R, whose mean is R and whose variance/n is Var(R).
    """
    _check_alpha(alpha)
    _check_rel_ci(rel_ci)
    refused = _invalid("ratio-delta", alpha, control, treatment)
    if refused is not None:
        return refused
    n_c, n_t = control.n, treatment.n
    r_c, r_t = control.ratio, treatment.ratio
    bad = _undefined_arms("ratio-delta", alpha, n_c, n_t, r_c, r_t)
    if bad is not None:
        return bad
    zero_den = [a for a, s in (("control", control), ("treatment", treatment)) if s.den_total == 0]
    if zero_den:
        return _empty_result(
            "ratio-delta",
            alpha,
            n_c,
            n_t,
            f"denominator sums to 0 in {' and '.join(zero_den)}: the ratio is undefined",
            control_mean=_none_if_nan(r_c),
            treatment_mean=_none_if_nan(r_t),
        )
    return _compare(
        "ratio-delta", alpha, n_c, n_t, r_c, r_t, control.variance, treatment.variance, False, rel_ci
    )


def _linearised_moments(s: CovariateRatioStatistic) -> tuple[float, float, float, float, float]:
    """(R, R_x, Var(Y), Var(X), Cov(Y, X)) of the per-unit linearisations of one arm/pool.

    Y = (num − R·den)/d̄, X = (pre_num − R_x·pre_den)/pre_d̄; bilinearity of covariance
    gives every term from the stored sums (ddof = 1).
    """
    n = s.n
    den_total = s.den_sum + n * s.den_shift
    pre_den_total = s.pre_den_sum + n * s.pre_den_shift
    r = (s.num_sum + n * s.num_shift) / den_total
    rx = (s.pre_num_sum + n * s.pre_num_shift) / pre_den_total
    d_bar = den_total / n
    pd_bar = pre_den_total / n

    def cov(sab: float, sa: float, sb: float) -> float:
        return (sab - sa * sb / n) / (n - 1)

    v_num = cov(s.num_sum_squares, s.num_sum, s.num_sum)
    v_den = cov(s.den_sum_squares, s.den_sum, s.den_sum)
    c_nd = cov(s.num_den_sum, s.num_sum, s.den_sum)
    v_pn = cov(s.pre_num_sum_squares, s.pre_num_sum, s.pre_num_sum)
    v_pd = cov(s.pre_den_sum_squares, s.pre_den_sum, s.pre_den_sum)
    c_pnpd = cov(s.pre_num_pre_den_sum, s.pre_num_sum, s.pre_den_sum)
    c_n_pn = cov(s.num_pre_num_sum, s.num_sum, s.pre_num_sum)
    c_n_pd = cov(s.num_pre_den_sum, s.num_sum, s.pre_den_sum)
    c_d_pn = cov(s.den_pre_num_sum, s.den_sum, s.pre_num_sum)
    c_d_pd = cov(s.den_pre_den_sum, s.den_sum, s.pre_den_sum)
    var_y = (v_num - 2.0 * r * c_nd + r * r * v_den) / (d_bar * d_bar)
    var_x = (v_pn - 2.0 * rx * c_pnpd + rx * rx * v_pd) / (pd_bar * pd_bar)
    cov_yx = (c_n_pn - rx * c_n_pd - r * c_d_pn + r * rx * c_d_pd) / (d_bar * pd_bar)
    return r, rx, max(var_y, 0.0), max(var_x, 0.0), cov_yx


def cuped_ratio(
    control: CovariateRatioStatistic,
    treatment: CovariateRatioStatistic,
    alpha: float = 0.05,
    *,
    rel_ci: str = "delta",
) -> ComparisonResult:
    """CUPED on a ratio metric: delta-method linearisation + pooled θ, z-test.

    θ = Cov(Y, X)/Var(X) from the pooled arms' linearisations; per arm
    R_adj = R − θ(R_x,arm − R_x,pooled) and Var = (Var Y − 2θ Cov + θ² Var X)/n.
    """
    _check_alpha(alpha)
    _check_rel_ci(rel_ci)
    refused = _invalid("cuped-ratio", alpha, control, treatment)
    if refused is not None:
        return refused
    n_c, n_t = control.n, treatment.n
    r_c, r_t = control.mean, treatment.mean
    bad = _undefined_arms("cuped-ratio", alpha, n_c, n_t, r_c, r_t)
    if bad is not None:
        return bad
    zero_den = [
        f"{a} {k}"
        for a, s in (("control", control), ("treatment", treatment))
        for k, v in (
            ("den", s.den_sum + s.n * s.den_shift),
            ("pre_den", s.pre_den_sum + s.n * s.pre_den_shift),
        )
        if v == 0
    ]
    if zero_den:
        return _empty_result(
            "cuped-ratio",
            alpha,
            n_c,
            n_t,
            f"denominator sums to 0 ({', '.join(zero_den)}): the ratio is undefined",
            control_mean=_none_if_nan(r_c),
            treatment_mean=_none_if_nan(r_t),
        )
    pooled = control + treatment
    _, rx_pool, _, vx_pool, cyx_pool = _linearised_moments(pooled)
    theta = cyx_pool / vx_pool if vx_pool > 0.0 else 0.0
    rc, rxc, vyc, vxc, cc = _linearised_moments(control)
    rt, rxt, vyt, vxt, ct = _linearised_moments(treatment)
    av_c = max(vyc - 2.0 * theta * cc + theta * theta * vxc, 0.0)
    av_t = max(vyt - 2.0 * theta * ct + theta * theta * vxt, 0.0)
    raw_var = vyc / n_c + vyt / n_t
    reduction = 1.0 - (av_c / n_c + av_t / n_t) / raw_var if raw_var > 0.0 else None
    # Relative lift over the unadjusted control ratio, as in ``cuped``.
    rel_over = (rc, vyc / n_c, -(vyc - theta * cc) / n_c)
    return _compare(
        "cuped-ratio",
        alpha,
        n_c,
        n_t,
        rc - theta * (rxc - rx_pool),
        rt - theta * (rxt - rx_pool),
        av_c,
        av_t,
        False,
        rel_ci,
        report_c=rc,
        report_t=rt,
        theta=theta,
        variance_reduction=reduction,
        rel_over=rel_over,
    )
