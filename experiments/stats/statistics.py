"""Per-arm sufficient statistics that add.

Each class holds the sums from which every estimator in this package is computed
(DESIGN.md, "Analysis pushes work to the data"): SQL computes them where the rows live
(``COUNT(*), SUM(y), SUM(y*y), …``), numpy computes them from arrays in one pass, and
daily partitions combine with ``+`` without rescanning raw rows.

Moments are recovered with the textbook identities (e.g. Casella & Berger, *Statistical
Inference*, 2nd ed., §5.2):

    ȳ   = Σy / n
    s²y = (Σy² − (Σy)²/n) / (n − 1)
    sxy = (Σxy − Σx·Σy/n) / (n − 1)

These lose precision when |ȳ| ≫ s (catastrophic cancellation); for per-user metrics
(counts, seconds, milliseconds) the relative error stays near 1e-12, and the tests pin
them to numpy's two-pass ``var``/``cov``.  Negative variances produced by rounding are
clamped to 0.

Proportions (0/1 metrics) are ``MeanStatistic`` of 0/1 values: Σy² = Σy, so
s² = p̂(1 − p̂)·n/(n − 1), the unbiased Bernoulli variance.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, fields
from typing import Any, Self

import numpy as np
import numpy.typing as npt

__all__ = [
    "CovariateMeanStatistic",
    "CovariateRatioStatistic",
    "MeanStatistic",
    "RatioStatistic",
]

# Cache blocking: the inputs are walked in blocks of 1 MiB in all (2**16 values of each of
# two arrays), so each block is read from memory once -- by the first cross product -- and
# the other sums and cross products of it are taken while it sits in cache.  Per block:
# one ``np.dot`` per cross product (BLAS, no y*y temporary), and the plain sums as a
# matrix-vector product of the block, viewed as 256-wide rows, with a vector of ones: BLAS
# streams the block once with the ones in L1 (~0.1 ns a value in cache, vs ~0.2 for
# ``np.add.reduce``), leaving one partial sum per 256 values, added pairwise at the end.
# numpy cannot fuse the reductions, so each still re-reads the block from cache: for y and
# x the whole costs about twice one ``np.add.reduce`` pass over both on the same number of
# threads (a 2-core EPYC, 10M values: ~20 ms vs ~10.5 ms on one thread).  Large inputs are
# cut into tasks of 2**19 values that worker threads take in turn (numpy and BLAS release
# the GIL; a thread held up by other processes simply takes fewer tasks).  BLAS is held to
# one thread per call meanwhile (threadpoolctl, when installed, ~10 µs): OpenBLAS would
# otherwise start its own threads for every block above 10,000 values, oversubscribing the
# cores (measured 2–5× slower, and up to 100× in bursts, on a loaded 2-core machine).
_BLOCK_VALUES = 1 << 17  # values per block over all arrays (× 8 bytes = 1 MiB)
_ROW = 256  # width of the rows summed by the ones-vector product
_TASK = 1 << 19  # values of each array per task handed to a thread
_PARALLEL_MIN = 1 << 20
_BLAS_THREAD_MIN = 10_000
_WORKERS = max(1, min(4, os.cpu_count() or 1))
_pool: ThreadPoolExecutor | None = None
_blas_controller: Any = None
_ONES = np.ones(_ROW)


def _blas_one_thread() -> AbstractContextManager[Any]:
    """Limit BLAS to one thread for the duration (no-op without threadpoolctl)."""
    global _blas_controller
    if _blas_controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # optional: only makes large inputs faster
            _blas_controller = False
        else:
            _blas_controller = ThreadpoolController()
    if _blas_controller is False:
        return nullcontext()
    return _blas_controller.limit(limits=1, user_api="blas")  # type: ignore[no-any-return]


def _as_float_array(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    return arr


def _block_len(k_arrays: int) -> int:
    return max(_ROW, (_BLOCK_VALUES // k_arrays) // _ROW * _ROW)


def _range_moments(
    arrays: list[npt.NDArray[np.float64]], pairs: list[tuple[int, int]], lo: int, hi: int
) -> list[float]:
    """Σ a_i for every array, then Σ a_i·a_j for every pair, over ``[lo, hi)``, blockwise."""
    k = len(arrays)
    block = _block_len(k)
    rows = block // _ROW
    contiguous = all(a.flags.c_contiguous for a in arrays)
    # Strided input cannot be viewed as rows without a copy: it takes the tail's route.
    n_blocks = (hi - lo) // block if contiguous else 0
    dot = np.dot
    ones = _ONES
    # One partial sum per 256 values, per array: added pairwise once the range is done.
    # (Zeroed, not empty: a BLAS that scales ``out`` by beta = 0 would keep a stray NaN.)
    partial = np.zeros((k, n_blocks, rows))
    prods = [0.0] * len(pairs)
    start = lo
    if k == 2 and pairs == [(0, 0), (1, 1), (0, 1)] and contiguous:
        # The common case (a metric and its covariate, or a ratio's num and den) unrolled.
        a0, a1 = arrays
        p0, p1 = partial
        s00 = s11 = s01 = 0.0
        for b in range(n_blocks):
            end = start + block
            u = a0[start:end]
            v = a1[start:end]
            s01 += dot(u, v)  # first: streams both arrays from memory into cache
            dot(u.reshape(rows, _ROW), ones, out=p0[b])
            dot(v.reshape(rows, _ROW), ones, out=p1[b])
            s00 += dot(u, u)
            s11 += dot(v, v)
            start = end
        prods = [s00, s11, s01]
    elif k == 1 and pairs == [(0, 0)]:
        (a0,) = arrays
        (p0,) = partial
        s00 = 0.0
        for b in range(n_blocks):
            end = start + block
            u = a0[start:end]
            s00 += dot(u, u)
            dot(u.reshape(rows, _ROW), ones, out=p0[b])
            start = end
        prods = [s00]
    else:
        for b in range(n_blocks):
            end = start + block
            blocks = [a[start:end] for a in arrays]
            for i, (x, y) in enumerate(pairs):
                prods[i] += dot(blocks[x], blocks[y])
            for i, u in enumerate(blocks):
                dot(u.reshape(rows, _ROW), ones, out=partial[i, b])
            start = end
    sums = [float(np.add.reduce(p, axis=None)) for p in partial]
    # The tail (and any strided input, whose blocks could not be viewed as rows).
    add = np.add.reduce
    for bstart in range(start, hi, block):
        blocks = [a[bstart : min(bstart + block, hi)] for a in arrays]
        for i, u in enumerate(blocks):
            sums[i] += float(add(u))
        for i, (x, y) in enumerate(pairs):
            prods[i] += float(dot(blocks[x], blocks[y]))
    return [*sums, *(float(p) for p in prods)]


def _moments(
    arrays: list[npt.NDArray[np.float64]], pairs: list[tuple[int, int]]
) -> tuple[list[float], list[float]]:
    """Σ a_i for every array and Σ a_i·a_j for every pair, streaming the data once."""
    global _pool
    n = arrays[0].shape[0]
    for a in arrays[1:]:
        if a.shape[0] != n:
            raise ValueError(f"arrays have different lengths: {n} and {a.shape[0]}")
    # OpenBLAS threads every ddot above 10,000 elements; for cache-sized blocks that
    # hand-off costs more than it saves (and collapses on a busy machine), so BLAS is held
    # to one thread while this function runs its own, coarser parallelism.
    with _blas_one_thread() if n > _BLAS_THREAD_MIN else nullcontext():
        if n >= _PARALLEL_MIN and _WORKERS > 1:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=_WORKERS - 1, thread_name_prefix="stats-moments")
            tasks = iter(range(0, n, _TASK))  # next() on a range iterator is atomic under the GIL

            def work() -> list[list[float]]:
                return [_range_moments(arrays, pairs, s, min(s + _TASK, n)) for s in tasks]

            futures = [_pool.submit(work) for _ in range(_WORKERS - 1)]
            parts = work()
            for f in futures:
                parts += f.result()
            total = [math.fsum(col) for col in zip(*parts, strict=True)]
        else:
            total = _range_moments(arrays, pairs, 0, n)
    if not all(math.isfinite(v) for v in total):
        # A NaN or inf anywhere propagates into the sums: checking the handful of sums is
        # free, checking every value would cost another pass over the data.
        raise ValueError("values contain NaN or infinity")
    return total[: len(arrays)], total[len(arrays) :]


def _cov(n: int, sum_xy: float, sum_x: float, sum_y: float) -> float:
    # s_xy = (Σxy − Σx·Σy/n) / (n − 1); undefined for n < 2.
    if n < 2:
        return math.nan
    return (sum_xy - sum_x * sum_y / n) / (n - 1)


def _var(n: int, sum_sq: float, total: float) -> float:
    if n < 2:
        return math.nan
    v = (sum_sq - total * total / n) / (n - 1)
    return v if v > 0.0 else 0.0


def _from_row(cls: type[Any], row: Mapping[str, Any]) -> Any:
    values = {}
    for f in fields(cls):
        if f.name not in row:
            raise ValueError(f"{cls.__name__}: row is missing {f.name!r} (has {sorted(row)})")
        raw = row[f.name]
        try:
            values[f.name] = int(raw) if f.name == "n" else float(raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{cls.__name__}: {f.name}={raw!r} is not a number") from exc
    if values["n"] < 0:
        raise ValueError(f"{cls.__name__}: n must be >= 0, got {values['n']}")
    return cls(**values)


@dataclass(frozen=True, slots=True)
class MeanStatistic:
    """Sufficient statistics of a per-unit metric y in one arm: n, Σy, Σy²."""

    n: int
    sum: float
    sum_squares: float

    @classmethod
    def from_values(cls, values: npt.ArrayLike) -> Self:
        """Build from per-unit values in one pass over the array."""
        y = _as_float_array(values)
        sums, prods = _moments([y], [(0, 0)])
        return cls(int(y.shape[0]), sums[0], prods[0])

    @classmethod
    def from_sums(cls, n: int, sum: float, sum_squares: float) -> Self:
        """Build from SQL aggregates ``COUNT(*), SUM(y), SUM(y*y)``."""
        return cls(int(n), float(sum), float(sum_squares))

    @classmethod
    def from_counts(cls, n: int, successes: int) -> Self:
        """A proportion (0/1 metric): Σy = Σy² = number of successes."""
        if not 0 <= successes <= n:
            raise ValueError(f"successes must be in [0, n], got {successes} of {n}")
        return cls(int(n), float(successes), float(successes))

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        """Build from a mapping with keys ``n, sum, sum_squares`` (e.g. a DB row)."""
        return _from_row(cls, row)  # type: ignore[no-any-return]

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n > 0 else math.nan

    @property
    def variance(self) -> float:
        """Unbiased sample variance s² (ddof = 1); NaN when n < 2."""
        return _var(self.n, self.sum_squares, self.sum)

    def __add__(self, other: MeanStatistic) -> MeanStatistic:
        # Daily partitions combine without rescanning raw rows.
        return MeanStatistic(self.n + other.n, self.sum + other.sum, self.sum_squares + other.sum_squares)


@dataclass(frozen=True, slots=True)
class CovariateMeanStatistic:
    """Metric y with a pre-period covariate x (CUPED): n, Σy, Σy², Σx, Σx², Σxy."""

    n: int
    sum: float
    sum_squares: float
    x_sum: float
    x_sum_squares: float
    xy_sum: float

    @classmethod
    def from_values(cls, y: npt.ArrayLike, x: npt.ArrayLike) -> Self:
        """Build from per-unit metric ``y`` and covariate ``x`` in one pass."""
        ya = _as_float_array(y)
        xa = _as_float_array(x)
        sums, prods = _moments([ya, xa], [(0, 0), (1, 1), (0, 1)])
        return cls(int(ya.shape[0]), sums[0], prods[0], sums[1], prods[1], prods[2])

    @classmethod
    def from_sums(
        cls,
        n: int,
        sum: float,
        sum_squares: float,
        x_sum: float,
        x_sum_squares: float,
        xy_sum: float,
    ) -> Self:
        return cls(int(n), float(sum), float(sum_squares), float(x_sum), float(x_sum_squares), float(xy_sum))

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return _from_row(cls, row)  # type: ignore[no-any-return]

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n > 0 else math.nan

    @property
    def x_mean(self) -> float:
        return self.x_sum / self.n if self.n > 0 else math.nan

    @property
    def variance(self) -> float:
        return _var(self.n, self.sum_squares, self.sum)

    @property
    def x_variance(self) -> float:
        return _var(self.n, self.x_sum_squares, self.x_sum)

    @property
    def covariance(self) -> float:
        """Sample covariance s_xy (ddof = 1)."""
        return _cov(self.n, self.xy_sum, self.x_sum, self.sum)

    @property
    def y(self) -> MeanStatistic:
        """The metric alone, for the unadjusted comparison."""
        return MeanStatistic(self.n, self.sum, self.sum_squares)

    def __add__(self, other: CovariateMeanStatistic) -> CovariateMeanStatistic:
        return CovariateMeanStatistic(
            self.n + other.n,
            self.sum + other.sum,
            self.sum_squares + other.sum_squares,
            self.x_sum + other.x_sum,
            self.x_sum_squares + other.x_sum_squares,
            self.xy_sum + other.xy_sum,
        )


@dataclass(frozen=True, slots=True)
class RatioStatistic:
    """Ratio metric Σnum/Σden over units (e.g. interactions / impressions per user).

    n counts randomisation units (users); num and den are per-unit totals.
    """

    n: int
    num_sum: float
    num_sum_squares: float
    den_sum: float
    den_sum_squares: float
    num_den_sum: float

    @classmethod
    def from_values(cls, num: npt.ArrayLike, den: npt.ArrayLike) -> Self:
        na = _as_float_array(num)
        da = _as_float_array(den)
        sums, prods = _moments([na, da], [(0, 0), (1, 1), (0, 1)])
        return cls(int(na.shape[0]), sums[0], prods[0], sums[1], prods[1], prods[2])

    @classmethod
    def from_sums(
        cls,
        n: int,
        num_sum: float,
        num_sum_squares: float,
        den_sum: float,
        den_sum_squares: float,
        num_den_sum: float,
    ) -> Self:
        return cls(
            int(n),
            float(num_sum),
            float(num_sum_squares),
            float(den_sum),
            float(den_sum_squares),
            float(num_den_sum),
        )

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return _from_row(cls, row)  # type: ignore[no-any-return]

    @property
    def ratio(self) -> float:
        """R = Σnum / Σden; NaN when Σden = 0."""
        return self.num_sum / self.den_sum if self.den_sum != 0 else math.nan

    @property
    def mean(self) -> float:
        """The arm's metric value, i.e. the ratio R (so ratio and mean metrics read alike)."""
        return self.ratio

    @property
    def num_variance(self) -> float:
        return _var(self.n, self.num_sum_squares, self.num_sum)

    @property
    def den_variance(self) -> float:
        return _var(self.n, self.den_sum_squares, self.den_sum)

    @property
    def num_den_covariance(self) -> float:
        return _cov(self.n, self.num_den_sum, self.num_sum, self.den_sum)

    @property
    def variance(self) -> float:
        """Per-unit variance of the linearised ratio, so that Var(R) = variance / n.

        Delta method (Deng, Knoblich & Lu 2018, "Applying the Delta Method in Metric
        Analytics", KDD, eq. 4):  (s²_num − 2R·s_num,den + R²·s²_den) / d̄²,
        which is the sample variance of the influence values (num − R·den)/d̄.
        """
        if self.n < 2 or self.den_sum == 0:
            return math.nan
        r = self.num_sum / self.den_sum
        d_bar = self.den_sum / self.n
        v = (self.num_variance - 2.0 * r * self.num_den_covariance + r * r * self.den_variance) / (
            d_bar * d_bar
        )
        return v if v > 0.0 else 0.0

    def __add__(self, other: RatioStatistic) -> RatioStatistic:
        return RatioStatistic(
            self.n + other.n,
            self.num_sum + other.num_sum,
            self.num_sum_squares + other.num_sum_squares,
            self.den_sum + other.den_sum,
            self.den_sum_squares + other.den_sum_squares,
            self.num_den_sum + other.num_den_sum,
        )


@dataclass(frozen=True, slots=True)
class CovariateRatioStatistic:
    """Ratio metric with a pre-period ratio covariate (CUPED on ratios).

    Per unit: num, den in the experiment period and pre_num, pre_den in the pre-period.
    Holds every first moment and every second moment of the four variables (10 cross
    products), which is exactly what the delta-method linearisation of both ratios needs.
    A plain (non-ratio) covariate x is the special case pre_num = x, pre_den = 1.
    """

    n: int
    num_sum: float
    num_sum_squares: float
    den_sum: float
    den_sum_squares: float
    num_den_sum: float
    pre_num_sum: float
    pre_num_sum_squares: float
    pre_den_sum: float
    pre_den_sum_squares: float
    pre_num_pre_den_sum: float
    num_pre_num_sum: float
    num_pre_den_sum: float
    den_pre_num_sum: float
    den_pre_den_sum: float

    @classmethod
    def from_values(
        cls, num: npt.ArrayLike, den: npt.ArrayLike, pre_num: npt.ArrayLike, pre_den: npt.ArrayLike
    ) -> Self:
        arrays = [_as_float_array(v) for v in (num, den, pre_num, pre_den)]
        pairs = [(0, 0), (1, 1), (0, 1), (2, 2), (3, 3), (2, 3), (0, 2), (0, 3), (1, 2), (1, 3)]
        s, p = _moments(arrays, pairs)
        return cls(
            int(arrays[0].shape[0]),
            s[0],
            p[0],
            s[1],
            p[1],
            p[2],
            s[2],
            p[3],
            s[3],
            p[4],
            p[5],
            p[6],
            p[7],
            p[8],
            p[9],
        )

    @classmethod
    def from_sums(cls, **sums: float) -> Self:
        """Build from SQL aggregates named like the fields (``n=…, num_sum=…, …``)."""
        return _from_row(cls, sums)  # type: ignore[no-any-return]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return _from_row(cls, row)  # type: ignore[no-any-return]

    @property
    def ratio(self) -> RatioStatistic:
        """The experiment-period ratio alone, for the unadjusted comparison."""
        return RatioStatistic(
            self.n, self.num_sum, self.num_sum_squares, self.den_sum, self.den_sum_squares, self.num_den_sum
        )

    @property
    def pre_ratio(self) -> RatioStatistic:
        return RatioStatistic(
            self.n,
            self.pre_num_sum,
            self.pre_num_sum_squares,
            self.pre_den_sum,
            self.pre_den_sum_squares,
            self.pre_num_pre_den_sum,
        )

    @property
    def mean(self) -> float:
        return self.num_sum / self.den_sum if self.den_sum != 0 else math.nan

    def __add__(self, other: CovariateRatioStatistic) -> CovariateRatioStatistic:
        return CovariateRatioStatistic(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(self))
        )
