"""Assignment throughput and single-decision latency, against a plain-Python hashlib loop.

Run: .venv/bin/python bench/assignment.py [--units 5000000]
Goals (2-core machine): bulk ≥ 5M units/s; one decision ≤ 20 µs p99.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controlplane.core.assignment import AllocationConfig, PopulationShare


def hashlib_loop(salt: str, ids: range) -> list[int]:
    """The naive peer: one sha256 per unit in a Python loop (what many SDKs do)."""
    return [
        int.from_bytes(hashlib.sha256(f"{salt}:{i}".encode()).digest()[:8], "little") % 10000 for i in ids
    ]


def percentile_us(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1e6, q))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=5_000_000)
    parser.add_argument("--decisions", type=int, default=200_000)
    args = parser.parse_args()

    config = AllocationConfig(
        surface="groups",
        version=3,
        salt="groups-bench",
        holdout_bp=100,
        treatment_bp=2500,
        treatment_stack="unified-mtl@1",
        populations=(
            PopulationShare("content_first", "content-first@1", 6000),
            PopulationShare("interest_first", "interest-first@1", 4000),
        ),
    )
    ids = np.arange(args.units, dtype=np.int64)
    config.assign_many(ids[:1000])  # warm up
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        config.assign_many(ids)
        best = min(best, time.perf_counter() - t0)
    bulk_rate = args.units / best

    peer_n = 300_000
    t0 = time.perf_counter()
    hashlib_loop("groups-bench", range(peer_n))
    peer_rate = peer_n / (time.perf_counter() - t0)

    # Single decisions with string ids, as the router sees them.
    unit_ids = [f"user-{i}" for i in range(args.decisions)]
    samples = []
    assign = config.assign
    clock = time.perf_counter
    for uid in unit_ids:
        t0 = clock()
        assign(uid)
        samples.append(clock() - t0)
    peer_samples = []
    for i in range(args.decisions // 4):
        t0 = clock()
        int.from_bytes(hashlib.sha256(f"groups-bench:user-{i}".encode()).digest()[:8], "little") % 10000
        peer_samples.append(clock() - t0)

    rows = [
        (
            "bulk assignment (numpy, arm + population)",
            f"{bulk_rate / 1e6:,.1f} M units/s",
            "≥ 5 M units/s",
            "PASS" if bulk_rate >= 5e6 else "FAIL",
        ),
        (
            "peer: hashlib sha256 Python loop (bucket only)",
            f"{peer_rate / 1e6:,.2f} M units/s",
            "",
            f"{bulk_rate / peer_rate:,.0f}× slower",
        ),
        ("single decision p50 (text id, arm + population)", f"{percentile_us(samples, 50):.2f} µs", "", ""),
        (
            "single decision p99",
            f"{percentile_us(samples, 99):.2f} µs",
            "≤ 20 µs",
            "PASS" if percentile_us(samples, 99) <= 20 else "FAIL",
        ),
        (
            "peer: hashlib single bucket p50 / p99",
            f"{percentile_us(peer_samples, 50):.2f} / {percentile_us(peer_samples, 99):.2f} µs",
            "",
            "",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>20}  {'goal':>14}  result")
    print("-" * (width + 50))
    for name, value, goal, result in rows:
        print(f"{name:<{width}}  {value:>20}  {goal:>14}  {result}")
    print(
        f"\n{args.units:,} units bulk (best of 5), {args.decisions:,} single decisions; python {sys.version.split()[0]}, numpy {np.__version__}"
    )


if __name__ == "__main__":
    main()
