"""Nearest-neighbour retrieval over item embeddings: exact matmul or HNSW (hnswlib).

HNSW: Malkov & Yashunin, "Efficient and robust approximate nearest neighbor search using
Hierarchical Navigable Small World graphs", TPAMI 2018. ``ef`` (the search beam) must be at
least ``k``; recall@k is measured against the exact top-k of the same embeddings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

EXACT_MAX_ITEMS = 50_000  # below this an exact matmul + argpartition is as fast as HNSW


class VectorIndex(Protocol):
    kind: str

    @property
    def size(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def exact_topk(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k, best first (argpartition then sort of the k winners)."""
    scores = queries @ vectors.T
    k = min(k, vectors.shape[0])
    if k == vectors.shape[0]:
        part = np.broadcast_to(np.arange(k), scores.shape).copy()
    else:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


@dataclass(slots=True)
class ExactIndex:
    vectors: np.ndarray
    kind: str = "exact"

    @property
    def size(self) -> int:
        return int(self.vectors.shape[0])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_topk(np.atleast_2d(queries).astype(np.float32), self.vectors, k)


class HNSWIndex:
    """hnswlib over inner product (vectors are unit-norm, so this is cosine)."""

    kind = "hnsw"

    def __init__(self, index: object, size: int, dim: int, ef: int) -> None:
        self._index = index
        self.size = size
        self.dim = dim
        self.ef = ef

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        m: int = 16,
        ef_construction: int = 200,  # 100 gave recall@500 0.943 at ef 800 on the default world; 200 gives 0.971
        ef: int = 800,
        num_threads: int = 2,
        seed: int = 100,
    ) -> HNSWIndex:
        import hnswlib

        n, dim = vectors.shape
        index = hnswlib.Index(space="ip", dim=dim)
        index.init_index(max_elements=n, ef_construction=ef_construction, M=m, random_seed=seed)
        index.add_items(
            np.ascontiguousarray(vectors, dtype=np.float32), np.arange(n), num_threads=num_threads
        )
        out = cls(index, n, dim, ef)
        out.set_ef(ef)
        return out

    def set_ef(self, ef: int) -> None:
        self.ef = ef
        self._index.set_ef(ef)  # type: ignore[attr-defined]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.ef < k:
            self.set_ef(k)
        labels, dist = self._index.knn_query(  # type: ignore[attr-defined]
            np.atleast_2d(queries).astype(np.float32), k=min(k, self.size), num_threads=1
        )
        return labels.astype(np.int64), 1.0 - dist  # hnswlib 'ip' distance is 1 - <q, v>

    def save(self, path: Path) -> None:
        self._index.save_index(str(path))  # type: ignore[attr-defined]

    @classmethod
    def load(cls, path: Path, dim: int, size: int, ef: int) -> HNSWIndex:
        import hnswlib

        index = hnswlib.Index(space="ip", dim=dim)
        index.load_index(str(path), max_elements=size)
        out = cls(index, size, dim, ef)
        out.set_ef(ef)
        return out


def build_index(
    vectors: np.ndarray, exact_max_items: int = EXACT_MAX_ITEMS, **hnsw_kwargs: int
) -> VectorIndex:
    """Exact at small sizes, HNSW beyond ``exact_max_items``."""
    if vectors.shape[0] <= exact_max_items:
        return ExactIndex(np.ascontiguousarray(vectors, dtype=np.float32))
    return HNSWIndex.build(vectors, **hnsw_kwargs)


def recall_against_exact(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of |approx ∩ exact| / k."""
    k = exact_ids.shape[1]
    hits = [np.intersect1d(a, e, assume_unique=True).size for a, e in zip(approx_ids, exact_ids, strict=True)]
    return float(np.mean(hits) / k)


@dataclass(frozen=True, slots=True)
class AnnMeasurement:
    kind: str
    n_items: int
    k: int
    ef: int
    recall: float
    p50_ms: float
    p99_ms: float
    exact_p50_ms: float
    exact_p99_ms: float

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "kind": self.kind,
            "n_items": self.n_items,
            "k": self.k,
            "ef": self.ef,
            "recall": self.recall,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "exact_p50_ms": self.exact_p50_ms,
            "exact_p99_ms": self.exact_p99_ms,
        }


def measure_ann(index: VectorIndex, vectors: np.ndarray, queries: np.ndarray, k: int = 500) -> AnnMeasurement:
    """Recall@k against exact search and single-query latency (p50/p99) of both."""
    approx_t, exact_t, approx_ids, exact_ids = [], [], [], []
    for q in queries:
        t0 = time.perf_counter()
        ids, _ = index.search(q[None, :], k)
        t1 = time.perf_counter()
        ex, _ = exact_topk(q[None, :], vectors, k)
        t2 = time.perf_counter()
        approx_t.append(t1 - t0)
        exact_t.append(t2 - t1)
        approx_ids.append(ids[0])
        exact_ids.append(ex[0])
    a, e = np.array(approx_t) * 1e3, np.array(exact_t) * 1e3
    return AnnMeasurement(
        kind=index.kind,
        n_items=index.size,
        k=k,
        ef=int(getattr(index, "ef", k)),
        recall=recall_against_exact(np.array(approx_ids), np.array(exact_ids)),
        p50_ms=float(np.percentile(a, 50)),
        p99_ms=float(np.percentile(a, 99)),
        exact_p50_ms=float(np.percentile(e, 50)),
        exact_p99_ms=float(np.percentile(e, 99)),
    )
