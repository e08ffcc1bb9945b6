"""Fast scalar distribution functions for the hot path.

``scipy.stats`` distribution objects cost tens of microseconds per call (argument
broadcasting, frozen-distribution bookkeeping); the ``scipy.special`` ufuncs they wrap cost
about one.  Everything here is a thin, documented wrapper over the Cephes routines:

- ``ndtr(x)``  = Φ(x), the standard normal CDF;  ``ndtri(p)`` = Φ⁻¹(p).
- ``stdtr(df, t)`` = the Student-t CDF with ``df`` degrees of freedom (real ``df`` allowed,
  which Welch–Satterthwaite needs); ``stdtrit(df, p)`` its inverse.
- ``chdtrc(k, x)`` = the upper tail of χ²_k.

The same functions back ``scipy.stats.norm``, ``scipy.stats.t`` and ``scipy.stats.chi2``,
so the engine's numbers equal scipy's to rounding (pinned in tests/stats).
"""

from __future__ import annotations

import math

from scipy.special import chdtrc, ndtr, ndtri, stdtr, stdtrit

# A p-value of exactly 0 reads as "impossible under the null"; floating-point underflow
# must not produce it (DESIGN.md: never p = 0).  The smallest positive normal double.
P_FLOOR = 2.2250738585072014e-308


def floor_p(p: float) -> float:
    """Clamp a probability into [P_FLOOR, 1]."""
    if p < P_FLOOR:
        return P_FLOOR
    if p > 1.0:
        return 1.0
    return p


def cdf(x: float, df: float | None) -> float:
    """CDF of the reference distribution: N(0, 1) when ``df`` is None, else Student t(df)."""
    if df is None or math.isinf(df):
        return float(ndtr(x))
    return float(stdtr(df, x))


def sf(x: float, df: float | None) -> float:
    """Upper tail 1 − F(x), computed as F(−x) by symmetry to keep precision in the tail."""
    return cdf(-x, df)


_NORMAL_Q: dict[float, float] = {}


def quantile(p: float, df: float | None) -> float:
    """Inverse CDF of N(0, 1) (``df`` None) or t(df)."""
    if df is None or math.isinf(df):
        q = _NORMAL_Q.get(p)
        if q is None:
            q = float(ndtri(p))
            if len(_NORMAL_Q) < 256:  # a handful of α's in practice
                _NORMAL_Q[p] = q
        return q
    return float(stdtrit(df, p))


def two_sided_p(stat: float, df: float | None) -> float:
    """p = 2·F(−|stat|), floored so that underflow never reports exactly 0."""
    return floor_p(2.0 * cdf(-abs(stat), df))


def chi2_sf(x: float, k: int) -> float:
    """Upper tail of χ²_k (Pearson's SRM test), floored away from 0."""
    return floor_p(float(chdtrc(k, x)))
