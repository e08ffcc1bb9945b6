"""Register trained ranking-stack artifacts as stack versions in the control plane's registry.

The registry write itself is ``controlplane.core.services.stack_register`` (validated, idempotent,
audited); this module turns an artifact directory (verified against its sha256 manifest) and an
optional ``bench/rankers.py`` JSON into the facts that call records, and links the artifact row.
Torch is never imported here: manifests are read with :mod:`rankers.engine.manifest`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from controlplane.core.errors import ApplicationError
from controlplane.core.models import RankingStack
from controlplane.core.services import Actor, audit_record, stack_register
from controlplane.core.updates import model_update
from rankers.engine.manifest import ArtifactError, verify
from rankers.models import TrainedArtifact

# Registry stack families, matching the keys the demo seed uses.
STACK_FAMILY: dict[str, str] = {
    "content_first": "content-first",
    "interest_first": "interest-first",
    "unified_mtl": "unified-mtl",
}
DEFAULT_SLO_MS = 15.0
_DESCRIPTIONS: dict[str, str] = {
    "content_first": "Legacy: connection candidates, per-action logistic models, hand-set value weights.",
    "interest_first": "Legacy: two-tower + ANN over the corpus, single engagement model.",
    "unified_mtl": "Unified: graph+two-tower+trending retrieval, integrity, pass 0/1/2, MTL + value model.",
}


def _offline_summary(kind: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The offline figures the registry shows: NDCG vs ground truth, per-head report, value model."""
    out: dict[str, Any] = {}
    ndcg = metrics.get("ndcg", {})
    out["ndcg"] = ndcg.get(kind, ndcg) if kind == "unified_mtl" else ndcg
    if kind == "unified_mtl":
        out["ndcg_all_stacks"] = {
            name: {k: v for k, v in row.items() if k.startswith("ndcg@")} for name, row in ndcg.items()
        }
        out["heads"] = metrics.get("heads", {})
        vm = metrics.get("value_model", {})
        out["value_model_active"] = vm.get("active")
        out["value_model_versions"] = [v.get("version") for v in vm.get("versions", [])]
        out["pass0"] = metrics.get("pass0", {})
        out["train_seconds"] = metrics.get("train_seconds")
    return out


def _bench_facts(kind: str, engine_key: str, bench: Mapping[str, Any] | None) -> dict[str, Any]:
    """Measured serving figures for this artifact, only if the bench ran on this very artifact."""
    if not bench:
        return {}
    cap = bench.get("capacity", {}).get(kind)
    if not cap or cap.get("stack_key") != engine_key:
        return {}
    threads = cap.get("threads")
    stage = bench.get("results", {}).get("stacks", {}).get(kind, {})
    row = stage.get(str(threads)) if threads is not None else None
    facts: dict[str, Any] = {
        "device": RankingStack.Device.GPU if cap.get("device") == "cuda" else RankingStack.Device.CPU,
        "p99_latency_ms": float(cap["p99_ms"]),
    }
    if cap.get("meets_budget") and cap.get("throughput_rps_per_replica"):
        facts["throughput_per_replica"] = float(cap["throughput_rps_per_replica"])
    if cap.get("p50_ms") is not None:
        facts["p50_latency_ms"] = float(cap["p50_ms"])
    elif row:
        facts["p50_latency_ms"] = float(row["p50_ms"])
    if row:
        # Host CPU per request outside pass 1 (what stays on the CPU when pass 1 moves to a GPU).
        stages = row.get("stages", {})
        if kind == "unified_mtl" and "pass1" in stages:
            facts["host_cpu_ms_per_request"] = max(
                0.0, float(row["mean_ms"]) - float(stages["pass1"]["p50_ms"])
            )
    return facts


@transaction.atomic
def artifact_register(
    *,
    artifact_dir: Path | str,
    actor: Actor,
    bench: Mapping[str, Any] | None = None,
    latency_slo_ms: float | None = None,
    status: str | None = None,
    reason: str = "",
    now: dt.datetime | None = None,
) -> TrainedArtifact:
    """Verify an artifact directory and register it as a stack version (idempotent).

    The registry version is ``<world>-<sha256[:12]>`` under the kind's family key, so the same
    weights always map to the same version and re-registering them is a no-op (apart from newly
    measured bench figures, which update the stack through ``stack_register``).
    """
    directory = Path(artifact_dir)
    try:
        manifest = verify(directory)
    except ArtifactError as exc:
        raise ApplicationError(str(exc), field="artifact_dir") from exc
    kind = manifest["kind"]
    if kind not in STACK_FAMILY:
        raise ApplicationError(f"unknown stack kind {kind!r} in {directory}", field="artifact_dir")
    sha = manifest["sha256"]
    world = str(manifest["world"].get("name", "world"))
    config = json.loads((directory / "config.json").read_text())
    metrics = json.loads((directory / "metrics.json").read_text())
    facts = _bench_facts(kind, manifest["stack_key"], bench)
    slo = (
        latency_slo_ms
        or (bench or {}).get("capacity", {}).get(kind, {}).get("p99_budget_ms")
        or DEFAULT_SLO_MS
    )
    if status is None:
        status = RankingStack.Status.CANDIDATE if kind == "unified_mtl" else RankingStack.Status.ACTIVE
    stack = stack_register(
        key=STACK_FAMILY[kind],
        version=f"{world}-{sha[:12]}",
        kind=kind,
        latency_slo_ms=float(slo),
        actor=actor,
        status=status,
        offline_metrics=_offline_summary(kind, metrics),
        artifact={
            "uri": str(directory.resolve()),
            "sha256": sha,
            "engine_stack_key": manifest["stack_key"],
            "world": manifest["world"],
            "files": manifest["files"],
        },
        description=_DESCRIPTIONS[kind],
        reason=reason or f"trained artifact {sha[:12]}",
        **facts,
    )
    artifact, created = TrainedArtifact.objects.select_for_update().get_or_create(
        stack=stack,
        sha256=sha,
        defaults={
            "kind": kind,
            "world": world,
            "path": str(directory.resolve()),
            "engine_stack_key": manifest["stack_key"],
            "files": manifest["files"],
            "config": config,
            "metrics": metrics,
            "bench": dict(facts),
            "created_at": now or timezone.now(),
        },
    )
    if created:
        audit_record(
            actor=actor,
            verb="artifact.register",
            target=artifact,
            after={"stack": stack.label, "sha256": sha, "path": artifact.path},
            reason=reason,
            now=now,
        )
    elif facts and facts != artifact.bench:
        before = {"bench": artifact.bench}
        model_update(instance=artifact, data={"bench": dict(facts)})
        audit_record(
            actor=actor,
            verb="artifact.bench",
            target=artifact,
            before=before,
            after={"bench": facts},
            now=now,
        )
    return artifact
