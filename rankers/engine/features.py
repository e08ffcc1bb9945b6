"""Feature computation shared by serving and offline training (one code path = no logic skew).

Features follow the three buckets of the Feed-ranking notes plus cross features:
WHO (user activity), WHAT (post age, counters, author quality), HOW (surface, position) and
CROSS (following the author, group membership, the user's observed topic/format share,
the two-tower dot product). Sparse IDs feed embedding tables in the MTL model.

Train-serve skew can only come from the *inputs* (an online summary store that has moved on
since the offline snapshot), which is exactly what :mod:`rankers.engine.parity` measures.
"""

from __future__ import annotations

import numpy as np

from rankers.engine.types import SURFACES
from rankers.engine.world import FORMATS, FeatureStore

DENSE_FEATURES: tuple[str, ...] = (
    "log_age_h",
    "freshness",
    "log_post_impressions",
    "post_like_rate",
    "post_hide_rate",
    "author_quality_signal",
    "log_author_followers",
    "is_following",
    "is_group_member",
    "in_group",
    "user_topic_share",
    "user_format_share",
    "log_user_activity",
    "tower_score",
    "position",
    "surface_is_groups",
    *(f"format_{f}" for f in FORMATS),
)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(DENSE_FEATURES)}

# Sparse ID columns of the MTL model, in order.
SPARSE_FEATURES: tuple[str, ...] = ("user", "author", "topic", "format", "group", "surface")

# The content-first legacy models see content, author and connection features only.
CONTENT_FIRST_FEATURES: tuple[str, ...] = (
    "log_age_h",
    "freshness",
    "log_post_impressions",
    "post_like_rate",
    "post_hide_rate",
    "author_quality_signal",
    "log_author_followers",
    "is_following",
    "is_group_member",
    "in_group",
    "position",
    "surface_is_groups",
    *(f"format_{f}" for f in FORMATS),
)
# The interest-first engagement model: retrieval score plus a few popularity signals.
INTEREST_FIRST_FEATURES: tuple[str, ...] = (
    "tower_score",
    "freshness",
    "post_like_rate",
    "log_post_impressions",
    "user_format_share",
    "position",
)
# Pass 0: cheap features available for ~1000 candidates before the MTL model runs.
PASS0_FEATURES: tuple[str, ...] = (
    "tower_score",
    "is_following",
    "is_group_member",
    "post_like_rate",
    "post_hide_rate",
    "author_quality_signal",
    "freshness",
    "user_topic_share",
    "user_format_share",
)


def columns(names: tuple[str, ...]) -> np.ndarray:
    return np.array([FEATURE_INDEX[n] for n in names], dtype=np.int64)


def surface_id(surface: str) -> int:
    return SURFACES.index(surface)


def dense_features(
    store: FeatureStore,
    users: np.ndarray,
    posts: np.ndarray,
    surface: np.ndarray | int = 0,
    tower_scores: np.ndarray | None = None,
    positions: np.ndarray | None = None,
) -> np.ndarray:
    """Dense feature matrix (n, len(DENSE_FEATURES)) float32 for aligned (user, post) pairs.

    Counter rates are Bayesian-smoothed toward a prior (like rate: (likes + 1)/(impr + 20)) so
    fresh posts with no impressions get a sensible value rather than 0/0.
    """
    users = np.asarray(users, dtype=np.int64)
    posts = np.asarray(posts, dtype=np.int64)
    n = posts.shape[0]
    out = np.empty((n, len(DENSE_FEATURES)), dtype=np.float32)
    age = store.post_age_h[posts]
    impr = store.post_impressions[posts]
    authors = store.post_author[posts]
    topics = store.post_topic[posts]
    fmt = store.post_format[posts]
    out[:, 0] = np.log1p(age)
    out[:, 1] = np.exp(-age / 24.0)
    out[:, 2] = np.log1p(impr)
    out[:, 3] = (store.post_likes[posts] + 1.0) / (impr + 20.0)
    out[:, 4] = (store.post_hides[posts] + 0.2) / (impr + 20.0)
    out[:, 5] = store.author_quality_signal[authors]
    out[:, 6] = np.log1p(store.author_followers[authors])
    out[:, 7] = store.is_following(users, posts)
    out[:, 8] = store.is_member(users, posts)
    out[:, 9] = store.post_group[posts] >= 0
    out[:, 10] = store.user_topic_hist[users, topics]
    out[:, 11] = store.user_format_hist[users, fmt]
    out[:, 12] = np.log1p(store.user_activity[users])
    out[:, 13] = 0.0 if tower_scores is None else tower_scores
    out[:, 14] = 0.0 if positions is None else np.log1p(positions)
    out[:, 15] = np.asarray(surface) == SURFACES.index("groups")
    base = FEATURE_INDEX[f"format_{FORMATS[0]}"]
    out[:, base : base + len(FORMATS)] = 0.0
    out[np.arange(n), base + fmt] = 1.0
    return out


def sparse_features(
    store: FeatureStore, users: np.ndarray, posts: np.ndarray, surface: np.ndarray | int = 0
) -> np.ndarray:
    """Sparse ID matrix (n, len(SPARSE_FEATURES)) int64; a post outside a group maps to the
    padding row ``n_groups``."""
    users = np.asarray(users, dtype=np.int64)
    posts = np.asarray(posts, dtype=np.int64)
    out = np.empty((posts.shape[0], len(SPARSE_FEATURES)), dtype=np.int64)
    out[:, 0] = users
    out[:, 1] = store.post_author[posts]
    out[:, 2] = store.post_topic[posts]
    out[:, 3] = store.post_format[posts]
    g = store.post_group[posts]
    out[:, 4] = np.where(g < 0, store.n_groups, g)
    out[:, 5] = surface
    return out


class Standardizer:
    """z-scoring with statistics fitted on training data (stored with the model artifact)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = mean.astype(np.float32)
        self.std = std.astype(np.float32)

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        std = x.std(0)
        return cls(x.mean(0), np.where(std < 1e-6, 1.0, std))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> Standardizer:
        return cls(np.asarray(d["mean"]), np.asarray(d["std"]))
