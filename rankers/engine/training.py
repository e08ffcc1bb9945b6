"""End-to-end training of the three stacks in a simulated world.

Order (what a real migration has to work with):

1. a randomized bootstrap log (exploration budget);
2. legacy stacks trained on it: content-first per-action logistic models, interest-first
   two-tower + single engagement model;
3. legacy logs: each user is served by *their* legacy stack (half content-first, half
   interest-first) — the logs the unified stack learns from;
4. unified: two-tower on all positives, MTL on all impressions (position as a feature, set to
   0 at serving: the position-debiasing trick of "position as a feature"), pass 0 distilled
   from the pass-1 value, value weights v1 hand-set and v2 proposed from the survey;
5. offline report: per-head AUC / log loss / calibration on held-out users, NDCG@k against
   ground truth per stack.
"""

from __future__ import annotations

import io
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rankers.engine.ann import HNSWIndex, VectorIndex, build_index, measure_ann
from rankers.engine.evaluation import binary_head_report, ndcg_at_k, regression_head_report
from rankers.engine.features import (
    CONTENT_FIRST_FEATURES,
    DENSE_FEATURES,
    INTEREST_FIRST_FEATURES,
    PASS0_FEATURES,
    columns,
    dense_features,
    sparse_features,
)
from rankers.engine.logs import (
    POLICY_CONTENT_FIRST,
    POLICY_INTEREST_FIRST,
    ImpressionLog,
    bootstrap_log,
    stack_log,
)
from rankers.engine.nets import MTLConfig, MTLPredictor, MTLTrainData, fit_logistic, predict_mtl, train_mtl
from rankers.engine.passes import Pass2Config
from rankers.engine.stacks import ContentFirstStack, InterestFirstStack, Pass0Model, UnifiedMTLStack
from rankers.engine.two_tower import (
    InteractionsTable,
    TwoTowerConfig,
    TwoTowerRetriever,
    steps_for,
    train_two_tower,
)
from rankers.engine.types import SURFACES, RankRequest
from rankers.engine.value import ValueModelRegistry, fit_survey_weights, rescale_like
from rankers.engine.world import ACTIONS, FORMATS, HEADS, FeatureStore, World, WorldConfig


@dataclass(frozen=True, slots=True)
class TrainConfig:
    bootstrap_requests: int = 6_000
    legacy_requests: int = 6_000  # per legacy stack
    two_tower: TwoTowerConfig = field(
        default_factory=lambda: TwoTowerConfig(
            dim=32, id_dim=16, hidden=64, temperature=0.07, epochs=3, batch_size=1024, lr=0.005
        )
    )
    mtl_epochs: int = 2
    mtl_batch_size: int = 2048
    mtl_lr: float = 2e-3
    mtl_architecture: str = "shared_bottom"
    mtl_bottom: tuple[int, ...] = (256, 128)
    pass0_users: int = 120
    eval_users: int = 150
    ndcg_k: tuple[int, ...] = (10, 50)
    holdout_fraction: float = 0.1
    hnsw_ef: int = 800
    seed: int = 11

    @classmethod
    def for_world(cls, world: WorldConfig) -> TrainConfig:
        if world.n_posts <= 20_000:
            return cls(
                bootstrap_requests=2_500,
                legacy_requests=1_500,
                two_tower=TwoTowerConfig(
                    dim=32, id_dim=16, hidden=64, temperature=0.07, epochs=4, batch_size=512, lr=0.005
                ),
                mtl_batch_size=512,
                mtl_lr=2e-3,
                pass0_users=80,
                eval_users=120,
            )
        return cls()


@dataclass(slots=True)
class TrainedStacks:
    world: World
    content_first: ContentFirstStack
    interest_first: InterestFirstStack
    unified: UnifiedMTLStack
    metrics: dict[str, Any] = field(default_factory=dict)
    mtl_config: MTLConfig | None = None
    train_config: TrainConfig | None = None

    def stack(self, kind: str) -> Any:
        return {
            "content_first": self.content_first,
            "interest_first": self.interest_first,
            "unified_mtl": self.unified,
        }[kind]


def world_user_features(store: FeatureStore) -> np.ndarray:
    return np.concatenate([store.user_topic_hist, store.user_format_hist], axis=1).astype(np.float32)


def world_item_features(store: FeatureStore) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    impr = store.post_impressions
    dense = np.stack(
        [
            np.exp(-store.post_age_h / 24.0),
            (store.post_likes + 1.0) / (impr + 20.0) * 10.0,
            store.author_quality_signal[store.post_author] * 10.0,
            np.log1p(impr) / 5.0,
        ],
        axis=1,
    ).astype(np.float32)
    cats = np.stack([store.post_topic, store.post_format, store.post_author], axis=1).astype(np.int64)
    return dense, cats, (store.n_topics, len(FORMATS), store.n_authors)


def world_interactions(store: FeatureStore, log: ImpressionLog) -> InteractionsTable:
    pos = log.positives
    imp = log.impressions
    item_dense, item_cats, sizes = world_item_features(store)
    return InteractionsTable(
        user=imp.user_id[pos],
        item=imp.post_id[pos],
        timestamp=(imp.request_index[pos]).astype(np.float64),
        n_users=store.n_users,
        n_items=store.n_posts,
        user_features=world_user_features(store),
        item_features=item_dense,
        item_categories=item_cats,
        item_category_sizes=sizes,
    )


def log_features(store: FeatureStore, log: ImpressionLog, retriever: TwoTowerRetriever | None) -> np.ndarray:
    """Offline recomputation of the dense features of logged rows (positions as logged)."""
    imp = log.impressions
    tower = None
    if retriever is not None:
        items = retriever.item_embeddings()
        tower = np.empty(len(imp), dtype=np.float32)
        for lo in range(0, len(imp), 200_000):
            sl = slice(lo, lo + 200_000)
            users = retriever.user_embeddings(imp.user_id[sl])
            tower[sl] = np.einsum("ij,ij->i", users, items[imp.post_id[sl]])
    return dense_features(
        store, imp.user_id, imp.post_id, log.surface, tower_scores=tower, positions=imp.position
    )


def _bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=True, dynamic_ncols=True)


def _two_tower(table: InteractionsTable, cfg: TwoTowerConfig, desc: str, progress: bool) -> TwoTowerRetriever:
    bar = _bar(steps_for(len(table), cfg), desc, progress)

    def tick(step: int, loss: float) -> None:
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")

    retriever = train_two_tower(table, cfg, progress=tick)
    bar.close()
    return retriever


def sha256_of_state(obj: Any) -> str:
    import hashlib

    buf = io.BytesIO()
    torch.save(obj, buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def train_all(
    world: World, cfg: TrainConfig | None = None, progress: bool = False, device: str | None = None
) -> TrainedStacks:
    """Train every stack in ``world``; returns the stacks and the offline report."""
    tc = cfg or TrainConfig.for_world(world.config)
    store = world.store
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    stage = t0

    def lap(name: str) -> None:
        nonlocal stage
        now = time.perf_counter()
        timings[name] = round(now - stage, 2)
        stage = now

    # 1. Bootstrap log.
    boot = bootstrap_log(world, tc.bootstrap_requests, seed=tc.seed)
    lap("bootstrap_log")

    # 2a. Content-first: per-action logistic models on content/author/connection features.
    boot_dense = log_features(store, boot, None)
    cf_model = fit_logistic(boot_dense[:, columns(CONTENT_FIRST_FEATURES)], boot.impressions.actions)
    content_first = ContentFirstStack(
        store, cf_model, stack_key=f"content_first@{sha256_of_state(cf_model.state_dict())[:12]}"
    )
    lap("content_first")

    # 2b. Interest-first: two-tower on bootstrap positives + single engagement model.
    legacy_tt = _two_tower(
        world_interactions(store, boot), tc.two_tower, "interest-first two-tower", progress
    )
    legacy_index = build_index(legacy_tt.item_embeddings(), ef=tc.hnsw_ef)
    boot_dense_tt = log_features(store, boot, legacy_tt)
    engaged = boot.impressions.actions[:, :3].max(1)
    if_model = fit_logistic(boot_dense_tt[:, columns(INTEREST_FIRST_FEATURES)], engaged)
    interest_first = InterestFirstStack(
        store,
        legacy_tt,
        legacy_index,
        if_model,
        stack_key=f"interest_first@{sha256_of_state(if_model.state_dict())[:12]}",
    )
    lap("interest_first")

    # 3. Legacy logs: each user's own legacy stack serves them (user parity decides which).
    rng = np.random.default_rng(tc.seed + 1)
    users = world.sample_users(2 * tc.legacy_requests, rng)
    cf_users, if_users = users[users % 2 == 0], users[users % 2 == 1]
    bar = _bar(int(users.size), "legacy stacks serving", progress)
    tick = bar.update
    legacy = ImpressionLog.concat(
        [
            stack_log(world, content_first, POLICY_CONTENT_FIRST, cf_users, seed=tc.seed + 2, progress=tick),
            stack_log(
                world, interest_first, POLICY_INTEREST_FIRST, if_users, seed=tc.seed + 3, progress=tick
            ),
        ]
    )
    bar.close()
    lap("legacy_logs")

    # 4a. Unified two-tower on all positives.
    all_logs = ImpressionLog.concat([boot, legacy])
    unified_tt = _two_tower(
        world_interactions(store, all_logs),
        replace(tc.two_tower, seed=tc.seed + 4),
        "unified two-tower",
        progress,
    )
    item_emb = unified_tt.item_embeddings()
    index = build_index(item_emb, ef=tc.hnsw_ef)
    lap("unified_two_tower")

    # 4b. MTL on all impressions, held-out users for the offline report.
    dense = log_features(store, all_logs, unified_tt)
    imp = all_logs.impressions
    sparse = sparse_features(store, imp.user_id, imp.post_id, all_logs.surface)
    holdout = (imp.user_id * 2654435761 % 1000) < tc.holdout_fraction * 1000
    mcfg = MTLConfig(
        n_users=store.n_users,
        n_authors=store.n_authors,
        n_topics=store.n_topics,
        n_formats=len(FORMATS),
        n_groups=store.n_groups,
        n_surfaces=len(SURFACES),
        n_dense=len(DENSE_FEATURES),
        architecture=tc.mtl_architecture,
        bottom=tc.mtl_bottom,
        epochs=tc.mtl_epochs,
        batch_size=tc.mtl_batch_size,
        lr=tc.mtl_lr,
        seed=tc.seed + 5,
    )
    train_mask = ~holdout
    data = MTLTrainData(
        sparse=sparse[train_mask],
        dense=dense[train_mask],
        actions=imp.actions[train_mask],
        log_dwell=np.log1p(imp.dwell[train_mask]),
    )
    bar = _bar(mcfg.epochs * max(1, int(train_mask.sum()) // mcfg.batch_size), "unified MTL", progress)

    def mtl_tick(step: int, loss: float) -> None:
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss:.4f}")

    mtl, mtl_history, _ = train_mtl(mcfg, data, progress=mtl_tick)
    bar.close()
    predictor = MTLPredictor(mtl).eval()
    lap("unified_mtl")

    # 5a. Per-head offline report on held-out users.
    y_hold = predict_mtl(predictor, sparse[holdout], dense[holdout])
    head_report: dict[str, Any] = {}
    for k, a in enumerate(ACTIONS):
        head_report[a] = binary_head_report(a, imp.actions[holdout, k], y_hold[:, k]).as_dict()
    head_report["dwell"] = regression_head_report(
        "dwell", np.log1p(imp.dwell[holdout]), y_hold[:, len(ACTIONS)]
    )

    # 4c. Value model: v1 hand-set; v2 proposed by the survey fit on the legacy-log answers.
    values = ValueModelRegistry()
    asked = imp.survey_asked & ~holdout
    y_survey = predict_mtl(predictor, sparse[asked], dense[asked])
    parent = values.current.weights
    fit = fit_survey_weights(y_survey, imp.survey_worth[asked], prior=parent)
    values.propose(
        rescale_like(fit.weights, parent),
        source="survey_fit",
        diagnostics={
            "r2": fit.r2,
            "n": float(fit.n),
            "shrinkage": fit.shrinkage,
            "prior_scale": fit.prior_scale,
        },
    )

    # 4d. Pass 0 distilled from the pass-1 value over full retrieval sets of sample users.
    unified = UnifiedMTLStack(
        store, unified_tt, index, predictor, Pass0Model(np.zeros(len(PASS0_FEATURES), np.float32), 0.0), values,
        stack_key="unified_mtl@pending", device=device, pass2=Pass2Config(),
    )  # fmt: skip
    pass0, pass0_metrics = fit_pass0(world, unified, tc.pass0_users, seed=tc.seed + 6)
    unified.pass0 = pass0
    unified.stack_key = f"unified_mtl@{sha256_of_state(mtl.state_dict())[:12]}"
    lap("pass0_and_value")

    # 5b. NDCG@k against ground truth per stack (and per value-model version for unified).
    eval_users = world.sample_users(tc.eval_users, np.random.default_rng(tc.seed + 7))
    stacks: dict[str, Any] = {"content_first": content_first, "interest_first": interest_first}
    for v in values.versions:
        stacks[f"unified_mtl[{v.version}]"] = unified.with_value_version(v.version)
    ndcg = ndcg_report(world, stacks, eval_users, tc.ndcg_k)
    # Activate the survey-fit version only if it does at least as well offline as the current.
    best = max(values.versions, key=lambda v: ndcg[f"unified_mtl[{v.version}]"][f"ndcg@{tc.ndcg_k[0]}"])
    values.activate(best.version)
    unified.value_version = best.version
    ndcg["unified_mtl"] = ndcg[f"unified_mtl[{best.version}]"]
    lap("evaluation")

    ann = None
    if isinstance(index, HNSWIndex):
        queries = unified_tt.user_embeddings(eval_users[:200])
        ann = measure_ann(index, item_emb, queries, k=500).as_dict()
    metrics = {
        "world": world.describe(),
        "logs": {
            "bootstrap_impressions": len(boot),
            "legacy_impressions": len(legacy),
            "content_first_summary": legacy.subset(
                legacy.policy == POLICY_CONTENT_FIRST
            ).impressions.summary(),
            "interest_first_summary": legacy.subset(
                legacy.policy == POLICY_INTEREST_FIRST
            ).impressions.summary(),
        },
        "heads": head_report,
        "ndcg": ndcg,
        "value_model": {
            "versions": [v.to_dict() for v in values.versions],
            "active": values.active,
            "survey_std_errors": fit.std_errors,
        },
        "pass0": pass0_metrics,
        "two_tower": {
            "legacy_final_loss": float(np.mean(legacy_tt.history[-20:])),
            "unified_final_loss": float(np.mean(unified_tt.history[-20:])),
            "index": index.kind,
        },
        "mtl": {"final_loss": float(np.mean(mtl_history[-50:])), "config": mcfg.to_dict()},
        "ann": ann,
        "timings_s": timings,
        "train_seconds": round(time.perf_counter() - t0, 2),
        "torch_threads": torch.get_num_threads(),
    }
    return TrainedStacks(world, content_first, interest_first, unified, metrics, mcfg, tc)


def fit_pass0(
    world: World, unified: UnifiedMTLStack, n_users: int, seed: int, keep: int = 500
) -> tuple[Pass0Model, dict[str, float]]:
    """Ridge regression of the pass-1 value on the cheap pass-0 features (distillation).

    Reports pass-0 recall: the share of the top-50 posts by full value (over all ~1000
    retrieved) that survive pass 0's cut to ``keep`` — on users not used for the fit.
    """
    store = world.store
    rng = np.random.default_rng(seed)
    users = world.sample_users(2 * n_users, rng)
    cols = columns(PASS0_FEATURES)
    rows_x, rows_v, per_user = [], [], []
    for u in users:
        surface = SURFACES[int(rng.random() < 0.4)]
        ue = unified._user_embedding(int(u))
        cands = unified.retrieve(int(u), surface, ue)
        cands = cands[~store.post_flagged[cands]]
        tower = unified._item_emb[cands] @ ue
        dense = dense_features(
            store, np.full(cands.size, u), cands, SURFACES.index(surface), tower_scores=tower
        )
        v = unified.score_features(int(u), surface, cands, dense)
        per_user.append((dense, v))
    fit_part, eval_part = per_user[:n_users], per_user[n_users:]
    for dense, v in fit_part:
        # Centre per user: pass 0 only has to order candidates within a request.
        rows_x.append(dense[:, cols])
        rows_v.append(v - v.mean())
    x = np.concatenate(rows_x).astype(np.float64)
    y = np.concatenate(rows_v).astype(np.float64)
    mean, std = x.mean(0), np.where(x.std(0) < 1e-9, 1.0, x.std(0))
    z = (x - mean) / std
    beta = np.linalg.solve(z.T @ z + 1e-3 * len(y) * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    w = (beta / std).astype(np.float32)
    model = Pass0Model(w, float(-(beta / std) @ mean))
    recalls, sizes = [], []
    for dense, v in eval_part:
        s0 = model.score(dense)
        kept = np.argsort(-s0)[:keep]
        top = np.argsort(-v)[:50]
        recalls.append(np.isin(top, kept).mean())
        sizes.append(len(v))
    return model, {
        "recall_top50_in_kept": float(np.mean(recalls)),
        "mean_candidates": float(np.mean(sizes)),
        "keep": float(keep),
        "n_fit_users": float(n_users),
    }


def ndcg_report(
    world: World, stacks: dict[str, Any], users: np.ndarray, ks: tuple[int, ...], num_items: int = 50
) -> dict[str, dict[str, float]]:
    """Mean NDCG@k against ground-truth value for each stack over the same users/requests."""
    store = world.store
    eligible = ~store.post_flagged
    scores: dict[str, dict[int, list[float]]] = {name: {k: [] for k in ks} for name in stacks}
    true_value_mean: dict[str, list[float]] = {name: [] for name in stacks}
    online: dict[str, list[np.ndarray]] = {name: [] for name in stacks}
    rng = np.random.default_rng(0)
    for u in users:
        surface = SURFACES[int(rng.random() < 0.4)]
        gains_all = world.true_value_all(int(u))
        ideal = gains_all[eligible]
        for name, stack in stacks.items():
            served = np.array(stack.rank(RankRequest(int(u), surface, num_items)).post_ids, dtype=np.int64)
            g = gains_all[served]
            true_value_mean[name].append(float(g.mean()) if g.size else 0.0)
            # Simulated online outcome of the whole list (position bias + fatigue included);
            # the same seed per user gives every stack the same scroll depth and noise draws.
            imp = world.simulate_impressions(int(u), served, rng=np.random.default_rng(int(u)))
            a = imp.actions
            online[name].append(np.array([a[:, :3].sum(), a[:, 3:].sum(), imp.dwell.sum()], dtype=np.float64))
            for k in ks:
                val = ndcg_at_k(g, ideal, k)
                if not np.isnan(val):
                    scores[name][k].append(val)
    out: dict[str, dict[str, float]] = {}
    for name in stacks:
        out[name] = {f"ndcg@{k}": float(np.mean(scores[name][k])) for k in ks}
        out[name]["mean_true_value"] = float(np.mean(true_value_mean[name]))
        o = np.mean(online[name], axis=0)
        out[name]["sim_positive_actions_per_request"] = float(o[0])
        out[name]["sim_hides_reports_per_request"] = float(o[1])
        out[name]["sim_dwell_s_per_request"] = float(o[2])
        out[name]["n_users"] = float(len(users))
    return out


def describe_stack_timings(stack: Any, users: np.ndarray) -> dict[str, float]:
    """Mean per-stage timings over a few requests (used by the CLI summary)."""
    acc: dict[str, list[float]] = {}
    for u in users:
        res = stack.rank(RankRequest(int(u), "pages", 50))
        for k, v in res.stage_timings_ms.items():
            acc.setdefault(k, []).append(v)
    return {k: float(np.mean(v)) for k, v in acc.items()}


__all__ = [
    "HEADS",
    "TrainConfig",
    "TrainedStacks",
    "VectorIndex",
    "WorldConfig",
    "fit_pass0",
    "ndcg_report",
    "train_all",
]
