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


# Sign constraints of the value model: positive actions add value, hide and report subtract it.
WEIGHT_SIGNS: dict[str, int] = {"like": 1, "comment": 1, "share": 1, "hide": -1, "report": -1, "dwell": 1}


def fit_survey_weights(
    predictions: np.ndarray,
    answers: np.ndarray,
    prior: dict[str, float] | None = None,
    shrinkage_grid: tuple[float, ...] = (0.0, 0.01, 0.1, 1.0, 10.0, 100.0),
    folds: int = 5,
    seed: int = 0,
) -> SurveyFit:
    """Linear-probability regression of the survey answer on the predicted Y_k.

    Why linear: with rare actions, E[sigmoid(b + Σθ_k a_k)] ≈ sigmoid(b) + Σ_k p_k·(sigmoid(b + θ_k)
    − sigmoid(b)), i.e. the answer rate is linear in the action probabilities, so OLS slopes are
    the value weights (up to a common scale) and V = Σ w_k Y_k stays linear.

    Without ``prior``: plain OLS, answer = a + Σ_k w_k Y_k + ε, standard errors σ̂²(XᵀX)⁻¹
    (statsmodels OLS gives the same numbers).

    With ``prior`` (the parent version's weights): predictions are collinear and surveys few, so
    the proposal is a sign-constrained ridge fit shrunk toward the parent's *direction*:

        c = OLS slope of the answer on V_parent = Y·w_parent     (the parent's scale)
        ŵ = argmin_w ‖y − a − Y w‖² / n + λ ‖(w − c·w_parent)/σ_w‖²
            subject to sign(w_k) = WEIGHT_SIGNS[k] (or 0)

    with σ_w = 1/sd(Y_k) so the penalty is in standardized units, solved as bounded least squares
    (scipy.optimize.lsq_linear on the stacked ridge system), λ picked by ``folds``-fold
    cross-validated squared error over ``shrinkage_grid``. Standard errors are the unconstrained
    OLS ones (diagnostic only).
    """
    from scipy.optimize import lsq_linear

    y = np.asarray(answers, dtype=np.float64)
    yhat = np.asarray(predictions, dtype=np.float64)
    n, k = yhat.shape
    if n <= k + 2:
        raise ValueError(f"need more than {k + 2} survey answers, got {n}")
    x = np.column_stack([np.ones(n), yhat])
    ols = _ols(x, y, np.full(k + 1, 1e-9))
    resid = y - x @ ols
    sigma2 = float(resid @ resid) / (n - k - 1)
    se = np.sqrt(np.diag(np.linalg.inv(x.T @ x + 1e-9 * np.eye(k + 1))) * sigma2)
    if prior is None:
        r2 = 1.0 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum())
        return SurveyFit(
            weights={h: float(ols[i + 1]) for i, h in enumerate(HEADS)},
            intercept=float(ols[0]),
            std_errors={h: float(se[i + 1]) for i, h in enumerate(HEADS)},
            r2=r2,
            n=n,
        )

    w_parent = np.array([prior[h] for h in HEADS], dtype=np.float64)
    v_parent = yhat @ w_parent
    cov = np.cov(v_parent, y)
    scale = float(cov[0, 1] / cov[0, 0]) if cov[0, 0] > 0 else 0.0
    target = max(scale, 0.0) * w_parent
    sd = np.where(yhat.std(0) > 1e-12, yhat.std(0), 1.0)
    signs = np.array([WEIGHT_SIGNS[h] for h in HEADS])
    lower = np.r_[-np.inf, np.where(signs > 0, 0.0, -np.inf)]
    upper = np.r_[np.inf, np.where(signs > 0, np.inf, 0.0)]

    def solve(rows: np.ndarray, lam: float) -> np.ndarray:
        xs, ys = x[rows] / np.sqrt(rows.sum()), y[rows] / np.sqrt(rows.sum())
        pen = np.sqrt(lam) * np.column_stack([np.zeros(k), np.diag(sd)])
        a = np.vstack([xs, pen])
        b = np.r_[ys, np.sqrt(lam) * sd * target]
        return lsq_linear(a, b, bounds=(lower, upper), method="bvls").x

    rng = np.random.default_rng(seed)
    fold = rng.integers(0, folds, size=n)
    cv: dict[str, float] = {}
    for lam in shrinkage_grid:
        err = 0.0
        for f in range(folds):
            beta = solve(fold != f, lam)
            te = fold == f
            err += float(((y[te] - x[te] @ beta) ** 2).sum())
        cv[str(lam)] = err / n
    best = min(shrinkage_grid, key=lambda lam: cv[str(lam)])
    beta = solve(np.ones(n, dtype=bool), best)
    resid = y - x @ beta
    r2 = 1.0 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum())
    return SurveyFit(
        weights={h: float(beta[i + 1]) for i, h in enumerate(HEADS)},
        intercept=float(beta[0]),
        std_errors={h: float(se[i + 1]) for i, h in enumerate(HEADS)},
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
