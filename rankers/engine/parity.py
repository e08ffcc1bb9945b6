"""Online/offline parity (train-serve skew): logged serving features vs offline recomputation.

Serving logs the features it computed (:class:`~rankers.engine.types.LoggedFeatures`). For a
sample of logged requests the offline pipeline recomputes the same features from its own
store (e.g. the daily snapshot training reads) and re-scores them with the same model. A row
mismatches on a feature when |online − offline| > atol + rtol·|offline| (numpy.isclose's rule).
The report gives the mismatch rate per feature and the score difference, which is what the
control plane's parity gate reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rankers.engine.types import RankRequest, RankResult
from rankers.engine.world import FeatureStore, World


@dataclass(frozen=True, slots=True)
class ParityReport:
    n_requests: int
    n_rows: int
    feature_mismatch_rate: dict[str, float]
    feature_mean_abs_diff: dict[str, float]
    score_mean_abs_diff: float
    score_p99_abs_diff: float
    score_max_abs_diff: float
    score_mismatch_rate: float
    top_k_order_agreement: float

    @property
    def row_mismatch_rate(self) -> float:
        return max(self.feature_mismatch_rate.values(), default=0.0)

    def worst_features(self, n: int = 5) -> list[tuple[str, float]]:
        return sorted(self.feature_mismatch_rate.items(), key=lambda kv: -kv[1])[:n]

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_requests": self.n_requests,
            "n_rows": self.n_rows,
            "feature_mismatch_rate": self.feature_mismatch_rate,
            "feature_mean_abs_diff": self.feature_mean_abs_diff,
            "score_mean_abs_diff": self.score_mean_abs_diff,
            "score_p99_abs_diff": self.score_p99_abs_diff,
            "score_max_abs_diff": self.score_max_abs_diff,
            "score_mismatch_rate": self.score_mismatch_rate,
            "top_k_order_agreement": self.top_k_order_agreement,
        }


def parity_check(
    stack: Any, offline_store: FeatureStore, results: list[RankResult], rtol: float = 1e-4, atol: float = 1e-5
) -> ParityReport:
    """Recompute features offline for logged results and compare (see module docstring)."""
    logged = [r.features for r in results if r.features is not None and r.features.post_ids.size]
    if not logged:
        raise ValueError("no logged features in the results (was the stack built with log_features=False?)")
    names = logged[0].names
    online_rows, offline_rows, online_scores, offline_scores = [], [], [], []
    agreements = []
    for lf in logged:
        recomputed = stack.recompute_features(offline_store, lf.user_id, lf.surface, lf.post_ids)
        rescored = stack.score_features(lf.user_id, lf.surface, lf.post_ids, recomputed)
        online_rows.append(lf.matrix)
        offline_rows.append(recomputed)
        online_scores.append(lf.scores)
        offline_scores.append(rescored)
        # Would the offline scores have produced the same order for the logged items?
        agreements.append(
            float(np.array_equal(np.argsort(-lf.scores, kind="stable"), np.argsort(-rescored, kind="stable")))
        )
    on = np.concatenate(online_rows).astype(np.float64)
    off = np.concatenate(offline_rows).astype(np.float64)
    mismatch = ~np.isclose(on, off, rtol=rtol, atol=atol)
    s_on = np.concatenate(online_scores)
    s_off = np.concatenate(offline_scores)
    ds = np.abs(s_on - s_off)
    return ParityReport(
        n_requests=len(logged),
        n_rows=int(on.shape[0]),
        feature_mismatch_rate={n: float(mismatch[:, j].mean()) for j, n in enumerate(names)},
        feature_mean_abs_diff={n: float(np.abs(on[:, j] - off[:, j]).mean()) for j, n in enumerate(names)},
        score_mean_abs_diff=float(ds.mean()),
        score_p99_abs_diff=float(np.percentile(ds, 99)),
        score_max_abs_diff=float(ds.max()),
        score_mismatch_rate=float((~np.isclose(s_on, s_off, rtol=rtol, atol=atol)).mean()),
        top_k_order_agreement=float(np.mean(agreements)),
    )


def parity_experiment(
    world: World,
    stack: Any,
    sample_users: np.ndarray,
    traffic_users: np.ndarray | None = None,
    surface: str = "pages",
    restore: bool = True,
) -> tuple[ParityReport, FeatureStore]:
    """Snapshot the store (offline batch), let ``traffic_users`` move the online counters,
    serve ``sample_users`` with feature logging, and compare against the snapshot.

    Without traffic the stores agree and the report must show zero mismatch. With ``restore``
    the online counters are put back afterwards (the world is left as it was found).
    """
    offline = world.store.snapshot()
    if traffic_users is not None:
        rng = np.random.default_rng(0)
        for u in traffic_users:
            served = stack.rank(RankRequest(int(u), surface)).post_ids
            world.simulate_impressions(int(u), served, rng=rng, record=True)
    try:
        results = [stack.rank(RankRequest(int(u), surface)) for u in sample_users]
        return parity_check(stack, offline, results), offline
    finally:
        if restore:
            world.store.post_impressions[:] = offline.post_impressions
            world.store.post_likes[:] = offline.post_likes
            world.store.post_hides[:] = offline.post_hides
