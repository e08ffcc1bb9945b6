"""Train the three ranking stacks in a simulated world and register them in the registry.

manage.py train_stacks --world small --out artifacts/ [--bench-json var/bench/rankers.json]
manage.py train_stacks --skip-train --out artifacts/ --world default --bench-json var/bench/rankers.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from controlplane.core.errors import ApplicationError

ACTOR = "system:train_stacks"
KINDS = ("content_first", "interest_first", "unified_mtl")


class Command(BaseCommand):
    help = "Train content-first, interest-first and unified MTL stacks, save artifacts, register versions."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--world", choices=("small", "default"), default="small")
        parser.add_argument("--seed", type=int, default=7)
        parser.add_argument("--out", type=Path, default=Path("artifacts"))
        parser.add_argument("--skip-train", action="store_true", help="Register artifacts already in --out.")
        parser.add_argument(
            "--bench-json", type=Path, help="bench/rankers.py output with measured throughput."
        )
        parser.add_argument("--slo-ms", type=float, default=None, help="p99 latency budget to record.")
        parser.add_argument("--threads", type=int, default=2)
        parser.add_argument("--quiet", action="store_true", help="No progress bars.")

    def handle(self, *args: Any, **options: Any) -> None:
        from rankers.services import artifact_register  # keeps `manage.py help` fast

        out: Path = options["out"]
        world_dir = out / options["world"]
        if not options["skip_train"]:
            import torch  # heavy: only when training

            from rankers.engine.artifacts import save_stacks
            from rankers.engine.training import train_all
            from rankers.engine.world import World, WorldConfig

            torch.set_num_threads(options["threads"])
            config = WorldConfig.named(options["world"], seed=options["seed"])

            def say(message: str) -> None:
                if not options["quiet"]:
                    self.stdout.write(message)

            say(
                f"[train] building the {config.name} world: {config.n_users:,} users, {config.n_posts:,} posts, "
                f"{config.n_authors:,} authors ({options['threads']} torch threads)"
            )
            started = time.perf_counter()
            world = World.build(config)
            say(
                f"[train] world built in {time.perf_counter() - started:.1f} s; training: bars for the two "
                "towers, the legacy serving logs and the MTL; bootstrap log, pass 0 + value model and "
                "evaluation run without one"
            )
            trained = train_all(world, progress=not options["quiet"])
            say(
                "[train] stages: "
                + ", ".join(f"{k} {v:.0f} s" for k, v in trained.metrics["timings_s"].items())
            )
            save_stacks(trained, out)
            self.stdout.write(f"trained in {trained.metrics['train_seconds']:.1f}s; artifacts in {world_dir}")
        bench = None
        if options["bench_json"]:
            try:
                bench = json.loads(options["bench_json"].read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise CommandError(f"cannot read {options['bench_json']}: {exc}") from exc
        for kind in KINDS:
            try:
                artifact = artifact_register(
                    artifact_dir=world_dir / kind, actor=ACTOR, bench=bench, latency_slo_ms=options["slo_ms"]
                )
            except ApplicationError as exc:
                raise CommandError(f"{kind}: {exc.message}") from exc
            stack = artifact.stack
            tput = (
                f"{stack.throughput_per_replica:.0f} req/s/replica"
                if stack.throughput_per_replica
                else "no bench"
            )
            self.stdout.write(
                self.style.SUCCESS(
                    f"registered {stack.label} ({kind}) sha256={artifact.sha256[:12]} · {tput}"
                )
            )
