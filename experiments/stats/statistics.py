"""Per-arm sufficient statistics that add, shifted for numerical stability.

Each class holds the sums from which every estimator in this package is computed
(DESIGN.md, "Analysis pushes work to the data"): SQL computes them where the rows live,
numpy computes them from arrays in one pass, and daily partitions combine with ``+``
without rescanning raw rows.

Stability: shifted sums (DESIGN.md, "Sums are numerically stable on every path")
---------------------------------------------------------------------------------
One-pass raw sums Σy, Σy² cancel catastrophically when |ȳ| ≫ s: at y = 1e8 ± 1 the
variance of ``(Σy² − (Σy)²/n)/(n − 1)`` is pure rounding noise.  Every statistic therefore
stores, per variable v, a **reference value (shift) K_v** and the sums of the *shifted*
values v − K_v::

    sum         = Σ(y − K)        sum_squares = Σ(y − K)²      sum_cubes = Σ(y − K)³
    x_sum       = Σ(x − Kx)       xy_sum      = Σ(x − Kx)(y − K)            …

and recovers the moments with the same textbook identities (Casella & Berger, *Statistical
Inference*, 2nd ed., §5.2), which are shift-invariant::

    ȳ   = K + Σ(y − K)/n
    s²y = (Σ(y − K)² − (Σ(y − K))²/n) / (n − 1)
    sxy = (Σ(x − Kx)(y − K) − Σ(x − Kx)·Σ(y − K)/n) / (n − 1)

The relative rounding error of s² is about ε·(1 + (ȳ − K)²/s²) (Chan, Golub & LeVeque
1983, "Algorithms for computing the sample variance", *Am. Stat.* 37:242, §3): any K within
a few standard deviations of the mean gives full precision, K = 0 gives the raw sums.

**Why a stored shift rather than Chan's pairwise merge.**  The shifted sums are still plain
sums, so they still *add*: SQL keeps ``SUM(…)`` (no per-group mean needs a second pass, and
every warehouse dialect has SUM, while none has a stable third moment), daily rows and
partitions add column by column, and the stored columns keep their names and meaning
(K = 0 is the old layout).  Where two partitions carry different shifts, ``+`` first moves
the second one's sums to the first one's K (the binomial expansion below), which is exact
algebra and precise as long as both K lie within the data's range — what Chan's update
does with the partition means as K.  How K is chosen on each path:

- numpy (``from_values``): a strided pilot of ≤ 1024 values; K = 0 when the pilot's
  |mean| ≤ 8·sd (cancellation then costs at most ~65 ε, and count data keep exact integer
  sums), else K = the pilot mean.  The shift is applied block by block in cache.
- SQL (experiments/aggregation.py, also the rollups and the warehouse text): K = the
  per-unit value of one unit of the query (a one-row CTE), carried in a ``…__shift``
  column of every output row.
- ``from_sums``: K = 0 unless given (callers with raw sums have already lost precision).

Re-shifting to K' = K − d (v − K' = (v − K) + d) with S_k = Σ(v − K)^k::

    S1' = S1 + n·d,   S2' = S2 + 2d·S1 + n·d²,   S3' = S3 + 3d·S2 + 3d²·S1 + n·d³
    Σ(x − Kx')(y − K') = Sxy + dy·Sx + dx·Sy + n·dx·dy

Validity (``problem``): a statistic with a non-finite sum, n < 0, n = 0 with non-zero
sums, or Σ(y − K)² < (Σ(y − K))²/n beyond rounding (a negative variance) is impossible;
``from_sums``/``from_values`` refuse it with a ``ValueError`` naming the field, and every
comparison reports it as not computable with that reason (rows from a database are checked
there, so a bad row never crashes an analysis).  A negative variance *within* rounding
(relative 1e-9 of the second moment) is 0.

Skewness: ``MeanStatistic`` and ``CovariateMeanStatistic`` may carry Σ(y − K)³
(``sum_cubes``; ``None`` where the source did not compute it) and report the sample
skewness g₁ = m₃/m₂^{3/2} with central moments m_k = (1/n)Σ(y − ȳ)^k, the convention of
``scipy.stats.skew(bias=True)``, used by the minimum-sample rule of Kohavi et al. (2014)
(``experiments.stats.skew``).

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
    "MOMENT_VARS",
    "SHIFT_FIELDS",
    "CovariateMeanStatistic",
    "CovariateRatioStatistic",
    "MeanStatistic",
    "RatioStatistic",
    "reshift",
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
_PILOT = 1024  # values in the pilot that chooses a shift
_NEAR_ZERO = 8.0  # |pilot mean| ≤ 8 pilot sd: no shift needed


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


def _pick_shift(a: npt.NDArray[np.float64]) -> float:
    """The reference value K of one array: 0 when its values sit near 0, else a pilot mean.

    A strided pilot of at most 1024 values (a few µs): K = 0 when |mean| ≤ 8·sd there (the
    raw sums then lose at most ~65 ε, and integer data keep exact sums), else the pilot mean.
    A non-finite pilot gives 0: the sums then carry the NaN/inf and are refused.
    """
    n = a.shape[0]
    if n == 0:
        return 0.0
    pilot = a[:: max(1, n // _PILOT)][:_PILOT]
    m = float(np.add.reduce(pilot)) / pilot.shape[0]
    if not math.isfinite(m):
        return 0.0
    d = pilot - m
    sd = math.sqrt(float(np.dot(d, d)) / pilot.shape[0])
    if abs(m) <= _NEAR_ZERO * sd:
        return 0.0
    return float(m)


def _range_moments(
    arrays: list[npt.NDArray[np.float64]],
    shifts: list[float],
    pairs: list[tuple[int, int]],
    cubes: list[int],
    lo: int,
    hi: int,
) -> list[float]:
    """Σ(a_i − K_i), then Σ(a_i − K_i)(a_j − K_j) per pair, then Σ(a_i − K_i)³ per cube, blockwise."""
    k = len(arrays)
    block = _block_len(k + (1 if cubes else 0))
    rows = block // _ROW
    contiguous = all(a.flags.c_contiguous for a in arrays)
    # Strided input cannot be viewed as rows without a copy: it takes the tail's route.
    n_blocks = (hi - lo) // block if contiguous else 0
    dot = np.dot
    subtract = np.subtract
    ones = _ONES
    # The shifted block of each array with K ≠ 0 is written to a buffer that stays in cache.
    bufs = [np.empty(block) if s != 0.0 else None for s in shifts]
    square = np.empty(block) if cubes else None

    def view(i: int, s: int, e: int) -> npt.NDArray[np.float64]:
        buf = bufs[i]
        if buf is None:
            return arrays[i][s:e]
        out = buf[: e - s]
        subtract(arrays[i][s:e], shifts[i], out=out)
        return out

    # One partial sum per 256 values, per array: added pairwise once the range is done.
    # (Zeroed, not empty: a BLAS that scales ``out`` by beta = 0 would keep a stray NaN.)
    partial = np.zeros((k, n_blocks, rows))
    prods = [0.0] * len(pairs)
    cube_sums = [0.0] * len(cubes)
    start = lo
    if k == 2 and pairs == [(0, 0), (1, 1), (0, 1)] and contiguous and not cubes:
        # The common case (a metric and its covariate, or a ratio's num and den) unrolled.
        p0, p1 = partial
        s00 = s11 = s01 = 0.0
        for b in range(n_blocks):
            end = start + block
            u = view(0, start, end)
            v = view(1, start, end)
            s01 += dot(u, v)  # first: streams both arrays from memory into cache
            dot(u.reshape(rows, _ROW), ones, out=p0[b])
            dot(v.reshape(rows, _ROW), ones, out=p1[b])
            s00 += dot(u, u)
            s11 += dot(v, v)
            start = end
        prods = [s00, s11, s01]
    elif k == 1 and pairs == [(0, 0)] and not cubes:
        (p0,) = partial
        s00 = 0.0
        for b in range(n_blocks):
            end = start + block
            u = view(0, start, end)
            s00 += dot(u, u)
            dot(u.reshape(rows, _ROW), ones, out=p0[b])
            start = end
        prods = [s00]
    else:
        for b in range(n_blocks):
            end = start + block
            blocks = [view(i, start, end) for i in range(k)]
            for i, (x, y) in enumerate(pairs):
                prods[i] += dot(blocks[x], blocks[y])
            for i, u in enumerate(blocks):
                dot(u.reshape(rows, _ROW), ones, out=partial[i, b])
            for i, c in enumerate(cubes):
                u = blocks[c]
                sq = np.multiply(u, u, out=square)
                cube_sums[i] += dot(sq, u)
            start = end
    sums = [float(np.add.reduce(p, axis=None)) for p in partial]
    # The tail (and any strided input, whose blocks could not be viewed as rows).
    add = np.add.reduce
    for bstart in range(start, hi, block):
        bend = min(bstart + block, hi)
        blocks = [view(i, bstart, bend) for i in range(k)]
        for i, u in enumerate(blocks):
            sums[i] += float(add(u))
        for i, (x, y) in enumerate(pairs):
            prods[i] += float(dot(blocks[x], blocks[y]))
        for i, c in enumerate(cubes):
            u = blocks[c]
            cube_sums[i] += float(dot(u * u, u))
    return [*sums, *(float(p) for p in prods), *cube_sums]


def _moments(
    arrays: list[npt.NDArray[np.float64]], pairs: list[tuple[int, int]], cubes: tuple[int, ...] = ()
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Shifted sums: (K_i, Σ(a_i − K_i), Σ(a_i − K_i)(a_j − K_j) per pair, Σ(a_i − K_i)³ per cube).

    Streams the data once (each block is shifted in cache, see the module docstring).
    """
    global _pool
    n = arrays[0].shape[0]
    for a in arrays[1:]:
        if a.shape[0] != n:
            raise ValueError(f"arrays have different lengths: {n} and {a.shape[0]}")
    shifts = [_pick_shift(a) for a in arrays]
    cube_list = list(cubes)
    # OpenBLAS threads every ddot above 10,000 elements; for cache-sized blocks that
    # hand-off costs more than it saves (and collapses on a busy machine), so BLAS is held
    # to one thread while this function runs its own, coarser parallelism.
    with _blas_one_thread() if n > _BLAS_THREAD_MIN else nullcontext():
        if n >= _PARALLEL_MIN and _WORKERS > 1:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=_WORKERS - 1, thread_name_prefix="stats-moments")
            tasks = iter(range(0, n, _TASK))  # next() on a range iterator is atomic under the GIL

            def work() -> list[list[float]]:
                return [_range_moments(arrays, shifts, pairs, cube_list, s, min(s + _TASK, n)) for s in tasks]

            futures = [_pool.submit(work) for _ in range(_WORKERS - 1)]
            parts = work()
            for f in futures:
                parts += f.result()
            total = [math.fsum(col) for col in zip(*parts, strict=True)]
        else:
            total = _range_moments(arrays, shifts, pairs, cube_list, 0, n)
    if not all(math.isfinite(v) for v in total):
        # A NaN or inf anywhere propagates into the sums: checking the handful of sums is
        # free, checking every value would cost another pass over the data.
        raise ValueError("values contain NaN or infinity")
    k, p = len(arrays), len(pairs)
    return shifts, total[:k], total[k : k + p], total[k + p :]


# Relative tolerance on a second moment below which a negative centred sum is rounding.
_ROUNDING = 1e-9


def _centred(n: int, s_ab: float, s_a: float, s_b: float) -> float:
    """Σ(a − ā)(b − b̄) from shifted sums (shift-invariant)."""
    return s_ab - s_a * s_b / n


def _cov(n: int, sum_xy: float, sum_x: float, sum_y: float) -> float:
    # s_xy = (Σxy − Σx·Σy/n) / (n − 1) on shifted sums; undefined for n < 2.
    if n < 2:
        return math.nan
    return (sum_xy - sum_x * sum_y / n) / (n - 1)


def _var(n: int, sum_sq: float, total: float) -> float:
    if n < 2:
        return math.nan
    v = (sum_sq - total * total / n) / (n - 1)
    return v if v > 0.0 else 0.0


def _skewness(n: int, s1: float, s2: float, s3: float | None) -> float | None:
    """g₁ = m₃/m₂^{3/2} from shifted power sums (scipy.stats.skew, bias=True); None if unknown.

    Central moments from the shifted sums with a = S1/n:  m₂ = S2/n − a²,
    m₃ = S3/n − 3a·S2/n + 2a³.  Zero variance or n < 3: None (undefined).
    """
    if s3 is None or n < 3:
        return None
    a = s1 / n
    m2 = s2 / n - a * a
    if not m2 > _ROUNDING * (s2 / n):
        return None
    m3 = s3 / n - 3.0 * a * s2 / n + 2.0 * a * a * a
    return float(m3 / m2**1.5)


# Variable of every power-sum field (a multiset of variables; degree = length) and the shift
# field of every variable, over all four classes (the names are unique across them).
MOMENT_VARS: dict[str, tuple[str, ...]] = {
    "sum": ("y",),
    "sum_squares": ("y", "y"),
    "sum_cubes": ("y", "y", "y"),
    "x_sum": ("x",),
    "x_sum_squares": ("x", "x"),
    "xy_sum": ("x", "y"),
    "num_sum": ("num",),
    "num_sum_squares": ("num", "num"),
    "den_sum": ("den",),
    "den_sum_squares": ("den", "den"),
    "num_den_sum": ("num", "den"),
    "pre_num_sum": ("pre_num",),
    "pre_num_sum_squares": ("pre_num", "pre_num"),
    "pre_den_sum": ("pre_den",),
    "pre_den_sum_squares": ("pre_den", "pre_den"),
    "pre_num_pre_den_sum": ("pre_num", "pre_den"),
    "num_pre_num_sum": ("num", "pre_num"),
    "num_pre_den_sum": ("num", "pre_den"),
    "den_pre_num_sum": ("den", "pre_num"),
    "den_pre_den_sum": ("den", "pre_den"),
}
SHIFT_FIELDS: dict[str, str] = {
    "y": "shift",
    "x": "x_shift",
    "num": "num_shift",
    "den": "den_shift",
    "pre_num": "pre_num_shift",
    "pre_den": "pre_den_shift",
}
_VARS_FIELD = {tuple(sorted(v)): f for f, v in MOMENT_VARS.items()}


def reshift(
    n: float, sums: Mapping[str, float | None], shifts: Mapping[str, float], to: Mapping[str, float]
) -> dict[str, float | None]:
    """Move power sums from shifts ``shifts`` (variable → K) to ``to`` (variable → K').

    ``sums`` maps field names of :data:`MOMENT_VARS` to Σ Π(v − K_v); every lower-degree
    sum a field expands into must be present (each class stores them).  With d_v = K_v − K'_v,
    Σ Π((v − K_v) + d_v) is expanded over the subsets of the factors (module docstring).
    A ``None`` sum (not computed) stays ``None``.
    """
    d = {v: shifts.get(v, 0.0) - to.get(v, 0.0) for v in set(shifts) | set(to)}
    out: dict[str, float | None] = {}
    for name, value in sums.items():
        vars_ = MOMENT_VARS[name]
        if value is None or not any(d.get(v, 0.0) for v in vars_):
            out[name] = value
            continue
        total = 0.0
        m = len(vars_)
        for mask in range(1 << m):  # each subset kept as a stored sum, the rest as d's
            kept = tuple(sorted(vars_[i] for i in range(m) if mask >> i & 1))
            coef = 1.0
            for i in range(m):
                if not mask >> i & 1:
                    coef *= d.get(vars_[i], 0.0)
            if coef == 0.0:
                continue
            if not kept:
                total += coef * n
            else:
                part = value if len(kept) == m else sums.get(_VARS_FIELD[kept])
                if part is None:
                    raise ValueError(f"cannot re-shift {name}: {_VARS_FIELD[kept]} is missing")
                total += coef * part
        out[name] = total
    return out


def _stat_add(a: Any, b: Any) -> Any:
    """a + b for two statistics of one class; b moved to a's shifts first when they differ."""
    cls = type(a)
    if type(b) is not cls:
        return NotImplemented
    shift_names = cls._SHIFTS
    same = all(getattr(a, f) == getattr(b, f) for f in shift_names.values())
    moments = cls._MOMENTS
    if same:
        bs = {f: getattr(b, f) for f in moments}
    else:
        bs = reshift(
            b.n,
            {f: getattr(b, f) for f in moments},
            {v: getattr(b, f) for v, f in shift_names.items()},
            {v: getattr(a, f) for v, f in shift_names.items()},
        )
    values: dict[str, Any] = {"n": a.n + b.n}
    for f in moments:
        x, y = getattr(a, f), bs[f]
        values[f] = None if x is None or y is None else x + y
    for f in shift_names.values():
        values[f] = getattr(a, f)
    return cls(**values)


def _stat_shifted(s: Any, to: Mapping[str, float]) -> Any:
    """The same statistic with its sums moved to the shifts ``to`` (variable → K)."""
    cls = type(s)
    moved = reshift(
        s.n,
        {f: getattr(s, f) for f in cls._MOMENTS},
        {v: getattr(s, f) for v, f in cls._SHIFTS.items()},
        to,
    )
    values: dict[str, Any] = {"n": s.n, **moved}
    for v, f in cls._SHIFTS.items():
        values[f] = to.get(v, getattr(s, f))
    return cls(**values)


def _problem(s: Any) -> str | None:
    """Why a statistic is impossible (module docstring, "Validity"), or None when it is fine."""
    cls = type(s)
    n = s.n
    name = cls.__name__
    if n < 0:
        return f"{name}: n = {n} is negative"
    for f in cls._ALL:
        v = getattr(s, f)
        if v is not None and not math.isfinite(v):
            return f"{name}: {f} = {v} is not finite"
    if n == 0:
        if any(getattr(s, f) for f in cls._MOMENTS):
            return f"{name}: n = 0 but the sums are not 0"
        return None
    for f1, f2 in cls._SQUARES:
        s1, s2 = getattr(s, f1), getattr(s, f2)
        if s2 - s1 * s1 / n < -_ROUNDING * max(abs(s2), s1 * s1 / n):
            return f"{name}: {f2} = {s2!r} < ({f1})²/n = {s1 * s1 / n!r}: a negative variance is impossible"
    return None


def _from_row(cls: type[Any], row: Mapping[str, Any]) -> Any:
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in row:
            if f.name in cls._OPTIONAL:
                continue  # an older row layout: no shift (K = 0), no cubes
            raise ValueError(f"{cls.__name__}: row is missing {f.name!r} (has {sorted(row)})")
        raw = row[f.name]
        if raw is None and f.name == "sum_cubes":
            continue
        try:
            values[f.name] = int(raw) if f.name == "n" else float(raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{cls.__name__}: {f.name}={raw!r} is not a number") from exc
    if values["n"] < 0:
        raise ValueError(f"{cls.__name__}: n must be >= 0, got {values['n']}")
    return cls(**values)


def _checked(s: Any) -> Any:
    reason = _problem(s)
    if reason is not None:
        raise ValueError(reason)
    return s


@dataclass(frozen=True, slots=True)
class MeanStatistic:
    """Sufficient statistics of a per-unit metric y in one arm: n, Σ(y−K), Σ(y−K)², Σ(y−K)³, K.

    ``shift`` is K (0: raw sums); ``sum_cubes`` is ``None`` where it was not computed.
    """

    n: int
    sum: float
    sum_squares: float
    shift: float = 0.0
    sum_cubes: float | None = None

    _MOMENTS = ("sum", "sum_squares", "sum_cubes")
    _SHIFTS = {"y": "shift"}
    _SQUARES = (("sum", "sum_squares"),)
    _ALL = ("sum", "sum_squares", "sum_cubes", "shift")
    _OPTIONAL = frozenset({"shift", "sum_cubes"})

    @classmethod
    def from_values(cls, values: npt.ArrayLike, *, cubes: bool = True) -> Self:
        """Build from per-unit values in one pass over the array (shifted sums).

        ``cubes``: also Σ(y−K)³, for the skewness (+~0.35 ns a value, measured in
        bench/stats_engines.py); ``False`` leaves ``sum_cubes`` None.
        """
        y = _as_float_array(values)
        shifts, sums, prods, c3 = _moments([y], [(0, 0)], (0,) if cubes else ())
        return cls(int(y.shape[0]), sums[0], prods[0], shifts[0], c3[0] if cubes else None)

    @classmethod
    def from_sums(
        cls,
        n: int,
        sum: float,
        sum_squares: float,
        *,
        shift: float = 0.0,
        sum_cubes: float | None = None,
    ) -> Self:
        """Build from SQL aggregates ``COUNT(*), SUM(y−K), SUM((y−K)²)`` (K = ``shift``).

        Refuses (``ValueError`` with the reason) non-finite sums, n < 0 and impossible sums.
        """
        cubes = None if sum_cubes is None else float(sum_cubes)
        return _checked(cls(int(n), float(sum), float(sum_squares), float(shift), cubes))  # type: ignore[no-any-return]

    @classmethod
    def from_counts(cls, n: int, successes: int) -> Self:
        """A proportion (0/1 metric): Σy = Σy² = Σy³ = number of successes."""
        if not 0 <= successes <= n:
            raise ValueError(f"successes must be in [0, n], got {successes} of {n}")
        return cls(int(n), float(successes), float(successes), 0.0, float(successes))

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        """Build from a mapping with keys ``n, sum, sum_squares`` [``shift, sum_cubes``] (a DB row)."""
        return _from_row(cls, row)  # type: ignore[no-any-return]

    @property
    def problem(self) -> str | None:
        """Why these sums are impossible (non-finite, n < 0, negative variance), or None."""
        n, s1, s2 = self.n, self.sum, self.sum_squares
        c = self.sum_cubes
        # Fast path (per comparison, ~0.3 µs): every doubt goes to the full check.
        if n > 0 and s2 - s1 * s1 / n >= 0.0 and math.isfinite(s1 + s2 + self.shift + (c or 0.0)):
            return None
        return _problem(self)

    @property
    def mean(self) -> float:
        return self.shift + self.sum / self.n if self.n > 0 else math.nan

    @property
    def variance(self) -> float:
        """Unbiased sample variance s² (ddof = 1); NaN when n < 2."""
        return _var(self.n, self.sum_squares, self.sum)

    @property
    def skewness(self) -> float | None:
        """Sample skewness g₁ (scipy.stats.skew, bias=True); None without Σ(y−K)³ or variance."""
        return _skewness(self.n, self.sum, self.sum_squares, self.sum_cubes)

    def shifted(self, shift: float) -> MeanStatistic:
        """The same statistic with its sums about another reference value."""
        return _stat_shifted(self, {"y": shift})  # type: ignore[no-any-return]

    def __add__(self, other: MeanStatistic) -> MeanStatistic:
        # Daily partitions combine without rescanning raw rows (other moved to self's K).
        if other.shift == self.shift:
            cubes = (
                None
                if self.sum_cubes is None or other.sum_cubes is None
                else self.sum_cubes + other.sum_cubes
            )
            return MeanStatistic(
                self.n + other.n,
                self.sum + other.sum,
                self.sum_squares + other.sum_squares,
                self.shift,
                cubes,
            )
        return _stat_add(self, other)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class CovariateMeanStatistic:
    """Metric y with a pre-period covariate x (CUPED): n, Σ(y−K), Σ(y−K)², Σ(x−Kx), Σ(x−Kx)², Σ(x−Kx)(y−K).

    Plus the shifts K (``shift``) and Kx (``x_shift``) and, optionally, Σ(y−K)³.
    """

    n: int
    sum: float
    sum_squares: float
    x_sum: float
    x_sum_squares: float
    xy_sum: float
    shift: float = 0.0
    x_shift: float = 0.0
    sum_cubes: float | None = None

    _MOMENTS = ("sum", "sum_squares", "x_sum", "x_sum_squares", "xy_sum", "sum_cubes")
    _SHIFTS = {"y": "shift", "x": "x_shift"}
    _SQUARES = (("sum", "sum_squares"), ("x_sum", "x_sum_squares"))
    _ALL = (*_MOMENTS, "shift", "x_shift")
    _OPTIONAL = frozenset({"shift", "x_shift", "sum_cubes"})

    @classmethod
    def from_values(cls, y: npt.ArrayLike, x: npt.ArrayLike, *, cubes: bool = True) -> Self:
        """Build from per-unit metric ``y`` and covariate ``x`` in one pass.

        ``cubes``: also Σ(y−K)³ for the skewness of y (see ``MeanStatistic.from_values``).
        """
        ya = _as_float_array(y)
        xa = _as_float_array(x)
        shifts, sums, prods, c3 = _moments([ya, xa], [(0, 0), (1, 1), (0, 1)], (0,) if cubes else ())
        return cls(
            int(ya.shape[0]),
            sums[0],
            prods[0],
            sums[1],
            prods[1],
            prods[2],
            shifts[0],
            shifts[1],
            c3[0] if cubes else None,
        )

    @classmethod
    def from_sums(
        cls,
        n: int,
        sum: float,
        sum_squares: float,
        x_sum: float,
        x_sum_squares: float,
        xy_sum: float,
        *,
        shift: float = 0.0,
        x_shift: float = 0.0,
        sum_cubes: float | None = None,
    ) -> Self:
        cubes = None if sum_cubes is None else float(sum_cubes)
        return _checked(  # type: ignore[no-any-return]
            cls(
                int(n),
                float(sum),
                float(sum_squares),
                float(x_sum),
                float(x_sum_squares),
                float(xy_sum),
                float(shift),
                float(x_shift),
                cubes,
            )
        )

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return _from_row(cls, row)  # type: ignore[no-any-return]

    @property
    def problem(self) -> str | None:
        n, s1, s2, x1, x2 = self.n, self.sum, self.sum_squares, self.x_sum, self.x_sum_squares
        c = self.sum_cubes
        if (
            n > 0
            and s2 - s1 * s1 / n >= 0.0
            and x2 - x1 * x1 / n >= 0.0
            and math.isfinite(s1 + s2 + x1 + x2 + self.xy_sum + self.shift + self.x_shift + (c or 0.0))
        ):
            return None
        return _problem(self)

    @property
    def mean(self) -> float:
        return self.shift + self.sum / self.n if self.n > 0 else math.nan

    @property
    def x_mean(self) -> float:
        return self.x_shift + self.x_sum / self.n if self.n > 0 else math.nan

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
    def skewness(self) -> float | None:
        """Sample skewness g₁ of y (scipy.stats.skew, bias=True); None without Σ(y−K)³."""
        return _skewness(self.n, self.sum, self.sum_squares, self.sum_cubes)

    @property
    def y(self) -> MeanStatistic:
        """The metric alone, for the unadjusted comparison."""
        return MeanStatistic(self.n, self.sum, self.sum_squares, self.shift, self.sum_cubes)

    @property
    def x(self) -> MeanStatistic:
        """The covariate alone (e.g. for the pre-period balance check)."""
        return MeanStatistic(self.n, self.x_sum, self.x_sum_squares, self.x_shift)

    def __add__(self, other: CovariateMeanStatistic) -> CovariateMeanStatistic:
        if other.shift == self.shift and other.x_shift == self.x_shift:
            cubes = (
                None
                if self.sum_cubes is None or other.sum_cubes is None
                else self.sum_cubes + other.sum_cubes
            )
            return CovariateMeanStatistic(
                self.n + other.n,
                self.sum + other.sum,
                self.sum_squares + other.sum_squares,
                self.x_sum + other.x_sum,
                self.x_sum_squares + other.x_sum_squares,
                self.xy_sum + other.xy_sum,
                self.shift,
                self.x_shift,
                cubes,
            )
        return _stat_add(self, other)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class RatioStatistic:
    """Ratio metric Σnum/Σden over units (e.g. interactions / impressions per user).

    n counts randomisation units (users); num and den are per-unit totals.  The sums are
    about the shifts ``num_shift`` and ``den_shift`` (module docstring).
    """

    n: int
    num_sum: float
    num_sum_squares: float
    den_sum: float
    den_sum_squares: float
    num_den_sum: float
    num_shift: float = 0.0
    den_shift: float = 0.0

    _MOMENTS = ("num_sum", "num_sum_squares", "den_sum", "den_sum_squares", "num_den_sum")
    _SHIFTS = {"num": "num_shift", "den": "den_shift"}
    _SQUARES = (("num_sum", "num_sum_squares"), ("den_sum", "den_sum_squares"))
    _ALL = (*_MOMENTS, "num_shift", "den_shift")
    _OPTIONAL = frozenset({"num_shift", "den_shift"})

    @classmethod
    def from_values(cls, num: npt.ArrayLike, den: npt.ArrayLike) -> Self:
        na = _as_float_array(num)
        da = _as_float_array(den)
        shifts, sums, prods, _ = _moments([na, da], [(0, 0), (1, 1), (0, 1)])
        return cls(int(na.shape[0]), sums[0], prods[0], sums[1], prods[1], prods[2], shifts[0], shifts[1])

    @classmethod
    def from_sums(
        cls,
        n: int,
        num_sum: float,
        num_sum_squares: float,
        den_sum: float,
        den_sum_squares: float,
        num_den_sum: float,
        *,
        num_shift: float = 0.0,
        den_shift: float = 0.0,
    ) -> Self:
        return _checked(  # type: ignore[no-any-return]
            cls(
                int(n),
                float(num_sum),
                float(num_sum_squares),
                float(den_sum),
                float(den_sum_squares),
                float(num_den_sum),
                float(num_shift),
                float(den_shift),
            )
        )

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return _from_row(cls, row)  # type: ignore[no-any-return]

    @property
    def problem(self) -> str | None:
        n, a1, a2, b1, b2 = self.n, self.num_sum, self.num_sum_squares, self.den_sum, self.den_sum_squares
        if (
            n > 0
            and a2 - a1 * a1 / n >= 0.0
            and b2 - b1 * b1 / n >= 0.0
            and math.isfinite(a1 + a2 + b1 + b2 + self.num_den_sum + self.num_shift + self.den_shift)
        ):
            return None
        return _problem(self)

    @property
    def num_total(self) -> float:
        """Σnum (unshifted)."""
        return self.num_sum + self.n * self.num_shift

    @property
    def den_total(self) -> float:
        """Σden (unshifted)."""
        return self.den_sum + self.n * self.den_shift

    @property
    def ratio(self) -> float:
        """R = Σnum / Σden; NaN when Σden = 0."""
        den = self.den_total
        return self.num_total / den if den != 0 else math.nan

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
        den = self.den_total
        if self.n < 2 or den == 0:
            return math.nan
        r = self.num_total / den
        d_bar = den / self.n
        v = (self.num_variance - 2.0 * r * self.num_den_covariance + r * r * self.den_variance) / (
            d_bar * d_bar
        )
        return v if v > 0.0 else 0.0

    def __add__(self, other: RatioStatistic) -> RatioStatistic:
        if other.num_shift == self.num_shift and other.den_shift == self.den_shift:
            return RatioStatistic(
                self.n + other.n,
                self.num_sum + other.num_sum,
                self.num_sum_squares + other.num_sum_squares,
                self.den_sum + other.den_sum,
                self.den_sum_squares + other.den_sum_squares,
                self.num_den_sum + other.num_den_sum,
                self.num_shift,
                self.den_shift,
            )
        return _stat_add(self, other)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class CovariateRatioStatistic:
    """Ratio metric with a pre-period ratio covariate (CUPED on ratios).

    Per unit: num, den in the experiment period and pre_num, pre_den in the pre-period.
    Holds every first moment and every second moment of the four variables (10 cross
    products), each about the variable's shift, which is exactly what the delta-method
    linearisation of both ratios needs.  A plain (non-ratio) covariate x is the special
    case pre_num = x, pre_den = 1.
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
    num_shift: float = 0.0
    den_shift: float = 0.0
    pre_num_shift: float = 0.0
    pre_den_shift: float = 0.0

    _MOMENTS = (
        "num_sum",
        "num_sum_squares",
        "den_sum",
        "den_sum_squares",
        "num_den_sum",
        "pre_num_sum",
        "pre_num_sum_squares",
        "pre_den_sum",
        "pre_den_sum_squares",
        "pre_num_pre_den_sum",
        "num_pre_num_sum",
        "num_pre_den_sum",
        "den_pre_num_sum",
        "den_pre_den_sum",
    )
    _SHIFTS = {
        "num": "num_shift",
        "den": "den_shift",
        "pre_num": "pre_num_shift",
        "pre_den": "pre_den_shift",
    }
    _SQUARES = (
        ("num_sum", "num_sum_squares"),
        ("den_sum", "den_sum_squares"),
        ("pre_num_sum", "pre_num_sum_squares"),
        ("pre_den_sum", "pre_den_sum_squares"),
    )
    _ALL = (*_MOMENTS, "num_shift", "den_shift", "pre_num_shift", "pre_den_shift")
    _OPTIONAL = frozenset({"num_shift", "den_shift", "pre_num_shift", "pre_den_shift"})

    @classmethod
    def from_values(
        cls, num: npt.ArrayLike, den: npt.ArrayLike, pre_num: npt.ArrayLike, pre_den: npt.ArrayLike
    ) -> Self:
        arrays = [_as_float_array(v) for v in (num, den, pre_num, pre_den)]
        pairs = [(0, 0), (1, 1), (0, 1), (2, 2), (3, 3), (2, 3), (0, 2), (0, 3), (1, 2), (1, 3)]
        k, s, p, _ = _moments(arrays, pairs)
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
            k[0],
            k[1],
            k[2],
            k[3],
        )

    @classmethod
    def from_sums(cls, **sums: float) -> Self:
        """Build from SQL aggregates named like the fields (``n=…, num_sum=…, …``); checked."""
        return _checked(_from_row(cls, sums))  # type: ignore[no-any-return]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return _from_row(cls, row)  # type: ignore[no-any-return]

    @property
    def problem(self) -> str | None:
        return _problem(self)

    @property
    def ratio(self) -> RatioStatistic:
        """The experiment-period ratio alone, for the unadjusted comparison."""
        return RatioStatistic(
            self.n,
            self.num_sum,
            self.num_sum_squares,
            self.den_sum,
            self.den_sum_squares,
            self.num_den_sum,
            self.num_shift,
            self.den_shift,
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
            self.pre_num_shift,
            self.pre_den_shift,
        )

    @property
    def mean(self) -> float:
        den = self.den_sum + self.n * self.den_shift
        return (self.num_sum + self.n * self.num_shift) / den if den != 0 else math.nan

    def __add__(self, other: CovariateRatioStatistic) -> CovariateRatioStatistic:
        if all(getattr(self, f) == getattr(other, f) for f in self._SHIFTS.values()):
            sums: dict[str, float] = {f: getattr(self, f) + getattr(other, f) for f in self._MOMENTS}
            return CovariateRatioStatistic(
                n=self.n + other.n,
                num_shift=self.num_shift,
                den_shift=self.den_shift,
                pre_num_shift=self.pre_num_shift,
                pre_den_shift=self.pre_den_shift,
                **sums,
            )
        return _stat_add(self, other)  # type: ignore[no-any-return]
