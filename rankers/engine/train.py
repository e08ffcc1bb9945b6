"""CLI: train the three stacks in a simulated world and save the artifacts.

    python -m rankers.engine.train --world default|small --out artifacts/ [--threads 2]

Prints progress bars (tqdm, stderr) and a summary: per-head offline report, NDCG@k per stack
against ground truth, value-model versions, training time per stage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rankers.engine.artifacts import save_stacks
from rankers.engine.parity import parity_experiment
from rankers.engine.training import TrainConfig, train_all
from rankers.engine.world import World, WorldConfig


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def summarize(metrics: dict[str, Any]) -> str:
    lines = [f"world: {json.dumps(metrics['world'])}"]
    rows = [["head", "AUC", "log loss", "calib (pred/obs)", "ECE"]]
    for head, r in metrics["heads"].items():
        if head == "dwell":
            rows.append(
                [head, f"R2={r['r2']:.3f}", f"RMSE={r['rmse']:.3f}", f"{r['calibration_ratio']:.3f}", "-"]
            )
        else:
            rows.append(
                [
                    head,
                    f"{r['auc']:.4f}",
                    f"{r['log_loss']:.4f}",
                    f"{r['calibration_ratio']:.3f}",
                    f"{r['ece']:.5f}",
                ]
            )
    lines += ["", "per-head offline report (held-out users):", _table(rows)]
    rows = [
        [
            "stack",
            "NDCG@10",
            "NDCG@50",
            "true value",
            "sim +actions/req",
            "sim hides+reports/req",
            "sim dwell s/req",
        ]
    ]
    for name, r in metrics["ndcg"].items():
        rows.append([name, f"{r['ndcg@10']:.4f}", f"{r['ndcg@50']:.4f}", f"{r['mean_true_value']:.3f}",
                     f"{r['sim_positive_actions_per_request']:.2f}", f"{r['sim_hides_reports_per_request']:.3f}",
                     f"{r['sim_dwell_s_per_request']:.1f}"])  # fmt: skip
    lines += ["", "NDCG vs ground truth:", _table(rows)]
    vm = metrics["value_model"]
    for v in vm["versions"]:
        w = ", ".join(f"{k}={x:+.3f}" for k, x in v["weights"].items())
        lines.append(f"value model {v['version']} ({v['source']}): {w}")
    lines.append(f"active value model: {vm['active']}")
    lines.append(f"pass 0: {json.dumps(metrics['pass0'])}")
    if metrics.get("ann"):
        lines.append(f"ANN: {json.dumps(metrics['ann'])}")
    if metrics.get("parity"):
        lines.append(f"parity: {json.dumps(metrics['parity'])}")
    lines.append(f"stage seconds: {json.dumps(metrics['timings_s'])}")
    lines.append(f"training seconds (total): {metrics['train_seconds']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world", choices=("default", "small"), default="small")
    parser.add_argument("--out", type=Path, default=Path("artifacts"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--no-export", action="store_true", help="skip torch.export of the MTL model")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cpu_start = time.process_time()
    world = World.build(WorldConfig.named(args.world, seed=args.seed))
    print(f"built world {args.world} in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    trained = train_all(world, TrainConfig.for_world(world.config), progress=not args.quiet)
    # Train-serve parity on a sample: offline snapshot vs online counters after some traffic.
    rng = np.random.default_rng(1)
    report, _ = parity_experiment(
        world, trained.unified, world.sample_users(50, rng), world.sample_users(300, rng)
    )
    trained.metrics["parity"] = {
        "worst_features": report.worst_features(4),
        "score_mean_abs_diff": report.score_mean_abs_diff,
        "score_p99_abs_diff": report.score_p99_abs_diff,
        "n_rows": report.n_rows,
    }
    manifests = save_stacks(trained, args.out, export=not args.no_export)
    trained.metrics["total_seconds_including_world_and_save"] = round(time.perf_counter() - start, 2)
    print(summarize(trained.metrics))
    for kind, m in manifests.items():
        print(
            f"saved {kind}: {args.out / world.config.name / kind} sha256={m['sha256'][:16]}… key={m['stack_key']}"
        )
    cpu = time.process_time() - cpu_start
    wall = time.perf_counter() - start
    # On a shared machine wall time includes waiting for other processes; CPU seconds / threads is
    # the wall time this run would take with the cores to itself.
    print(f"total wall time (world + training + parity + save): {wall:.1f}s; process CPU {cpu:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
