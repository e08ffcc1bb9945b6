"""The passes of the unified funnel that are not models: integrity gate, pass 0 selection and the
list-aware pass 2 control layer (dedup, author caps, topic diversity).

Order (Feed-ranking notes, layer 03): integrity filter → pass 0 (~1000 → 500, cheap, high
recall) → pass 1 (MTL, independent per-post scores) → value model → pass 2 (list-aware).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rankers.engine.world import FeatureStore


def integrity_filter(store: FeatureStore, post_ids: np.ndarray) -> np.ndarray:
    """Boolean keep-mask: flagged posts are removed before any model sees them (hard gate)."""
    return ~store.post_flagged[post_ids]


def pass0_select(scores: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the ``keep`` highest cheap scores (unordered; pass 1 re-scores them)."""
    if scores.shape[0] <= keep:
        return np.arange(scores.shape[0])
    return np.argpartition(-scores, keep - 1)[:keep]


@dataclass(frozen=True, slots=True)
class Pass2Config:
    max_per_author: int = 3
    topic_decay: float = 0.9  # each earlier same-topic post multiplies a positive value by this
    dedup: bool = True


def pass2_rerank(
    store: FeatureStore,
    post_ids: np.ndarray,
    values: np.ndarray,
    num_items: int,
    cfg: Pass2Config | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy list construction: pick the best adjusted value, update the penalties, repeat.

    Adjusted value of a candidate whose topic already appears ``c`` times in the list:
    v·d^c if v > 0 else v/d^c (always lower for larger c). Candidates whose author already has
    ``max_per_author`` posts, or whose content cluster (reshare of the same post) is already in
    the list, are ineligible. Returns (indices into ``post_ids`` in list order, adjusted values).
    """
    c = cfg or Pass2Config()
    n = post_ids.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    authors = store.post_author[post_ids]
    topics = store.post_topic[post_ids]
    clusters = store.post_dup_cluster[post_ids]
    # Dense local codes so the per-step bookkeeping is array indexing, not dict lookups.
    _, author_code = np.unique(authors, return_inverse=True)
    _, topic_code = np.unique(topics, return_inverse=True)
    _, cluster_code = np.unique(clusters, return_inverse=True)
    author_count = np.zeros(author_code.max() + 1, dtype=np.int64)
    topic_count = np.zeros(topic_code.max() + 1, dtype=np.int64)
    cluster_used = np.zeros(cluster_code.max() + 1, dtype=bool)
    eligible = np.ones(n, dtype=bool)
    v = values.astype(np.float64)
    pos = v > 0
    chosen: list[int] = []
    adjusted_out: list[float] = []
    decay = c.topic_decay
    for _ in range(min(num_items, n)):
        factor = decay ** topic_count[topic_code]
        adj = np.where(pos, v * factor, v / factor)
        adj[~eligible] = -np.inf
        best = int(np.argmax(adj))
        if not np.isfinite(adj[best]):
            break
        chosen.append(best)
        adjusted_out.append(float(adj[best]))
        eligible[best] = False
        a, t, cl = author_code[best], topic_code[best], cluster_code[best]
        author_count[a] += 1
        topic_count[t] += 1
        if author_count[a] >= c.max_per_author:
            eligible &= author_code != a
        if c.dedup:
            cluster_used[cl] = True
            eligible &= ~cluster_used[cluster_code]
    return np.array(chosen, dtype=np.int64), np.array(adjusted_out)


def dedup_in_order(store: FeatureStore, post_ids: np.ndarray) -> np.ndarray:
    """Keep-mask dropping later copies of the same content cluster (legacy stacks' only list rule)."""
    clusters = store.post_dup_cluster[post_ids]
    _, first = np.unique(clusters, return_index=True)
    keep = np.zeros(post_ids.shape[0], dtype=bool)
    keep[first] = True
    return keep
