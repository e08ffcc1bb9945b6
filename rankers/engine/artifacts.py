"""Trained-stack artifacts: weights + config + metrics + sha256 manifest, and loading them back.

Layout (one directory per world and stack kind)::

    <out>/<world>/<kind>/weights.pt        torch.save of state dicts and numpy side data
    <out>/<world>/<kind>/config.json       world config, model configs, feature lists
    <out>/<world>/<kind>/metrics.json      offline report
    <out>/<world>/<kind>/manifest.json     sha256 of every file above (+ export/index files)
    <out>/<world>/unified_mtl/model.pt2    torch.export of the MTL predictor (serving engines)
    <out>/<world>/<kind>/index.hnsw        HNSW index when the corpus is large

Stacks are rebuilt against the *same* world (its config is checked), because the world's
feature store holds the observable data the stacks read at serving time.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rankers.engine.ann import EXACT_MAX_ITEMS, ExactIndex, HNSWIndex, VectorIndex
from rankers.engine.features import (
    CONTENT_FIRST_FEATURES,
    DENSE_FEATURES,
    INTEREST_FIRST_FEATURES,
    SPARSE_FEATURES,
)
from rankers.engine.manifest import MANIFEST, ArtifactError, read_manifest, sha256_file, verify
from rankers.engine.nets import LogisticActions, MTLConfig, MTLModel, MTLPredictor
from rankers.engine.stacks import ContentFirstStack, InterestFirstStack, Pass0Model, UnifiedMTLStack
from rankers.engine.two_tower import TwoTowerRetriever, load_state, save_state
from rankers.engine.value import ValueModelRegistry
from rankers.engine.world import World

FORMAT_VERSION = 1
__all__ = ["MANIFEST", "ArtifactError", "load_stack", "read_manifest", "save_stacks", "sha256_file", "verify"]


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o)}")


def _finish(directory: Path, kind: str, stack_key: str, world: World) -> dict[str, Any]:
    files = {
        p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST
    }
    # The artifact's identity is the hash of its weights file; the version string derives from it.
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "stack_key": stack_key,
        "sha256": files["weights.pt"],
        "files": files,
        "world": asdict(world.config),
        "created_at": datetime.now(UTC).isoformat(),
        "torch": torch.__version__,
    }
    _write_json(directory / MANIFEST, manifest)
    return manifest


def _save_index(index: VectorIndex, directory: Path) -> dict[str, Any]:
    if isinstance(index, HNSWIndex):
        index.save(directory / "index.hnsw")
        return {"kind": "hnsw", "ef": index.ef, "dim": index.dim, "size": index.size}
    return {"kind": "exact"}


def save_stacks(trained: Any, out_dir: Path, export: bool = True) -> dict[str, dict[str, Any]]:
    """Save all three stacks of a :class:`~rankers.engine.training.TrainedStacks`."""
    world: World = trained.world
    root = Path(out_dir) / world.config.name
    manifests: dict[str, dict[str, Any]] = {}
    metrics = trained.metrics

    cf: ContentFirstStack = trained.content_first
    d = root / "content_first"
    d.mkdir(parents=True, exist_ok=True)
    torch.save({"model": cf.model.state_dict()}, d / "weights.pt")
    _write_json(
        d / "config.json",
        {"world": asdict(world.config), "features": list(CONTENT_FIRST_FEATURES), "value_weights": cf.value_weights,
         "candidate_limit": cf.candidate_limit, "per_source": cf.per_source},
    )  # fmt: skip
    _write_json(
        d / "metrics.json",
        {"ndcg": metrics["ndcg"]["content_first"], "logs": metrics["logs"]["content_first_summary"]},
    )
    manifests["content_first"] = _finish(d, "content_first", cf.stack_key, world)

    itf: InterestFirstStack = trained.interest_first
    d = root / "interest_first"
    d.mkdir(parents=True, exist_ok=True)
    torch.save({"model": itf.model.state_dict(), "two_tower": save_state(itf.retriever)}, d / "weights.pt")
    index_cfg = _save_index(itf.index, d)
    _write_json(
        d / "config.json",
        {
            "world": asdict(world.config),
            "features": list(INTEREST_FIRST_FEATURES),
            "index": index_cfg,
            "k_retrieve": itf.k_retrieve,
        },
    )
    _write_json(
        d / "metrics.json",
        {"ndcg": metrics["ndcg"]["interest_first"], "logs": metrics["logs"]["interest_first_summary"]},
    )
    manifests["interest_first"] = _finish(d, "interest_first", itf.stack_key, world)

    un: UnifiedMTLStack = trained.unified
    d = root / "unified_mtl"
    d.mkdir(parents=True, exist_ok=True)
    mtl: MTLModel = un.predictor.model  # type: ignore[assignment]
    torch.save({"mtl": mtl.state_dict(), "two_tower": save_state(un.retriever)}, d / "weights.pt")
    index_cfg = _save_index(un.index, d)
    (d / "value_model.json").write_text(un.values.to_json())
    _write_json(
        d / "config.json",
        {
            "world": asdict(world.config),
            "mtl": mtl.cfg.to_dict(),
            "dense_features": list(DENSE_FEATURES),
            "sparse_features": list(SPARSE_FEATURES),
            "pass0": un.pass0.to_dict(),
            "pass2": asdict(un.pass2),
            "index": index_cfg,
            "funnel": {
                "k_ann": un.k_ann,
                "k_graph": un.k_graph,
                "k_trending": un.k_trending,
                "pass0_keep": un.pass0_keep,
            },
            "value_version": un.value_version,
        },
    )
    _write_json(
        d / "metrics.json",
        {
            k: metrics[k]
            for k in (
                "heads",
                "ndcg",
                "value_model",
                "pass0",
                "two_tower",
                "mtl",
                "ann",
                "timings_s",
                "train_seconds",
            )
        },
    )
    if export:
        export_mtl(MTLPredictor(mtl).eval(), d / "model.pt2")
    manifests["unified_mtl"] = _finish(d, "unified_mtl", un.stack_key, world)
    _write_json(root / "training_report.json", metrics)
    return manifests


def export_example_inputs(cfg: MTLConfig, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sparse = torch.stack(
        [
            torch.randint(0, cfg.n_users, (batch,), generator=g),
            torch.randint(0, cfg.n_authors, (batch,), generator=g),
            torch.randint(0, cfg.n_topics, (batch,), generator=g),
            torch.randint(0, cfg.n_formats, (batch,), generator=g),
            torch.randint(0, cfg.n_groups + 1, (batch,), generator=g),
            torch.randint(0, cfg.n_surfaces, (batch,), generator=g),
        ],
        dim=1,
    )
    return sparse, torch.rand(batch, cfg.n_dense, generator=g)


def export_mtl(predictor: MTLPredictor, path: Path) -> Path:
    """``torch.export`` with a dynamic batch dimension; loadable without this package's code."""
    cfg = predictor.model.cfg
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    ep = torch.export.export(
        predictor,
        export_example_inputs(cfg),
        dynamic_shapes={"sparse": {0: batch}, "dense": {0: batch}},
    )
    torch.export.save(ep, str(path))
    return path


def load_exported(path: Path) -> torch.nn.Module:
    return torch.export.load(str(path)).module()


def artifact_dir(out_dir: Path, world: World, kind: str) -> Path:
    return Path(out_dir) / world.config.name / kind


def has_artifact(out_dir: Path, world: World, kind: str) -> bool:
    d = artifact_dir(out_dir, world, kind)
    if not (d / MANIFEST).exists():
        return False
    return read_manifest(d).get("world") == asdict(world.config)


def _load_index(directory: Path, cfg: dict[str, Any], retriever: TwoTowerRetriever) -> VectorIndex:
    vectors = retriever.item_embeddings()
    if cfg["kind"] == "hnsw":
        return HNSWIndex.load(directory / "index.hnsw", dim=cfg["dim"], size=cfg["size"], ef=cfg["ef"])
    if vectors.shape[0] > EXACT_MAX_ITEMS:
        return HNSWIndex.build(vectors)
    return ExactIndex(vectors)


def load_stack(kind: str, world: World, out_dir: Path, device: str | None = None) -> Any:
    """Rebuild a saved stack against ``world`` (checks world config and sha256)."""
    d = artifact_dir(out_dir, world, kind)
    manifest = verify(d)
    if manifest["world"] != asdict(world.config):
        raise ArtifactError(f"{d} was trained for a different world config")
    cfg = json.loads((d / "config.json").read_text())
    blob = torch.load(d / "weights.pt", weights_only=False)
    store = world.store
    from rankers.engine.training import world_item_features, world_user_features  # avoid import cycle

    if kind == "content_first":
        model = LogisticActions(len(cfg["features"]), 5)
        model.load_state_dict(blob["model"])
        model.eval()
        return ContentFirstStack(
            store, model, stack_key=manifest["stack_key"], value_weights=cfg["value_weights"],
            candidate_limit=cfg["candidate_limit"], per_source=cfg["per_source"],
        )  # fmt: skip
    item_dense, item_cats, _ = world_item_features(store)
    retriever = load_state(blob["two_tower"], world_user_features(store), item_dense, item_cats)
    index = _load_index(d, cfg["index"], retriever)
    if kind == "interest_first":
        model = LogisticActions(len(cfg["features"]), 1)
        model.load_state_dict(blob["model"])
        model.eval()
        return InterestFirstStack(
            store, retriever, index, model, stack_key=manifest["stack_key"], k_retrieve=cfg["k_retrieve"]
        )
    if kind == "unified_mtl":
        from rankers.engine.passes import Pass2Config

        mtl = MTLModel(MTLConfig.from_dict(cfg["mtl"]))
        mtl.load_state_dict(blob["mtl"])
        mtl.eval()
        values = ValueModelRegistry.from_json((d / "value_model.json").read_text())
        f = cfg["funnel"]
        return UnifiedMTLStack(
            store, retriever, index, MTLPredictor(mtl), Pass0Model.from_dict(cfg["pass0"]), values,
            stack_key=manifest["stack_key"], device=device, value_version=cfg["value_version"],
            pass2=Pass2Config(**cfg["pass2"]), k_ann=f["k_ann"], k_graph=f["k_graph"],
            k_trending=f["k_trending"], pass0_keep=f["pass0_keep"],
        )  # fmt: skip
    raise ValueError(f"unknown stack kind {kind!r}")
