"""Torch models: per-action logistic regressions (legacy) and the multi-task ranker (unified).

Multi-task model: sparse ID embeddings (user, author, topic, format, group, surface) ⊕
standardized dense features → shared bottom MLP (Caruana 1997, "Multitask Learning") or MMoE
(Ma et al., KDD 2018: per-task softmax gates over shared experts) → six heads. Heads output
logits for like/comment/share/hide/report and E[log1p(dwell seconds)].

Training loss: Σ_k λ_k · BCE_k + λ_dwell · MSE_dwell, with the loss weights λ_k kept separate
from the ranking (value-model) weights w_k, which live in :mod:`rankers.engine.value`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rankers.engine.world import ACTIONS, HEADS


class LogisticActions(nn.Module):
    """Independent logistic regressions, one per output column, on standardized inputs.

    Fitting them jointly with a summed BCE is the same as fitting each alone: the loss is
    separable across columns (one weight vector per action).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_features: int, n_outputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, n_outputs)
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.std)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.sigmoid(self(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))).numpy()


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float = 1e-4, max_iter: int = 60, weights: np.ndarray | None = None
) -> LogisticActions:
    """Full-batch L-BFGS on mean BCE + l2·||W||² (bias unpenalized)."""
    y2 = y.reshape(len(y), -1).astype(np.float32)
    model = LogisticActions(x.shape[1], y2.shape[1])
    mean, std = x.mean(0), x.std(0)
    model.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
    model.std.copy_(torch.from_numpy(np.where(std < 1e-6, 1.0, std).astype(np.float32)))
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y2)
    wt = None if weights is None else torch.from_numpy(weights.astype(np.float32))[:, None]
    # Start the bias at the base rate so rare actions (reports) converge in few iterations.
    with torch.no_grad():
        rate = yt.mean(0).clamp(1e-4, 1 - 1e-4)
        model.linear.bias.copy_(torch.log(rate / (1 - rate)))
        model.linear.weight.zero_()
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(xt), yt, weight=wt)
        loss = loss + l2 * model.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    model.eval()
    return model


@dataclass(frozen=True, slots=True)
class MTLConfig:
    n_users: int
    n_authors: int
    n_topics: int
    n_formats: int
    n_groups: int
    n_surfaces: int
    n_dense: int
    architecture: str = "shared_bottom"  # or "mmoe"
    user_dim: int = 16
    author_dim: int = 16
    topic_dim: int = 8
    format_dim: int = 4
    group_dim: int = 8
    surface_dim: int = 2
    bottom: tuple[int, ...] = (256, 128)
    n_experts: int = 4
    expert_dim: int = 64
    head_hidden: int = 32
    # λ_k: training loss weights (NOT the ranking weights w_k).
    loss_weights: dict[str, float] = field(
        default_factory=lambda: {
            "like": 1.0,
            "comment": 1.0,
            "share": 1.0,
            "hide": 1.0,
            "report": 1.0,
            "dwell": 0.5,
        }
    )
    epochs: int = 2
    batch_size: int = 1024
    lr: float = 2e-3
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bottom"] = list(self.bottom)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MTLConfig:
        d = dict(d)
        d["bottom"] = tuple(d["bottom"])
        return cls(**d)


class _BatchedHeads(nn.Module):
    """K small towers (in → hidden → 1) evaluated as two batched matmuls instead of K modules."""

    def __init__(self, in_dim: int, hidden: int, n_heads: int, shared_input: bool) -> None:
        super().__init__()
        self.n_heads, self.hidden, self.shared_input = n_heads, hidden, shared_input
        if shared_input:
            self.w1 = nn.Linear(in_dim, n_heads * hidden)
        else:
            self.w1_stack = nn.Parameter(torch.empty(n_heads, in_dim, hidden))
            self.b1_stack = nn.Parameter(torch.zeros(n_heads, hidden))
            nn.init.kaiming_uniform_(self.w1_stack, a=5**0.5)
        self.w2 = nn.Parameter(torch.randn(n_heads, hidden) / hidden**0.5)
        self.b2 = nn.Parameter(torch.zeros(n_heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared_input:  # x: (B, in)
            h = torch.relu(self.w1(x)).view(x.shape[0], self.n_heads, self.hidden)
        else:  # x: (B, K, in)
            h = torch.relu(torch.einsum("bki,kih->bkh", x, self.w1_stack) + self.b1_stack)
        return (h * self.w2).sum(-1) + self.b2


class MTLModel(nn.Module):
    """Outputs raw head values (B, 6): five logits and E[log1p dwell]."""

    dense_mean: torch.Tensor
    dense_std: torch.Tensor

    def __init__(self, cfg: MTLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embs = nn.ModuleList(
            [
                nn.Embedding(cfg.n_users, cfg.user_dim),
                nn.Embedding(cfg.n_authors, cfg.author_dim),
                nn.Embedding(cfg.n_topics, cfg.topic_dim),
                nn.Embedding(cfg.n_formats, cfg.format_dim),
                nn.Embedding(cfg.n_groups + 1, cfg.group_dim),
                nn.Embedding(cfg.n_surfaces, cfg.surface_dim),
            ]
        )
        for e in self.embs:
            nn.init.normal_(e.weight, std=0.05)  # type: ignore[arg-type]
        self.register_buffer("dense_mean", torch.zeros(cfg.n_dense))
        self.register_buffer("dense_std", torch.ones(cfg.n_dense))
        in_dim = (
            cfg.n_dense
            + cfg.user_dim
            + cfg.author_dim
            + cfg.topic_dim
            + cfg.format_dim
            + cfg.group_dim
            + cfg.surface_dim
        )
        n_heads = len(HEADS)
        if cfg.architecture == "shared_bottom":
            layers: list[nn.Module] = []
            prev = in_dim
            for width in cfg.bottom:
                layers += [nn.Linear(prev, width), nn.ReLU()]
                prev = width
            self.bottom = nn.Sequential(*layers)
            self.heads = _BatchedHeads(prev, cfg.head_hidden, n_heads, shared_input=True)
        elif cfg.architecture == "mmoe":
            self.experts = nn.Sequential(
                nn.Linear(in_dim, cfg.n_experts * cfg.expert_dim * 2),
                nn.ReLU(),
            )
            self.expert_out = nn.Parameter(
                torch.randn(cfg.n_experts, cfg.expert_dim * 2, cfg.expert_dim) / (cfg.expert_dim * 2) ** 0.5
            )
            self.gates = nn.Linear(in_dim, n_heads * cfg.n_experts)
            self.heads = _BatchedHeads(cfg.expert_dim, cfg.head_hidden, n_heads, shared_input=False)
        else:
            raise ValueError(f"unknown architecture {cfg.architecture!r}")

    def set_dense_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.dense_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        self.dense_std.copy_(torch.from_numpy(np.where(std < 1e-6, 1.0, std).astype(np.float32)))

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        parts = [emb(sparse[:, k]) for k, emb in enumerate(self.embs)]
        parts.append((dense - self.dense_mean) / self.dense_std)
        x = torch.cat(parts, dim=1)
        if self.cfg.architecture == "shared_bottom":
            return self.heads(self.bottom(x))
        b = x.shape[0]
        e = self.experts(x).view(b, self.cfg.n_experts, -1)
        e = torch.relu(torch.einsum("bei,eio->beo", e, self.expert_out))  # (B, E, D)
        g = torch.softmax(self.gates(x).view(b, len(HEADS), self.cfg.n_experts), dim=-1)  # (B, K, E)
        return self.heads(torch.einsum("bke,bed->bkd", g, e))


class MTLPredictor(nn.Module):
    """Serving wrapper: (sparse, dense) → Y (B, 6) = [P(like..report), E[log1p dwell]].

    This is the module exported with ``torch.export``: a serving engine feeds raw features
    (standardization is inside) and gets the predictions the value model consumes.
    """

    def __init__(self, model: MTLModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        raw = self.model(sparse, dense)
        n_act = len(ACTIONS)
        return torch.cat([torch.sigmoid(raw[:, :n_act]), raw[:, n_act:].clamp_min(0.0)], dim=1)


@dataclass(slots=True)
class MTLTrainData:
    sparse: np.ndarray
    dense: np.ndarray
    actions: np.ndarray  # (n, 5)
    log_dwell: np.ndarray  # (n,)


def train_mtl(
    cfg: MTLConfig,
    data: MTLTrainData,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[MTLModel, list[float], float]:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = MTLModel(cfg)
    model.set_dense_stats(data.dense.mean(0), data.dense.std(0))
    # Dense Adam: SparseAdam (sparse embedding gradients) measured slower on this CPU at these
    # table sizes (sparse-gradient coalescing dominates), so the tables take dense updates.
    opts = [torch.optim.Adam(model.parameters(), lr=cfg.lr)]
    lam = torch.tensor([cfg.loss_weights[h] for h in HEADS], dtype=torch.float32)
    sparse = torch.from_numpy(data.sparse.astype(np.int64))
    dense = torch.from_numpy(data.dense.astype(np.float32))
    labels = torch.from_numpy(
        np.concatenate([data.actions, data.log_dwell[:, None]], axis=1).astype(np.float32)
    )
    n = len(labels)
    steps = max(1, n // cfg.batch_size)
    history: list[float] = []
    start = time.perf_counter()
    n_act = len(ACTIONS)
    model.train()
    total_steps = 0
    for epoch in range(cfg.epochs):
        order = torch.from_numpy(rng.permutation(n))
        for opt in opts:  # halve the step size each epoch after the first
            for g in opt.param_groups:
                g["lr"] = cfg.lr * (0.5**epoch)
        for s in range(steps):
            idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            out = model(sparse[idx], dense[idx])
            y = labels[idx]
            bce = nn.functional.binary_cross_entropy_with_logits(
                out[:, :n_act], y[:, :n_act], reduction="none"
            ).mean(0)
            mse = (out[:, n_act] - y[:, n_act]).pow(2).mean()
            loss = (lam[:n_act] * bce).sum() + lam[n_act] * mse
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in opts:
                opt.step()
            total_steps += 1
            value = float(loss.detach())
            history.append(value)
            if progress is not None:
                progress(total_steps, value)
    model.eval()
    return model, history, time.perf_counter() - start


def predict_mtl(
    predictor: nn.Module, sparse: np.ndarray, dense: np.ndarray, device: str = "cpu", batch: int = 65_536
) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for lo in range(0, len(dense), batch):
            s = torch.from_numpy(sparse[lo : lo + batch]).to(device)
            d = torch.from_numpy(np.ascontiguousarray(dense[lo : lo + batch], dtype=np.float32)).to(device)
            out.append(predictor(s, d).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(HEADS)), np.float32)


def quantize_dynamic_int8(predictor: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of the Linear layers (weights int8, activations quantized on
    the fly) — the CPU serving option measured in bench/rankers.py. Returns a new module."""
    import copy
    import warnings

    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which is not a dependency here;
        # the eager dynamic path still works in torch 2.13 and is what the bench measures.
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(predictor).eval(), {nn.Linear}, dtype=torch.qint8)
