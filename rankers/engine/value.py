"""The value model V_ijt = Σ_k w_k · Y_ijtk with versioned weights, and survey calibration.

``Y`` are the MTL predictions [P(like), P(comment), P(share), P(hide), P(report),
E[log1p dwell]]; w_hide and w_report are negative. Weights are calibrated against the
"was this worth your time?" survey (Meta, "How machine learning powers Facebook's News Feed
ranking algorithm", 2021): regress the survey answer on the predicted action probabilities of
the surveyed impressions; the slopes are the proposed w_k. Every proposal is a new immutable
version, so a ranking change is always attributable to one weight version.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rankers.engine.world import HEADS

HAND_SET_WEIGHTS: dict[str, float] = {
    "like": 1.0,
    "comment": 2.0,
    "share": 3.0,
    "hide": -4.0,
    "report": -8.0,
    "dwell": 0.2,
}


@dataclass(frozen=True, slots=True)
class ValueWeights:
    version: str
    weights: dict[str, float]
    source: str = "hand_set"
    parent: str | None = None
    diagnostics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = set(HEADS) - set(self.weights)
        if missing:
            raise ValueError(f"value weights missing heads: {sorted(missing)}")

    def vector(self) -> np.ndarray:
        return np.array([self.weights[h] for h in HEADS], dtype=np.float32)

    def score(self, predictions: np.ndarray) -> np.ndarray:
        """V = Y @ w for predictions of shape (n, 6)."""
        return predictions @ self.vector()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ValueWeights:
        return cls(**d)


class ValueModelRegistry:
    """Ordered, append-only versions v1, v2, … of value weights; one is active."""

    def __init__(self, versions: list[ValueWeights] | None = None, active: str | None = None) -> None:
        self.versions: list[ValueWeights] = list(versions or [ValueWeights("v1", dict(HAND_SET_WEIGHTS))])
        self.active = active or self.versions[0].version

    def get(self, version: str | None = None) -> ValueWeights:
        target = version or self.active
        for v in self.versions:
            if v.version == target:
                return v
        raise KeyError(f"unknown value-model version {target!r}")

    @property
    def current(self) -> ValueWeights:
        return self.get()

    def propose(
        self, weights: dict[str, float], source: str, diagnostics: dict[str, float] | None = None
    ) -> ValueWeights:
        """Append a new version (never mutates an existing one); the active version is unchanged."""
        new = ValueWeights(
            version=f"v{len(self.versions) + 1}",
            weights={h: float(weights[h]) for h in HEADS},
            source=source,
            parent=self.active,
            diagnostics=dict(diagnostics or {}),
        )
        self.versions.append(new)
        return new

    def activate(self, version: str) -> None:
        self.get(version)
        self.active = version

    def to_json(self) -> str:
        return json.dumps({"active": self.active, "versions": [v.to_dict() for v in self.versions]}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ValueModelRegistry:
        d = json.loads(text)
        return cls([ValueWeights.from_dict(v) for v in d["versions"]], d["active"])


@dataclass(frozen=True, slots=True)
class SurveyFit:
    weights: dict[str, float]
    intercept: float
    std_errors: dict[str, float]
    r2: float
    n: int
    shrinkage: float = 0.0
    prior_scale: float = 0.0
    cv_mse: dict[str, float] = field(default_factory=dict)


def _ols(x: np.ndarray, y: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    return np.linalg.solve(x.T @ x + np.diag(penalty), x.T @ y)


def fit_survey_weights(
    predictions: np.ndarray,
    answers: np.ndarray,
    prior: dict[str, float] | None = None,
    shrinkage_grid: tuple[float, ...] = (0.0, 1.0, 10.0, 100.0, 1_000.0, 10_000.0),
    folds: int = 5,
    seed: int = 0,
) -> SurveyFit:
    """Linear-probability regression of the survey answer on the predicted Y_k.

    Why linear: with rare actions, E[sigmoid(b + Σθ_k a_k)] ≈ sigmoid(b) + Σ_k p_k·(sigmoid(b + θ_k)
    − sigmoid(b)), i.e. the answer rate is linear in the action probabilities, so OLS slopes are
    the value weights (up to a common scale) and V = Σ w_k Y_k stays linear.

    Without ``prior``: answer = a + Σ_k w_k Y_k + ε (plain OLS, standard errors σ̂²(XᵀX)⁻¹ as in
    statsmodels OLS). With ``prior`` (the parent version's weights) the predictions are highly
    collinear and survey samples small, so the fit is shrunk toward the parent's *direction*:
    answer = a + s·(Y·w_parent) + Σ_k δ_k Y_k + ε with ridge penalty λ‖δ‖² (a, s unpenalized),
    λ picked by ``folds``-fold cross-validated squared error over ``shrinkage_grid``; the proposal
    is w = s·w_parent + δ. λ = 0 is plain OLS; large λ returns the parent's direction rescaled.
    """
    y = np.asarray(answers, dtype=np.float64)
    yhat = np.asarray(predictions, dtype=np.float64)
    n, k = yhat.shape
    if n <= k + 2:
        raise ValueError(f"need more than {k + 2} survey answers, got {n}")
    if prior is None:
        x = np.column_stack([np.ones(n), yhat])
        penalty = np.full(x.shape[1], 1e-9)
        grid: tuple[float, ...] = (0.0,)
        w_parent = np.zeros(k)
    else:
        w_parent = np.array([prior[h] for h in HEADS], dtype=np.float64)
        x = np.column_stack([np.ones(n), yhat @ w_parent, yhat])
        grid = shrinkage_grid
    rng = np.random.default_rng(seed)
    fold = rng.integers(0, folds, size=n)
    cv: dict[str, float] = {}
    for lam in grid:
        penalty = (
            np.r_[1e-9, 1e-9, np.full(k, lam + 1e-9)] if prior is not None else np.full(x.shape[1], 1e-9)
        )
        err = 0.0
        for f in range(folds):
            tr, te = fold != f, fold == f
            beta = _ols(x[tr], y[tr], penalty)
            err += float(((y[te] - x[te] @ beta) ** 2).sum())
        cv[str(lam)] = err / n
    best = min(grid, key=lambda lam: cv[str(lam)])
    penalty = np.r_[1e-9, 1e-9, np.full(k, best + 1e-9)] if prior is not None else np.full(x.shape[1], 1e-9)
    beta = _ols(x, y, penalty)
    resid = y - x @ beta
    dof = n - x.shape[1]
    sigma2 = float(resid @ resid) / dof
    cov = np.linalg.inv(x.T @ x + np.diag(penalty)) * sigma2
    if prior is None:
        w = beta[1:]
        se = np.sqrt(np.diag(cov)[1:])
        scale = 0.0
    else:
        scale = float(beta[1])
        w = scale * w_parent + beta[2:]
        # Var(s·w_parent + δ) = J Cov J' with J = [w_parent | I] over (s, δ).
        jac = np.column_stack([w_parent, np.eye(k)])
        se = np.sqrt(np.diag(jac @ cov[1:, 1:] @ jac.T))
    r2 = 1.0 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum())
    return SurveyFit(
        weights={h: float(w[i]) for i, h in enumerate(HEADS)},
        intercept=float(beta[0]),
        std_errors={h: float(se[i]) for i, h in enumerate(HEADS)},
        r2=r2,
        n=n,
        shrinkage=float(best),
        prior_scale=scale,
        cv_mse=cv,
    )


def rescale_like(weights: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """Rescale to the reference's L1 norm: ranking is scale-free, readers compare numbers."""
    norm = sum(abs(v) for v in weights.values())
    ref = sum(abs(v) for v in reference.values())
    if norm == 0:
        return dict(weights)
    return {h: v * ref / norm for h, v in weights.items()}
