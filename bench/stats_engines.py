"""Benchmark: CUPED + CI + TOST from raw per-user arrays, this engine vs its peers.

    python bench/stats_engines.py [--sizes 100000,1000000,10000000] [--repeats 3]

For each size (users per arm) every engine gets the same seeded per-user arrays — metric y
and pre-period covariate x in each arm — and must produce the CUPED-adjusted difference,
its 95% CI and p-value, and a TOST equivalence test with a ±1% relative margin:

- **this engine** (``experiments.stats``): ``CovariateMeanStatistic.from_values`` per arm
  (one cache-blocked pass of shifted sums, with Σ(y−K)³ for the skewness), ``cuped``, ``tost``.
  Also timed without Σ(y−K)³ (``cubes=False``: no skewness) and on the same data + 1e8
  (the shift K ≠ 0 is subtracted block by block; its TOST margin is relative to a mean of
  1e8, so its TOST p differs — the CUPED difference and p must agree).
- **from ready sufficient statistics**: the same ``cuped`` + ``tost`` on statistics already
  aggregated (what the control plane does with SQL aggregates), µs per comparison.
- **numpy one pass (floor)**: ``np.add.reduce`` of every input array (y and x of each arm) —
  every value read once, the floor any engine that looks at the raw data must pay.  It is
  timed twice: under the same threading as this engine (``same threads``: above the
  engine's parallel threshold the arrays are cut into the engine's tasks, taken in turn by
  as many threads as it uses; BLAS is not involved) and as plain ``y.sum()`` on one thread.
  The goal is checked against the faster of the two at each size: a one-thread floor alone
  would credit this engine with its second core, a threaded floor alone would credit it
  with a run in which the other core was busy.  (``numpy 5 reductions`` is the naive numpy
  route to the same sufficient statistics: Σy, Σx, y·y, x·x, x·y per arm.)
- **statsmodels**: θ from ``np.cov`` on the pooled arrays, adjusted arrays,
  ``CompareMeans.ttest_ind`` / ``tconfint_diff`` and ``ttost_ind`` (Welch).
- **gbstats** (GrowthBook; pins numpy<2, so it runs in its own virtualenv
  ``.bench-venvs/gbstats``): numpy aggregates → ``SampleMeanStatistic`` /
  ``RegressionAdjustedStatistic`` + ``compute_theta`` → ``TwoSidedTTest`` and two one-sided
  tests at ±δ for TOST.  Also timed from ready statistics.
- **tea-tasting** (its own virtualenv ``.bench-venvs/tea-tasting``): a pyarrow table with a
  variant column, ``Experiment`` with ``Mean("y", "x")`` at 95% (CUPED CI, p-value) and at
  90% (TOST decision: the 90% CI inside ±δ).

Peers in other virtualenvs run this same file as a worker (``--worker NAME``); they draw
the identical data from the seed (PCG64 streams are stable across numpy versions; a
checksum is compared) and report their best-of-N wall time.  Times are the best of
``--repeats`` runs.  Install: see bench/requirements-bench.txt.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEED = 20240601
MARGIN_REL = 0.0005  # small enough that p-values stay informative at 10M users per arm
ALPHA = 0.05
PEER_VENVS = {
    "gbstats": ROOT / ".bench-venvs" / "gbstats",
    "tea-tasting": ROOT / ".bench-venvs" / "tea-tasting",
}


def make_data(n: int) -> dict[str, np.ndarray]:
    """y = 0.8·x + noise with a +0.01% treatment effect; ρ(x, y) ≈ 0.85."""
    rng = np.random.default_rng(SEED)
    xc = rng.normal(10.0, 2.0, n)
    yc = 0.8 * xc + 2.0 + rng.normal(0.0, 1.0, n)
    xt = rng.normal(10.0, 2.0, n)
    yt = 0.8 * xt + 2.0 + rng.normal(0.001, 1.0, n)
    return {"yc": yc, "xc": xc, "yt": yt, "xt": xt}


def checksum(d: dict[str, np.ndarray]) -> float:
    return float(d["yc"][:1000].sum() + d["xt"][-1000:].sum())


def best_of(fn: Callable[[], dict[str, Any]], repeats: int) -> tuple[float, dict[str, Any]]:
    best, out = math.inf, {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def per_call(fn: Callable[[], object], budget_s: float = 0.3) -> float:
    """Mean seconds per call over ~budget_s (best of 3 such runs)."""
    fn()
    calls = 1
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    calls = max(10, int(budget_s / one))
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


# --- engines in this process --------------------------------------------------------------


def ours_raw(d: dict[str, np.ndarray], cubes: bool = True) -> dict[str, Any]:
    from experiments.stats import CovariateMeanStatistic, cuped, tost

    c = CovariateMeanStatistic.from_values(d["yc"], d["xc"], cubes=cubes)
    t = CovariateMeanStatistic.from_values(d["yt"], d["xt"], cubes=cubes)
    res = cuped(c, t, ALPHA)
    eq = tost(res, MARGIN_REL, ALPHA, relative=True)
    return {
        "diff": res.diff,
        "ci": res.ci,
        "p": res.p_value,
        "tost_p": eq.p_value,
        "equivalent": eq.equivalent,
    }


OFFSET = 1e8  # issue #16: values far from zero relative to their spread take the shifted route


def ours_raw_offset(d: dict[str, np.ndarray]) -> dict[str, Any]:
    """The same engine on the same data + 1e8: the shift K ≠ 0 is subtracted block by block."""
    return ours_raw(d)


def ours_from_stats_factory(d: dict[str, np.ndarray]) -> Callable[[], object]:
    from experiments.stats import CovariateMeanStatistic, cuped, tost

    c = CovariateMeanStatistic.from_values(d["yc"], d["xc"])
    t = CovariateMeanStatistic.from_values(d["yt"], d["xt"])
    return lambda: tost(cuped(c, t, ALPHA), MARGIN_REL, ALPHA, relative=True)


def numpy_one_pass_1thread(d: dict[str, np.ndarray]) -> dict[str, Any]:
    return {"sums": [float(d[k].sum()) for k in ("yc", "xc", "yt", "xt")]}


_floor_pool: ThreadPoolExecutor | None = None


def numpy_one_pass(d: dict[str, np.ndarray]) -> dict[str, Any]:
    """Every value read once by ``np.add.reduce``, threaded exactly as this engine threads."""
    global _floor_pool
    from experiments.stats import statistics as engine

    arrays = [d[k] for k in ("yc", "xc", "yt", "xt")]
    n = arrays[0].shape[0]
    if n < engine._PARALLEL_MIN or engine._WORKERS < 2:
        return numpy_one_pass_1thread(d)
    if _floor_pool is None:
        _floor_pool = ThreadPoolExecutor(max_workers=engine._WORKERS - 1)
    tasks = iter([(i, s) for i in range(len(arrays)) for s in range(0, n, engine._TASK)])
    add, step = np.add.reduce, engine._TASK

    def work() -> list[tuple[int, float]]:
        return [(i, float(add(arrays[i][s : s + step]))) for i, s in tasks]

    futures = [_floor_pool.submit(work) for _ in range(engine._WORKERS - 1)]
    parts = work()
    for f in futures:
        parts += f.result()
    sums = [0.0] * len(arrays)
    for i, v in parts:
        sums[i] += v
    return {"sums": sums}


def numpy_five_reductions(d: dict[str, np.ndarray]) -> dict[str, Any]:
    out = []
    for y, x in ((d["yc"], d["xc"]), (d["yt"], d["xt"])):
        out.append([y.sum(), x.sum(), y @ y, x @ x, x @ y])
    return {"sums": out}


def statsmodels_engine(d: dict[str, np.ndarray]) -> dict[str, Any]:
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttost_ind

    yc, xc, yt, xt = d["yc"], d["xc"], d["yt"], d["xt"]
    x_all, y_all = np.concatenate([xc, xt]), np.concatenate([yc, yt])
    theta = np.cov(y_all, x_all)[0, 1] / np.var(x_all, ddof=1)
    x_bar = x_all.mean()
    ac, at = yc - theta * (xc - x_bar), yt - theta * (xt - x_bar)
    cm = CompareMeans(DescrStatsW(at), DescrStatsW(ac))
    _, p, _ = cm.ttest_ind(usevar="unequal")
    ci = cm.tconfint_diff(alpha=ALPHA, usevar="unequal")
    delta = MARGIN_REL * yc.mean()
    tost_p, _, _ = ttost_ind(at, ac, -delta, delta, usevar="unequal")
    return {"diff": at.mean() - ac.mean(), "ci": ci, "p": p, "tost_p": tost_p, "equivalent": tost_p < ALPHA}


# --- peers in their own virtualenvs (this file run as a worker) ----------------------------


def _gbstats_from_sums(sums: list[list[float]], n: int) -> dict[str, Any]:
    from gbstats.frequentist.tests import (
        FrequentistConfig,
        OneSidedTreatmentGreaterTTest,
        OneSidedTreatmentLesserTTest,
        TwoSidedTTest,
    )
    from gbstats.models.statistics import RegressionAdjustedStatistic, SampleMeanStatistic, compute_theta

    stats = []
    for sy, sx, syy, sxx, sxy in sums:
        post = SampleMeanStatistic(n=n, sum=sy, sum_squares=syy)
        pre = SampleMeanStatistic(n=n, sum=sx, sum_squares=sxx)
        stats.append(
            RegressionAdjustedStatistic(
                n=n, post_statistic=post, pre_statistic=pre, post_pre_sum_of_products=sxy, theta=0
            )
        )
    theta = compute_theta(stats[0], stats[1])
    for s in stats:
        s.theta = theta
    a, b = stats
    cfg = FrequentistConfig(alpha=ALPHA, difference_type="absolute")
    res = TwoSidedTTest(a, b, cfg).compute_result()
    delta = MARGIN_REL * sums[0][0] / n
    lower = OneSidedTreatmentGreaterTTest(
        a, b, FrequentistConfig(alpha=ALPHA, difference_type="absolute", test_value=-delta)
    )
    upper = OneSidedTreatmentLesserTTest(
        a, b, FrequentistConfig(alpha=ALPHA, difference_type="absolute", test_value=delta)
    )
    tost_p = max(lower.compute_result().p_value, upper.compute_result().p_value)
    return {
        "diff": res.expected,
        "ci": list(res.ci),
        "p": res.p_value,
        "tost_p": tost_p,
        "equivalent": tost_p < ALPHA,
    }


def worker_gbstats(d: dict[str, np.ndarray], repeats: int) -> dict[str, Any]:
    n = d["yc"].size

    def run() -> dict[str, Any]:
        sums = []
        for y, x in ((d["yc"], d["xc"]), (d["yt"], d["xt"])):
            sums.append([float(y.sum()), float(x.sum()), float(y @ y), float(x @ x), float(x @ y)])
        return _gbstats_from_sums(sums, n)

    seconds, out = best_of(run, repeats)
    sums = [
        [float(y.sum()), float(x.sum()), float(y @ y), float(x @ x), float(x @ y)]
        for y, x in ((d["yc"], d["xc"]), (d["yt"], d["xt"]))
    ]
    out["seconds"] = seconds
    out["from_stats_seconds"] = per_call(lambda: _gbstats_from_sums(sums, n))
    return out


def worker_tea_tasting(d: dict[str, np.ndarray], repeats: int) -> dict[str, Any]:
    import pyarrow as pa
    import tea_tasting as tt

    n = d["yc"].size
    # The per-user table is the input format tea-tasting analyses; building it is not timed.
    table = pa.table(
        {
            "variant": np.repeat(np.array([0, 1], dtype=np.int8), n),
            "y": np.concatenate([d["yc"], d["yt"]]),
            "x": np.concatenate([d["xc"], d["xt"]]),
        }
    )
    exp = tt.Experiment(cuped=tt.Mean("y", "x"), tost90=tt.Mean("y", "x", confidence_level=1 - 2 * ALPHA))

    def run() -> dict[str, Any]:
        r = exp.analyze(table, control=0)
        main, t90 = r["cuped"], r["tost90"]
        delta = MARGIN_REL * main.control
        equivalent = -delta < t90.effect_size_ci_lower and t90.effect_size_ci_upper < delta
        return {"diff": main.effect_size, "ci": [main.effect_size_ci_lower, main.effect_size_ci_upper], "p": main.pvalue,
                "tost_p": None, "equivalent": bool(equivalent)}  # fmt: skip

    seconds, out = best_of(run, repeats)
    out["seconds"] = seconds
    return out


WORKERS = {"gbstats": worker_gbstats, "tea-tasting": worker_tea_tasting}


def run_worker(name: str, n: int, repeats: int) -> None:
    d = make_data(n)
    out = WORKERS[name](d, repeats)
    out["checksum"] = checksum(d)
    print(json.dumps(out, default=float))


def call_peer(name: str, n: int, repeats: int) -> dict[str, Any]:
    venv = PEER_VENVS[name]
    python = venv / "bin" / "python"
    if not python.exists():
        return {"error": f"not installed ({venv.relative_to(ROOT)}; see bench/requirements-bench.txt)"}
    proc = subprocess.run(
        [
            str(python),
            str(Path(__file__).resolve()),
            "--worker",
            name,
            "--size",
            str(n),
            "--repeats",
            str(repeats),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- report -----------------------------------------------------------------------------


def fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000,10000000", help="users per arm, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs per engine")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.size, args.repeats)
        return 0

    sys.path.insert(0, str(ROOT))
    load_start = os.getloadavg()[0]
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    engines = [
        "this engine (raw arrays)",
        "this engine, data + 1e8",
        "this engine, no Σy³",
        "numpy one pass, same threads",
        "numpy one pass, 1 thread",
        "numpy 5 reductions",
        "statsmodels",
        "gbstats",
        "tea-tasting",
    ]
    times: dict[str, dict[int, float | None]] = {e: {} for e in engines}
    results: dict[str, dict[int, dict[str, Any]]] = {e: {} for e in engines}
    from_stats: dict[str, float] = {}
    notes: list[str] = []
    for n in sizes:
        d = make_data(n)
        local = {
            "this engine (raw arrays)": ours_raw,
            "this engine, no Σy³": lambda d: ours_raw(d, cubes=False),
            "numpy one pass, same threads": numpy_one_pass,
            "numpy one pass, 1 thread": numpy_one_pass_1thread,
            "numpy 5 reductions": numpy_five_reductions,
            "statsmodels": statsmodels_engine,
        }
        for name, fn in local.items():
            reps = args.repeats * 3 if name != "statsmodels" else args.repeats
            times[name][n], results[name][n] = best_of(lambda fn=fn, d=d: fn(d), reps)
        shifted = {k: v + OFFSET for k, v in d.items()}
        times["this engine, data + 1e8"][n], results["this engine, data + 1e8"][n] = best_of(
            lambda shifted=shifted: ours_raw_offset(shifted), args.repeats * 3
        )
        del shifted
        if n == sizes[-1]:
            from_stats["this engine"] = per_call(ours_from_stats_factory(d))
        cs = checksum(d)
        del d
        for peer in ("gbstats", "tea-tasting"):
            out = call_peer(peer, n, args.repeats)
            if "error" in out:
                times[peer][n] = None
                notes.append(f"{peer} @ {n:,}: {out['error']}")
                continue
            if abs(out["checksum"] - cs) > 1e-6 * abs(cs):
                notes.append(f"{peer} @ {n:,}: data checksum differs ({out['checksum']} vs {cs})")
            times[peer][n] = out["seconds"]
            results[peer][n] = out
            if peer == "gbstats" and n == sizes[-1]:
                from_stats["gbstats"] = out["from_stats_seconds"]

    largest = sizes[-1]
    ours_t = times["this engine (raw arrays)"][largest]
    header = ["engine", *[f"{n:,}/arm" for n in sizes], f"× ours @ {largest:,}"]
    rows = []
    for e in engines:
        t_big = times[e].get(largest)
        ratio = "-" if t_big is None or ours_t is None else f"{t_big / ours_t:.2f}×"
        rows.append([e, *[fmt_time(times[e].get(n)) for n in sizes], ratio])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(
        f"CUPED + 95% CI + TOST (±{MARGIN_REL:.2%} relative) from raw per-user arrays, best of {args.repeats}"
    )
    print(f"{os.cpu_count()} CPUs; load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print(line)
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)))
    print(line)
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    print(line)
    print("From ready sufficient statistics (CUPED + CI + TOST, per comparison):")
    for k, v in from_stats.items():
        print(f"  {k:<12} {fmt_time(v)}")

    # Agreement: every engine's CUPED difference, p-value and TOST decision at the largest size.
    print(f"Agreement at {largest:,}/arm (CUPED diff, p, TOST p, equivalent):")
    for e in ("this engine (raw arrays)", "this engine, data + 1e8", "statsmodels", "gbstats", "tea-tasting"):
        r = results[e].get(largest)
        if r:
            tp = "-" if r.get("tost_p") is None else f"{r['tost_p']:.4g}"
            print(f"  {e:<26} {r['diff']:+.9g}  {r['p']:.9g}  {tp}  {r['equivalent']}")

    def measured(engine: str) -> dict[int, float]:
        return {n: t for n, t in times[engine].items() if t is not None}

    ours_all = measured("this engine (raw arrays)")
    same_all, one_all = measured("numpy one pass, same threads"), measured("numpy one pass, 1 thread")
    floor_all = {n: min(same_all[n], one_all[n]) for n in sizes}
    floor = floor_all[largest]
    tea = times["tea-tasting"].get(largest)
    print("Goals:")
    print(f"  from statistics ≤ 50 µs: {fmt_time(from_stats.get('this engine'))}")
    if ours_t:
        print(f"  raw arrays within 2× of one numpy pass (the faster floor): {ours_t / floor:.2f}× "
              f"(vs numpy 5 reductions: {ours_t / measured('numpy 5 reductions')[largest]:.2f}×)")  # fmt: skip
        for label, base in (
            ("the faster floor", floor_all),
            ("same threads", same_all),
            ("1 thread", one_all),
        ):
            ratios = ", ".join(f"{n:,}: {ours_all[n] / base[n]:.2f}×" for n in sizes)
            print(f"    ÷ one numpy pass, {label + ':':<17} {ratios}")
        nocube_all = measured("this engine, no Σy³")
        ratios = ", ".join(f"{n:,}: {nocube_all[n] / floor_all[n]:.2f}×" for n in sizes)
        print(f"  without Σy³ (no skewness) ÷ the faster floor: {ratios}")
        off_all = measured("this engine, data + 1e8")
        ratios = ", ".join(f"{n:,}: {off_all[n] / floor_all[n]:.2f}×" for n in sizes)
        print(f"  data + 1e8 (shift applied) ÷ the faster floor: {ratios}")
    if ours_t and tea:
        print(f"  ≥ 40× faster than tea-tasting @ {largest:,}: {tea / ours_t:.0f}×")
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
