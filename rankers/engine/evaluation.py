"""Offline evaluation: per-head AUC / log loss / calibration, and NDCG@k against ground truth.

* AUC = Mann–Whitney U / (n₊ n₋) with mid-ranks for ties (Hanley & McNeil 1982).
* Log loss = −mean(y log p + (1 − y) log(1 − p)), p clipped to [1e-7, 1 − 1e-7].
* Calibration: ratio mean(p)/mean(y) and expected calibration error over 10 equal-mass bins,
  ECE = Σ_b (n_b/n)·|mean(p)_b − mean(y)_b| (Naeini et al. 2015; equal-mass bins because the
  positives are rare).
* NDCG@k = DCG@k / IDCG@k, DCG = Σ_i g_i / log2(i + 2) over the served list (Järvelin &
  Kekäläinen 2002), gains = ground-truth value of the post for the user; the ideal list is the
  top-k of the whole eligible corpus, so NDCG measures retrieval and ranking together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


def auc(y: np.ndarray, p: np.ndarray) -> float:
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(p)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    order = np.argsort(p, kind="stable")
    ece = 0.0
    n = len(y)
    for chunk in np.array_split(order, bins):
        if chunk.size:
            ece += chunk.size / n * abs(float(np.mean(p[chunk])) - float(np.mean(y[chunk])))
    return ece


@dataclass(frozen=True, slots=True)
class HeadReport:
    head: str
    n: int
    positives: float
    auc: float
    log_loss: float
    calibration_ratio: float
    ece: float

    def as_dict(self) -> dict[str, float | str | int]:
        return {
            "head": self.head,
            "n": self.n,
            "positives": self.positives,
            "auc": self.auc,
            "log_loss": self.log_loss,
            "calibration_ratio": self.calibration_ratio,
            "ece": self.ece,
        }


def binary_head_report(head: str, y: np.ndarray, p: np.ndarray) -> HeadReport:
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    mean_y = float(y.mean()) if y.size else math.nan
    return HeadReport(
        head=head,
        n=int(y.size),
        positives=float(y.sum()),
        auc=auc(y, p),
        log_loss=log_loss(y, p),
        calibration_ratio=float(p.mean() / mean_y) if mean_y else math.nan,
        ece=expected_calibration_error(y, p),
    )


def regression_head_report(head: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float | str | int]:
    """For the dwell head (E[log1p dwell]): RMSE, R², and mean(pred)/mean(y)."""
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    resid = y - pred
    return {
        "head": head,
        "n": int(y.size),
        "rmse": float(np.sqrt(np.mean(resid**2))),
        "r2": float(1 - np.sum(resid**2) / np.sum((y - y.mean()) ** 2)),
        "calibration_ratio": float(pred.mean() / y.mean()),
    }


def dcg(gains: np.ndarray, k: int) -> float:
    g = np.asarray(gains, dtype=np.float64)[:k]
    return float(np.sum(g / np.log2(np.arange(2, g.size + 2))))


def ndcg_at_k(served_gains: np.ndarray, all_gains: np.ndarray, k: int) -> float:
    """NDCG@k of a served list given the gains of every eligible item (for the ideal list)."""
    top = np.sort(np.asarray(all_gains, dtype=np.float64))[::-1][:k]
    ideal = dcg(top, k)
    if ideal <= 0:
        return math.nan
    return dcg(served_gains, k) / ideal
