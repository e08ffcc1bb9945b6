"""The three ranking stacks behind one interface: ``stack.rank(RankRequest) -> RankResult``.

* :class:`ContentFirstStack` (legacy): candidates from connections (followed pages, joined
  groups), per-action logistic models on content + author + connection features, hand-set
  value weights.
* :class:`InterestFirstStack` (legacy): two-tower user embedding → ANN over the whole corpus →
  a single engagement model P(like ∨ comment ∨ share).
* :class:`UnifiedMTLStack`: multi-source retrieval (graph + two-tower + trending) → integrity
  filter → pass 0 (cheap linear, ~1000 → 500) → pass 1 (MTL, six heads, batched, under
  ``torch.inference_mode`` on CUDA when present) → value model V = Σ w_k·Y_k → pass 2
  (dedup, author caps, topic diversity).

Each stage is timed with ``time.perf_counter`` into ``RankResult.stage_timings_ms``; the
effects knob (:class:`rankers.engine.world.Effects`) adds its latency to the reported total.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from rankers.engine.ann import VectorIndex
from rankers.engine.features import (
    CONTENT_FIRST_FEATURES,
    DENSE_FEATURES,
    INTEREST_FIRST_FEATURES,
    PASS0_FEATURES,
    columns,
    dense_features,
    sparse_features,
    surface_id,
)
from rankers.engine.nets import LogisticActions
from rankers.engine.passes import Pass2Config, dedup_in_order, integrity_filter, pass0_select, pass2_rerank
from rankers.engine.two_tower import TwoTowerRetriever
from rankers.engine.types import LoggedFeatures, RankedItem, RankRequest, RankResult
from rankers.engine.value import ValueModelRegistry, ValueWeights
from rankers.engine.world import ACTIONS, Effects, FeatureStore

CONTENT_FIRST_WEIGHTS: dict[str, float] = {
    "like": 1.0,
    "comment": 3.0,
    "share": 4.0,
    "hide": -3.0,
    "report": -10.0,
}

_CF_COLS = columns(CONTENT_FIRST_FEATURES)
_IF_COLS = columns(INTEREST_FIRST_FEATURES)
_P0_COLS = columns(PASS0_FEATURES)


def graph_candidates(
    store: FeatureStore, user_id: int, surface: str, per_source: int = 40, limit: int = 1000
) -> np.ndarray:
    """Freshest posts of followed authors and joined groups (the social-graph source).

    On the groups surface group posts come first; on pages, followed authors' posts.
    """
    a_ptr, g_ptr = store.author_post_indptr, store.group_post_indptr
    author_parts = [
        store.author_posts[a_ptr[a] : min(a_ptr[a + 1], a_ptr[a] + per_source)]
        for a in store.follows(user_id)
    ]
    group_parts = [
        store.group_posts[g_ptr[g] : min(g_ptr[g + 1], g_ptr[g] + per_source)]
        for g in store.groups_of(user_id)
    ]
    parts = group_parts + author_parts if surface == "groups" else author_parts + group_parts
    if not parts:
        return np.zeros(0, dtype=np.int64)
    cands = np.unique(np.concatenate(parts))
    if cands.size > limit:
        # Freshest first within the limit (chronological legacy candidate generation).
        cands = cands[np.argsort(store.post_age_h[cands], kind="stable")[:limit]]
    return cands


class _StackBase:
    kind: str = ""

    def __init__(
        self, store: FeatureStore, stack_key: str, effects: Effects | None = None, log_features: bool = True
    ) -> None:
        self.store = store
        self.stack_key = stack_key
        self.effects = effects or Effects()
        self.log_features = log_features

    # Subclasses fill timings and return (post ids in list order, scores, logged features).
    def _rank(
        self, request: RankRequest, t: dict[str, float]
    ) -> tuple[np.ndarray, np.ndarray, LoggedFeatures | None]:
        raise NotImplementedError

    def rank(self, request: RankRequest) -> RankResult:
        if not 0 <= request.user_id < self.store.n_users:
            raise ValueError(f"unknown user_id {request.user_id}")
        timings: dict[str, float] = {}
        start = time.perf_counter()
        post_ids, scores, logged = self._rank(request, timings)
        total = (time.perf_counter() - start) * 1e3
        if self.effects.extra_latency_ms:
            if self.effects.sleep_latency:
                time.sleep(self.effects.extra_latency_ms / 1e3)
            timings["injected_latency"] = self.effects.extra_latency_ms
            total += self.effects.extra_latency_ms
        timings["total"] = total
        items = [
            RankedItem(int(p), float(s), i) for i, (p, s) in enumerate(zip(post_ids, scores, strict=True))
        ]
        return RankResult(items=items, stage_timings_ms=timings, stack_key=self.stack_key, features=logged)

    def with_effects(self, effects: Effects, stack_key: str | None = None) -> _StackBase:
        """A shallow copy carrying injected effects (same models), for end-to-end analysis tests."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.effects = effects
        if stack_key is not None:
            clone.stack_key = stack_key
        return clone

    # Parity hooks: recompute the model inputs offline and score them with the same model.
    def recompute_features(
        self, store: FeatureStore, user_id: int, surface: str, post_ids: np.ndarray
    ) -> np.ndarray:
        users = np.full(post_ids.shape[0], user_id)
        return dense_features(store, users, post_ids, surface_id(surface))

    def score_features(
        self, user_id: int, surface: str, post_ids: np.ndarray, dense: np.ndarray
    ) -> np.ndarray:
        raise NotImplementedError


def _lap(t: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    t[name] = (now - since) * 1e3
    return now


class ContentFirstStack(_StackBase):
    kind = "content_first"

    def __init__(
        self,
        store: FeatureStore,
        model: LogisticActions,
        stack_key: str = "content_first:v1",
        value_weights: dict[str, float] | None = None,
        candidate_limit: int = 1000,
        per_source: int = 40,
        effects: Effects | None = None,
    ) -> None:
        super().__init__(store, stack_key, effects)
        self.model = model
        self.value_weights = dict(value_weights or CONTENT_FIRST_WEIGHTS)
        self._w = np.array([self.value_weights[a] for a in ACTIONS], dtype=np.float32)
        self.candidate_limit = candidate_limit
        self.per_source = per_source

    def score_features(
        self, user_id: int, surface: str, post_ids: np.ndarray, dense: np.ndarray
    ) -> np.ndarray:
        return self.model.predict_proba(dense[:, _CF_COLS]) @ self._w

    def _rank(
        self, request: RankRequest, t: dict[str, float]
    ) -> tuple[np.ndarray, np.ndarray, LoggedFeatures | None]:
        s = time.perf_counter()
        cands = graph_candidates(
            self.store, request.user_id, request.surface, self.per_source, self.candidate_limit
        )
        if cands.size < request.num_items:  # cold user: pad with trending posts
            cands = np.unique(np.concatenate([cands, self.store.trending[: request.num_items * 2]]))
        s = _lap(t, "candidates", s)
        cands = cands[integrity_filter(self.store, cands)]
        s = _lap(t, "integrity", s)
        users = np.full(cands.shape[0], request.user_id)
        dense = dense_features(self.store, users, cands, surface_id(request.surface))
        s = _lap(t, "features", s)
        scores = self.score_features(request.user_id, request.surface, cands, dense)
        s = _lap(t, "scoring", s)
        order = np.argsort(-scores, kind="stable")
        order = order[dedup_in_order(self.store, cands[order])][: request.num_items]
        _lap(t, "rerank", s)
        logged = _log(self, request, cands[order], dense[order], scores[order])
        return cands[order], scores[order], logged


class InterestFirstStack(_StackBase):
    kind = "interest_first"

    def __init__(
        self,
        store: FeatureStore,
        retriever: TwoTowerRetriever,
        index: VectorIndex,
        model: LogisticActions,
        stack_key: str = "interest_first:v1",
        k_retrieve: int = 500,
        effects: Effects | None = None,
    ) -> None:
        super().__init__(store, stack_key, effects)
        self.retriever = retriever
        self.index = index
        self.model = model
        self.k_retrieve = k_retrieve

    def recompute_features(
        self, store: FeatureStore, user_id: int, surface: str, post_ids: np.ndarray
    ) -> np.ndarray:
        ue = self.retriever.user_embeddings(np.array([user_id]))[0]
        tower = self.retriever.item_embeddings()[post_ids] @ ue
        users = np.full(post_ids.shape[0], user_id)
        return dense_features(store, users, post_ids, surface_id(surface), tower_scores=tower)

    def score_features(
        self, user_id: int, surface: str, post_ids: np.ndarray, dense: np.ndarray
    ) -> np.ndarray:
        return self.model.predict_proba(dense[:, _IF_COLS])[:, 0]

    def _rank(
        self, request: RankRequest, t: dict[str, float]
    ) -> tuple[np.ndarray, np.ndarray, LoggedFeatures | None]:
        s = time.perf_counter()
        ue = self.retriever.user_embeddings(np.array([request.user_id]))[0]
        s = _lap(t, "user_tower", s)
        ids, sims = self.index.search(ue, self.k_retrieve)
        ids, sims = ids[0], sims[0]
        s = _lap(t, "retrieval", s)
        keep = integrity_filter(self.store, ids)
        ids, sims = ids[keep], sims[keep]
        s = _lap(t, "integrity", s)
        users = np.full(ids.shape[0], request.user_id)
        dense = dense_features(self.store, users, ids, surface_id(request.surface), tower_scores=sims)
        s = _lap(t, "features", s)
        scores = self.score_features(request.user_id, request.surface, ids, dense)
        s = _lap(t, "scoring", s)
        order = np.argsort(-scores, kind="stable")
        order = order[dedup_in_order(self.store, ids[order])][: request.num_items]
        _lap(t, "rerank", s)
        logged = _log(self, request, ids[order], dense[order], scores[order])
        return ids[order], scores[order], logged


@dataclass(slots=True)
class Pass0Model:
    """Linear score on cheap features, distilled from the pass-1 value (see training)."""

    weights: np.ndarray  # over PASS0_FEATURES, already divided by the feature std
    bias: float

    def score(self, dense: np.ndarray) -> np.ndarray:
        return dense[:, _P0_COLS] @ self.weights + self.bias

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(PASS0_FEATURES), "weights": self.weights.tolist(), "bias": self.bias}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Pass0Model:
        if tuple(d["features"]) != PASS0_FEATURES:
            raise ValueError("pass-0 artifact was trained on a different feature list")
        return cls(np.asarray(d["weights"], dtype=np.float32), float(d["bias"]))


class UnifiedMTLStack(_StackBase):
    kind = "unified_mtl"

    def __init__(
        self,
        store: FeatureStore,
        retriever: TwoTowerRetriever,
        index: VectorIndex,
        predictor: nn.Module,
        pass0: Pass0Model,
        values: ValueModelRegistry,
        stack_key: str = "unified_mtl:v1",
        device: str | None = None,
        value_version: str | None = None,
        pass2: Pass2Config | None = None,
        k_ann: int = 500,
        k_graph: int = 400,
        k_trending: int = 100,
        pass0_keep: int = 500,
        effects: Effects | None = None,
    ) -> None:
        super().__init__(store, stack_key, effects)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.retriever = retriever
        self.index = index
        self.predictor = predictor.to(self.device).eval()
        self.pass0 = pass0
        self.values = values
        self.value_version = value_version or values.active
        self.pass2 = pass2 or Pass2Config()
        self.k_ann, self.k_graph, self.k_trending, self.pass0_keep = k_ann, k_graph, k_trending, pass0_keep
        self._item_emb = retriever.item_embeddings()
        self._user_tower = retriever.model.user_tower

    @property
    def value_weights(self) -> ValueWeights:
        return self.values.get(self.value_version)

    def with_value_version(self, version: str) -> UnifiedMTLStack:
        clone = self.with_effects(self.effects)
        assert isinstance(clone, UnifiedMTLStack)
        self.values.get(version)
        clone.value_version = version
        clone.stack_key = f"{self.stack_key.split('+')[0]}+value:{version}"
        return clone

    def _user_embedding(self, user_id: int) -> np.ndarray:
        with torch.inference_mode():
            ids = torch.tensor([user_id])
            uf = self.retriever.user_features
            dense = None if uf is None else torch.from_numpy(uf[user_id : user_id + 1])
            return self._user_tower(ids, dense)[0].numpy()

    def recompute_features(
        self, store: FeatureStore, user_id: int, surface: str, post_ids: np.ndarray
    ) -> np.ndarray:
        ue = self.retriever.user_embeddings(np.array([user_id]))[0]
        tower = self.retriever.item_embeddings()[post_ids] @ ue
        users = np.full(post_ids.shape[0], user_id)
        return dense_features(store, users, post_ids, surface_id(surface), tower_scores=tower)

    def predict(self, user_id: int, surface: str, post_ids: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """Pass 1: MTL predictions Y (n, 6) for the given rows (batched, inference mode)."""
        users = np.full(post_ids.shape[0], user_id)
        sparse = sparse_features(self.store, users, post_ids, surface_id(surface))
        with torch.inference_mode():
            s = torch.from_numpy(sparse).to(self.device)
            d = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)).to(self.device)
            return self.predictor(s, d).float().cpu().numpy()

    def score_features(
        self, user_id: int, surface: str, post_ids: np.ndarray, dense: np.ndarray
    ) -> np.ndarray:
        return self.value_weights.score(self.predict(user_id, surface, post_ids, dense))

    def retrieve(self, user_id: int, surface: str, ue: np.ndarray) -> np.ndarray:
        ann_ids, _ = self.index.search(ue, self.k_ann)
        graph = graph_candidates(self.store, user_id, surface, per_source=20, limit=self.k_graph)
        trending = self.store.trending[: self.k_trending]
        return np.unique(np.concatenate([ann_ids[0], graph, trending]))

    def _rank(
        self, request: RankRequest, t: dict[str, float]
    ) -> tuple[np.ndarray, np.ndarray, LoggedFeatures | None]:
        s = time.perf_counter()
        ue = self._user_embedding(request.user_id)
        s = _lap(t, "user_tower", s)
        cands = self.retrieve(request.user_id, request.surface, ue)
        s = _lap(t, "retrieval", s)
        cands = cands[integrity_filter(self.store, cands)]
        s = _lap(t, "integrity", s)
        tower = self._item_emb[cands] @ ue
        users = np.full(cands.shape[0], request.user_id)
        dense = dense_features(self.store, users, cands, surface_id(request.surface), tower_scores=tower)
        s = _lap(t, "features", s)
        keep = pass0_select(self.pass0.score(dense), self.pass0_keep)
        cands, dense = cands[keep], dense[keep]
        s = _lap(t, "pass0", s)
        y = self.predict(request.user_id, request.surface, cands, dense)
        s = _lap(t, "pass1", s)
        values = self.value_weights.score(y)
        s = _lap(t, "value_model", s)
        order, adjusted = pass2_rerank(self.store, cands, values, request.num_items, self.pass2)
        _lap(t, "pass2", s)
        logged = _log(self, request, cands[order], dense[order], values[order])
        return cands[order], adjusted, logged


def _log(
    stack: _StackBase, request: RankRequest, post_ids: np.ndarray, dense: np.ndarray, scores: np.ndarray
) -> LoggedFeatures | None:
    if not stack.log_features:
        return None
    return LoggedFeatures(
        names=list(DENSE_FEATURES),
        post_ids=post_ids.copy(),
        matrix=dense.copy(),
        scores=scores.astype(np.float64),
        user_id=request.user_id,
        surface=request.surface,
    )
