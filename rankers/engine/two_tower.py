"""Two-tower retrieval over any interactions table (user, item, timestamp, optional features).

Training uses in-batch negatives with the sampling-bias (logQ) correction of
Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations",
RecSys 2019: with a batch of B positive pairs, logits s_ij = <u_i, v_j>/τ − log q_j where q_j is
the probability that item j appears in a batch (its training frequency), and the loss is the
softmax cross-entropy of the diagonal. Popular items are otherwise over-penalised as negatives.

Towers are L2-normalised so inner product = cosine, which an HNSW index over inner product
searches directly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass(slots=True)
class InteractionsTable:
    """Implicit-feedback interactions with contiguous ids (0..n-1) and optional side features.

    ``user_features`` (n_users, du) and ``item_features`` (n_items, di) are dense float matrices;
    ``item_categories`` (n_items, c) are categorical codes with cardinalities
    ``item_category_sizes``. ``user_ids``/``item_ids`` keep the raw ids when built from a frame.
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    n_users: int
    n_items: int
    user_features: np.ndarray | None = None
    item_features: np.ndarray | None = None
    item_categories: np.ndarray | None = None
    item_category_sizes: tuple[int, ...] = ()
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not (self.user.shape == self.item.shape == self.timestamp.shape):
            raise ValueError("user, item and timestamp must be aligned 1-d arrays")
        if self.user.size and (self.user.min() < 0 or self.user.max() >= self.n_users):
            raise ValueError("user ids must lie in [0, n_users)")
        if self.item.size and (self.item.min() < 0 or self.item.max() >= self.n_items):
            raise ValueError("item ids must lie in [0, n_items)")

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @classmethod
    def from_raw(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray,
        item_features: dict[Any, np.ndarray] | None = None,
    ) -> InteractionsTable:
        """Map arbitrary raw ids to contiguous ids; ``item_features`` maps raw item id -> vector."""
        user_ids, u = np.unique(np.asarray(users), return_inverse=True)
        item_ids, i = np.unique(np.asarray(items), return_inverse=True)
        feats = None
        if item_features:
            dim = len(next(iter(item_features.values())))
            feats = np.zeros((item_ids.size, dim), dtype=np.float32)
            for k, raw in enumerate(item_ids):
                vec = item_features.get(raw.item() if hasattr(raw, "item") else raw)
                if vec is not None:
                    feats[k] = vec
        return cls(
            user=u.astype(np.int64),
            item=i.astype(np.int64),
            timestamp=np.asarray(timestamps, dtype=np.float64),
            n_users=int(user_ids.size),
            n_items=int(item_ids.size),
            item_features=feats,
            user_ids=user_ids,
            item_ids=item_ids,
        )

    def subset(self, mask: np.ndarray) -> InteractionsTable:
        return InteractionsTable(
            user=self.user[mask],
            item=self.item[mask],
            timestamp=self.timestamp[mask],
            n_users=self.n_users,
            n_items=self.n_items,
            user_features=self.user_features,
            item_features=self.item_features,
            item_categories=self.item_categories,
            item_category_sizes=self.item_category_sizes,
            user_ids=self.user_ids,
            item_ids=self.item_ids,
        )

    def leave_last_out(self) -> tuple[InteractionsTable, np.ndarray, np.ndarray]:
        """Split off each user's most recent interaction (ties broken by row order).

        Returns (train table, test users, test items); users with a single interaction stay
        in training only (nothing would be left to learn them from).
        """
        order = np.lexsort((np.arange(len(self)), self.timestamp, self.user))
        last = np.zeros(len(self), dtype=bool)
        u_sorted = self.user[order]
        is_last = np.r_[u_sorted[1:] != u_sorted[:-1], True]
        counts = np.bincount(self.user, minlength=self.n_users)
        is_last &= counts[u_sorted] > 1
        last[order[is_last]] = True
        return self.subset(~last), self.user[last], self.item[last]


@dataclass(frozen=True, slots=True)
class TwoTowerConfig:
    dim: int = 32
    id_dim: int = 32
    hidden: int = 64
    cat_dim: int = 8
    temperature: float = 0.05
    epochs: int = 4
    batch_size: int = 1024
    lr: float = 0.01
    weight_decay: float = 0.0
    logq_correction: bool = True
    seed: int = 0


class Tower(nn.Module):
    """ID embedding ⊕ projected dense features ⊕ categorical embeddings → MLP → unit vector."""

    def __init__(
        self,
        n_ids: int,
        dense_dim: int,
        cat_sizes: tuple[int, ...],
        cfg: TwoTowerConfig,
    ) -> None:
        super().__init__()
        self.id_emb = nn.Embedding(n_ids, cfg.id_dim)
        nn.init.normal_(self.id_emb.weight, std=0.05)
        self.cat_embs = nn.ModuleList([nn.Embedding(n, cfg.cat_dim) for n in cat_sizes])
        in_dim = cfg.id_dim + dense_dim + cfg.cat_dim * len(cat_sizes)
        self.mlp = nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.dim))
        self.dense_dim = dense_dim

    def forward(
        self, ids: torch.Tensor, dense: torch.Tensor | None = None, cats: torch.Tensor | None = None
    ) -> torch.Tensor:
        parts = [self.id_emb(ids)]
        if self.dense_dim:
            assert dense is not None
            parts.append(dense)
        for k, emb in enumerate(self.cat_embs):
            assert cats is not None
            parts.append(emb(cats[:, k]))
        out = self.mlp(torch.cat(parts, dim=1))
        return nn.functional.normalize(out, dim=1)


class TwoTowerModel(nn.Module):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        user_dense_dim: int,
        item_dense_dim: int,
        item_cat_sizes: tuple[int, ...],
        cfg: TwoTowerConfig,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.user_tower = Tower(n_users, user_dense_dim, (), cfg)
        self.item_tower = Tower(n_items, item_dense_dim, item_cat_sizes, cfg)
        self.shapes = {
            "n_users": n_users,
            "n_items": n_items,
            "user_dense_dim": user_dense_dim,
            "item_dense_dim": item_dense_dim,
            "item_cat_sizes": list(item_cat_sizes),
        }


@dataclass(slots=True)
class TwoTowerRetriever:
    """A trained two-tower model plus the side features it needs at serving time."""

    model: TwoTowerModel
    user_features: np.ndarray | None
    item_features: np.ndarray | None
    item_categories: np.ndarray | None
    history: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    _item_emb: np.ndarray | None = None

    @property
    def config(self) -> TwoTowerConfig:
        return self.model.cfg

    def _user_inputs(self, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = torch.from_numpy(np.asarray(users, dtype=np.int64))
        dense = None if self.user_features is None else torch.from_numpy(self.user_features[users])
        return ids, dense

    def user_embeddings(self, users: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            ids, dense = self._user_inputs(np.asarray(users, dtype=np.int64))
            return self.model.user_tower(ids, dense).numpy()

    def item_embeddings(self) -> np.ndarray:
        """All item vectors (cached: the corpus side is precomputed offline, as in production)."""
        if self._item_emb is None:
            n = int(self.model.shapes["n_items"])  # type: ignore[call-overload]
            chunks = []
            with torch.inference_mode():
                for lo in range(0, n, 65_536):
                    idx = np.arange(lo, min(n, lo + 65_536))
                    dense = None if self.item_features is None else torch.from_numpy(self.item_features[idx])
                    cats = (
                        None if self.item_categories is None else torch.from_numpy(self.item_categories[idx])
                    )
                    chunks.append(self.model.item_tower(torch.from_numpy(idx), dense, cats).numpy())
            self._item_emb = np.ascontiguousarray(np.concatenate(chunks).astype(np.float32))
        return self._item_emb

    def refresh_items(self) -> None:
        self._item_emb = None

    def state(self) -> dict[str, Any]:
        return {"config": asdict(self.model.cfg), "shapes": self.model.shapes}


def train_two_tower(
    table: InteractionsTable,
    cfg: TwoTowerConfig | None = None,
    weights: np.ndarray | None = None,
    progress: Callable[[int, float], None] | None = None,
    max_seconds: float | None = None,
) -> TwoTowerRetriever:
    """Train with in-batch sampled softmax and logQ correction (see module docstring).

    ``weights`` optionally weights each interaction (e.g. share > like) by resampling.
    ``progress(step, loss)`` is called every step (the CLI wires a tqdm bar to it).
    """
    cfg = cfg or TwoTowerConfig()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    user_dense = table.user_features.shape[1] if table.user_features is not None else 0
    item_dense = table.item_features.shape[1] if table.item_features is not None else 0
    model = TwoTowerModel(
        table.n_users, table.n_items, user_dense, item_dense, table.item_category_sizes, cfg
    )
    opts = [torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)]
    n = len(table)
    if n < 2:
        raise ValueError("need at least two interactions to train with in-batch negatives")
    freq = np.bincount(table.item, minlength=table.n_items).astype(np.float64)
    if weights is not None:
        freq = np.bincount(table.item, weights=weights, minlength=table.n_items).astype(np.float64)
    log_q = torch.from_numpy(np.log(np.maximum(freq, 1e-3) / freq.sum()).astype(np.float32))
    uf = None if table.user_features is None else torch.from_numpy(table.user_features.astype(np.float32))
    itf = None if table.item_features is None else torch.from_numpy(table.item_features.astype(np.float32))
    itc = None if table.item_categories is None else torch.from_numpy(table.item_categories.astype(np.int64))
    users_t = torch.from_numpy(table.user)
    items_t = torch.from_numpy(table.item)
    p = None if weights is None else weights / weights.sum()
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)
    history: list[float] = []
    start = time.perf_counter()
    step = 0
    model.train()
    for _epoch in range(cfg.epochs):
        order = rng.choice(n, size=steps_per_epoch * bs, p=p) if p is not None else rng.permutation(n)
        for b in range(steps_per_epoch):
            idx = torch.from_numpy(order[b * bs : (b + 1) * bs])
            u, i = users_t[idx], items_t[idx]
            ue = model.user_tower(u, None if uf is None else uf[u])
            ie = model.item_tower(i, None if itf is None else itf[i], None if itc is None else itc[i])
            logits = ue @ ie.T / cfg.temperature
            if cfg.logq_correction:
                logits = logits - log_q[i][None, :]
            # The same item elsewhere in the batch is not a negative for this row.
            dup = (i[None, :] == i[:, None]) & ~torch.eye(len(i), dtype=torch.bool)
            logits = logits.masked_fill(dup, -1e9)
            loss = nn.functional.cross_entropy(logits, torch.arange(len(i)))
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in opts:
                opt.step()
            step += 1
            loss_value = float(loss.detach())
            history.append(loss_value)
            if progress is not None:
                progress(step, loss_value)
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                break
        else:
            continue
        break
    model.eval()
    return TwoTowerRetriever(
        model=model,
        user_features=None if table.user_features is None else table.user_features.astype(np.float32),
        item_features=None if table.item_features is None else table.item_features.astype(np.float32),
        item_categories=None if table.item_categories is None else table.item_categories.astype(np.int64),
        history=history,
        train_seconds=time.perf_counter() - start,
    )


def steps_for(table_len: int, cfg: TwoTowerConfig) -> int:
    return cfg.epochs * max(1, table_len // min(cfg.batch_size, max(table_len, 1)))


@dataclass(frozen=True, slots=True)
class RetrievalMetrics:
    recall_at_k: float
    ndcg_at_k: float
    k_recall: int
    k_ndcg: int
    n_users: int

    def as_dict(self) -> dict[str, float]:
        return {
            f"recall@{self.k_recall}": self.recall_at_k,
            f"ndcg@{self.k_ndcg}": self.ndcg_at_k,
            "n_users": float(self.n_users),
        }


def rank_of_targets(
    scores: np.ndarray, targets: np.ndarray, exclude: list[np.ndarray] | None = None
) -> np.ndarray:
    """0-based rank of each row's target among all items (seen items excluded), ties pessimistic."""
    scores = scores.astype(np.float64, copy=True)
    if exclude is not None:
        for r, ex_raw in enumerate(exclude):
            ex = np.asarray(ex_raw, dtype=np.int64)
            ex = ex[ex != targets[r]]
            scores[r, ex] = -np.inf
    target_scores = scores[np.arange(scores.shape[0]), targets]
    return (scores > target_scores[:, None]).sum(1) + (scores == target_scores[:, None]).sum(1) - 1


def leave_last_out_metrics(ranks: np.ndarray, k_recall: int = 20, k_ndcg: int = 10) -> RetrievalMetrics:
    """With one held-out item per user: Recall@K = 1[rank < K]; NDCG@K = 1/log2(rank + 2) if
    rank < K (the ideal DCG is 1). Järvelin & Kekäläinen (2002) DCG."""
    ranks = np.asarray(ranks)
    recall = float((ranks < k_recall).mean()) if ranks.size else math.nan
    gains = np.where(ranks < k_ndcg, 1.0 / np.log2(ranks + 2.0), 0.0)
    return RetrievalMetrics(
        recall, float(gains.mean()) if ranks.size else math.nan, k_recall, k_ndcg, int(ranks.size)
    )


def evaluate_leave_last_out(
    retriever: TwoTowerRetriever,
    train: InteractionsTable,
    test_users: np.ndarray,
    test_items: np.ndarray,
    k_recall: int = 20,
    k_ndcg: int = 10,
) -> RetrievalMetrics:
    """Full-corpus ranking of each user's held-out item, excluding items seen in training."""
    items = retriever.item_embeddings()
    seen_sorted = np.lexsort((train.item, train.user))
    indptr = np.searchsorted(train.user[seen_sorted], np.arange(train.n_users + 1))
    seen = train.item[seen_sorted]
    ranks = []
    for lo in range(0, test_users.size, 1024):
        u = test_users[lo : lo + 1024]
        scores = retriever.user_embeddings(u) @ items.T
        exclude = [seen[indptr[x] : indptr[x + 1]] for x in u]
        ranks.append(rank_of_targets(scores, test_items[lo : lo + 1024], exclude))
    return leave_last_out_metrics(np.concatenate(ranks), k_recall, k_ndcg)


def popularity_baseline(
    train: InteractionsTable,
    test_users: np.ndarray,
    test_items: np.ndarray,
    k_recall: int = 20,
    k_ndcg: int = 10,
) -> RetrievalMetrics:
    """Most-popular ranking (excluding seen items): the reference any learned model must beat."""
    pop = np.bincount(train.item, minlength=train.n_items).astype(np.float64)
    pop += np.linspace(0, 1e-6, train.n_items)  # deterministic tie-break
    seen_sorted = np.lexsort((train.item, train.user))
    indptr = np.searchsorted(train.user[seen_sorted], np.arange(train.n_users + 1))
    seen = train.item[seen_sorted]
    scores = np.broadcast_to(pop, (test_users.size, train.n_items))
    exclude = [seen[indptr[x] : indptr[x + 1]] for x in test_users]
    return leave_last_out_metrics(rank_of_targets(scores, test_items, exclude), k_recall, k_ndcg)


def save_state(retriever: TwoTowerRetriever) -> dict[str, Any]:
    return {"state_dict": retriever.model.state_dict(), **retriever.state()}


def load_state(
    blob: dict[str, Any],
    user_features: np.ndarray | None,
    item_features: np.ndarray | None,
    item_categories: np.ndarray | None,
) -> TwoTowerRetriever:
    cfg = TwoTowerConfig(**blob["config"])
    s = blob["shapes"]
    model = TwoTowerModel(
        s["n_users"], s["n_items"], s["user_dense_dim"], s["item_dense_dim"], tuple(s["item_cat_sizes"]), cfg
    )
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return TwoTowerRetriever(model, user_features, item_features, item_categories)
