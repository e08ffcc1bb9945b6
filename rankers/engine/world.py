"""A seeded simulated feed world with a known ground-truth engagement model.

Everything a ranking stack may observe lives in :class:`FeatureStore` (the "summary store" of
Meta's 2021 Feed post: running counters, observed histories, the social graph). The latent
variables (true interests, quality, engagement bait, true violations) are only used by the
ground-truth model that generates impressions, engagements and survey answers, and by the
offline NDCG evaluation.

Ground truth (per user ``u``, post ``p``, with attention 1 and no fatigue)::

    m   = clip(log(T · interest[u, topic_p]), -3, 2)        topic match
    lat = <user_latent[u], post_latent[p]>                  residual taste
    logit P(k) = b_k + Σ coefficients_k · (m, lat, fmt, conn, q, bait·susc, fresh, violation)
    P(read) analogous; dwell | read ~ LogNormal(mu, 0.5); dwell | skip ~ U(0.4, 1.2) s

Served lists add position bias (attention ``(1 + pos)^-eta``, Joachims et al. 2005 style
examination model), a geometric scroll depth and fatigue: every earlier post of the same topic
or author in the list damps positive actions and raises hides, which is what makes the
list-aware pass 2 (diversity, author caps) worth having.

The "was this worth your time?" survey (the calibration signal of the Feed post) is answered
by a small random sample of impressions with probability
``sigmoid(SURVEY_BIAS + Σ_k SURVEY_COEF_k · a_k + 0.35·log1p(dwell) + quality-term)``; the
offline ground-truth value of a post for a user, used as the NDCG gain, is that same linear
index evaluated at the expected actions (clipped at zero, violating posts score zero).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

ACTIONS: tuple[str, ...] = ("like", "comment", "share", "hide", "report")
HEADS: tuple[str, ...] = (*ACTIONS, "dwell")
FORMATS: tuple[str, ...] = ("text", "photo", "video", "link")

# Coefficients of the ground-truth logits: columns are
# (bias, topic match, latent taste, format pref, connected, quality logit, bait x susceptibility,
#  freshness, violation)
_TRUTH_COEF: dict[str, tuple[float, ...]] = {
    "like": (-3.0, 1.0, 0.7, 0.3, 0.7, 0.7, 1.1, 0.5, 0.0),
    "comment": (-4.8, 0.7, 0.4, 0.1, 1.5, 0.5, 0.4, 0.3, 0.0),
    "share": (-5.2, 0.8, 0.5, 0.1, 0.4, 1.3, -0.2, 0.4, 0.0),
    "hide": (-4.0, -0.9, -0.4, -0.2, -0.5, -0.7, 1.3, 0.0, 1.8),
    "report": (-7.0, -0.3, -0.1, 0.0, -0.3, -0.8, 0.9, 0.0, 3.8),
    "read": (-0.6, 0.9, 0.6, 0.4, 0.3, 0.6, 0.3, 0.1, -0.3),
}
# log-seconds of a read: mu = 2.0 + 0.35 m + 0.25 lat + format offset + 0.3 q
_DWELL_FORMAT_OFFSET = np.array([0.0, -0.2, 0.6, 0.2])
_DWELL_SIGMA = 0.5

# "Was this worth your time?" answer model (survey-calibrated value weights try to recover this).
SURVEY_BIAS = -1.0
SURVEY_COEF: dict[str, float] = {
    "like": 1.2,
    "comment": 2.0,
    "share": 2.5,
    "hide": -3.0,
    "report": -4.0,
    "dwell": 0.35,  # per log1p(second)
}
SURVEY_QUALITY_COEF = 1.0


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """Size and seed of a world. The default is the production-like size of issue 5."""

    seed: int = 7
    n_users: int = 50_000
    n_posts: int = 200_000
    n_authors: int = 5_000
    n_groups: int = 5_000
    n_topics: int = 32
    latent_dim: int = 8
    mean_follows: float = 25.0
    mean_groups: float = 6.0
    group_post_fraction: float = 0.3
    violation_rate: float = 0.02
    duplicate_rate: float = 0.04
    max_age_hours: float = 72.0
    survey_rate: float = 0.03
    position_bias_eta: float = 0.5
    mean_scroll_depth: float = 30.0
    fatigue_topic: float = 0.82
    fatigue_author: float = 0.75
    name: str = "default"

    @classmethod
    def small(cls, seed: int = 7) -> WorldConfig:
        """A world small enough for unit tests (seconds to build and train)."""
        return cls(
            seed=seed,
            n_users=1_500,
            n_posts=8_000,
            n_authors=300,
            n_groups=200,
            n_topics=16,
            mean_follows=15.0,
            mean_groups=4.0,
            name="small",
        )

    @classmethod
    def named(cls, name: str, seed: int = 7) -> WorldConfig:
        if name == "small":
            return cls.small(seed=seed)
        if name == "default":
            return cls(seed=seed)
        raise ValueError(f"unknown world {name!r}; expected 'small' or 'default'")


@dataclass(frozen=True, slots=True)
class Effects:
    """Knobs a stack can inject into the world to test the analysis end to end.

    Multipliers scale the probability (or dwell) of the corresponding outcome for impressions
    served by the stack carrying the effects; ``extra_latency_ms`` is added to its reported
    serving latency (and slept for real when ``sleep_latency`` is true); ``error_rate`` is the
    probability a request fails.
    """

    like_multiplier: float = 1.0
    comment_multiplier: float = 1.0
    share_multiplier: float = 1.0
    hide_multiplier: float = 1.0
    report_multiplier: float = 1.0
    dwell_multiplier: float = 1.0
    extra_latency_ms: float = 0.0
    error_rate: float = 0.0
    sleep_latency: bool = False

    def action_multipliers(self) -> np.ndarray:
        return np.array(
            [
                self.like_multiplier,
                self.comment_multiplier,
                self.share_multiplier,
                self.hide_multiplier,
                self.report_multiplier,
            ]
        )

    @property
    def is_neutral(self) -> bool:
        return self == Effects(sleep_latency=self.sleep_latency)


@dataclass(slots=True)
class FeatureStore:
    """Everything a ranker may observe: post/author metadata, running counters, histories, graph.

    Counter arrays are mutable: serving traffic updates them (the online summary store);
    :meth:`snapshot` freezes a copy for offline (batch) feature computation.
    """

    n_users: int
    n_authors: int
    n_groups: int
    n_topics: int
    post_author: np.ndarray
    post_group: np.ndarray  # -1 when not posted in a group
    post_topic: np.ndarray
    post_format: np.ndarray
    post_age_h: np.ndarray
    post_flagged: np.ndarray  # integrity classifier output (observable)
    post_dup_cluster: np.ndarray  # same value = same underlying content (reshares)
    post_impressions: np.ndarray
    post_likes: np.ndarray
    post_hides: np.ndarray
    author_followers: np.ndarray
    author_quality_signal: np.ndarray
    user_topic_hist: np.ndarray  # normalized observed topic engagement shares
    user_format_hist: np.ndarray
    user_activity: np.ndarray
    follow_indptr: np.ndarray
    follow_authors: np.ndarray
    member_indptr: np.ndarray
    member_groups: np.ndarray
    follow_codes: np.ndarray  # sorted user * n_authors + author
    member_codes: np.ndarray  # sorted user * (n_groups + 1) + group
    author_post_indptr: np.ndarray  # posts of each author, freshest first
    author_posts: np.ndarray
    group_post_indptr: np.ndarray
    group_posts: np.ndarray
    trending: np.ndarray  # post ids by recent engagement velocity, best first

    @property
    def n_posts(self) -> int:
        return int(self.post_author.shape[0])

    def snapshot(self) -> FeatureStore:
        """A frozen copy of the mutable counters (the offline daily snapshot)."""
        return replace(
            self,
            post_impressions=self.post_impressions.copy(),
            post_likes=self.post_likes.copy(),
            post_hides=self.post_hides.copy(),
        )

    def follows(self, user_id: int) -> np.ndarray:
        return self.follow_authors[self.follow_indptr[user_id] : self.follow_indptr[user_id + 1]]

    def groups_of(self, user_id: int) -> np.ndarray:
        return self.member_groups[self.member_indptr[user_id] : self.member_indptr[user_id + 1]]

    def is_following(self, users: np.ndarray, posts: np.ndarray) -> np.ndarray:
        codes = users.astype(np.int64) * self.n_authors + self.post_author[posts]
        return _sorted_contains(self.follow_codes, codes)

    def is_member(self, users: np.ndarray, posts: np.ndarray) -> np.ndarray:
        groups = self.post_group[posts]
        codes = users.astype(np.int64) * (self.n_groups + 1) + np.where(groups < 0, self.n_groups, groups)
        return _sorted_contains(self.member_codes, codes) & (groups >= 0)


def _sorted_contains(sorted_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    if sorted_codes.size == 0:
        return np.zeros(codes.shape, dtype=bool)
    idx = np.searchsorted(sorted_codes, codes)
    idx = np.minimum(idx, sorted_codes.size - 1)
    return sorted_codes[idx] == codes


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _csr(owner: np.ndarray, values: np.ndarray, n_owners: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(owner, kind="stable")
    counts = np.bincount(owner, minlength=n_owners)
    indptr = np.zeros(n_owners + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, values[order]


@dataclass(slots=True)
class Impressions:
    """Per-impression outcomes of served lists (flat arrays, one row per impression)."""

    request_index: np.ndarray
    user_id: np.ndarray
    post_id: np.ndarray
    position: np.ndarray
    actions: np.ndarray  # (n, 5) 0/1 like, comment, share, hide, report
    dwell: np.ndarray
    violation: np.ndarray
    survey_asked: np.ndarray
    survey_worth: np.ndarray  # 1/0 when asked, -1 otherwise
    errors: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # per request

    def __len__(self) -> int:
        return int(self.post_id.shape[0])

    def action(self, name: str) -> np.ndarray:
        return self.actions[:, ACTIONS.index(name)]

    def summary(self) -> dict[str, float]:
        """Totals the per-user-day metrics are built from."""
        out: dict[str, float] = {"impressions": float(len(self))}
        for k, name in enumerate(ACTIONS):
            out[f"{name}s"] = float(self.actions[:, k].sum())
        out["dwell_seconds"] = float(self.dwell.sum())
        out["violating_impressions"] = float(self.violation.sum())
        out["errors"] = float(self.errors.sum())
        return out

    @staticmethod
    def concat(parts: list[Impressions]) -> Impressions:
        offsets = np.cumsum([0] + [int(p.errors.shape[0]) for p in parts[:-1]])
        return Impressions(
            request_index=np.concatenate([p.request_index + o for p, o in zip(parts, offsets, strict=True)]),
            user_id=np.concatenate([p.user_id for p in parts]),
            post_id=np.concatenate([p.post_id for p in parts]),
            position=np.concatenate([p.position for p in parts]),
            actions=np.concatenate([p.actions for p in parts]),
            dwell=np.concatenate([p.dwell for p in parts]),
            violation=np.concatenate([p.violation for p in parts]),
            survey_asked=np.concatenate([p.survey_asked for p in parts]),
            survey_worth=np.concatenate([p.survey_worth for p in parts]),
            errors=np.concatenate([p.errors for p in parts]),
        )


@dataclass(slots=True)
class Truth:
    """Ground-truth expectations for (user, post) pairs at full attention, no fatigue."""

    probs: np.ndarray  # (n, 5)
    p_read: np.ndarray
    dwell_mu: np.ndarray
    expected_dwell: np.ndarray
    value: np.ndarray  # survey-consistent value index (see module docstring)


class World:
    """The simulated world. Build with :meth:`build`; deterministic for a given config."""

    def __init__(self, config: WorldConfig, store: FeatureStore, latent: dict[str, np.ndarray]) -> None:
        self.config = config
        self.store = store
        self._latent = latent
        self._rng = np.random.default_rng(config.seed + 1_000_003)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, config: WorldConfig | None = None) -> World:
        cfg = config or WorldConfig()
        rng = np.random.default_rng(cfg.seed)
        n_u, n_p, n_a, n_g, n_t = cfg.n_users, cfg.n_posts, cfg.n_authors, cfg.n_groups, cfg.n_topics
        n_f = len(FORMATS)

        topic_pop = rng.dirichlet(np.full(n_t, 2.0))
        # Users: peaked topic interests around the global popularity, activity, format taste.
        interests = rng.dirichlet(np.full(n_t, 0.25), size=n_u) * 0.85 + 0.15 * topic_pop
        interests /= interests.sum(1, keepdims=True)
        activity = rng.lognormal(0.0, 0.6, size=n_u)
        format_pref = rng.dirichlet(np.full(n_f, 1.5), size=n_u)
        susceptibility = rng.beta(2.0, 3.0, size=n_u)
        user_latent = rng.normal(0.0, 1.0 / np.sqrt(cfg.latent_dim), size=(n_u, cfg.latent_dim))

        # Authors (pages): a primary and secondary topic, quality, popularity, bait tendency.
        author_topic = rng.choice(n_t, size=n_a, p=topic_pop)
        author_topic2 = rng.integers(0, n_t, size=n_a)
        author_quality = rng.beta(2.5, 2.5, size=n_a)
        author_pop = rng.pareto(1.3, size=n_a) + 1.0
        author_bait = rng.beta(1.0, 6.0, size=n_a)
        author_format = rng.dirichlet(np.full(n_f, 1.0), size=n_a)
        group_topic = rng.choice(n_t, size=n_g, p=topic_pop)
        group_pop = rng.pareto(1.5, size=n_g) + 1.0

        # Posts.
        w = author_pop**0.6
        post_author = rng.choice(n_a, size=n_p, p=w / w.sum())
        r = rng.random(n_p)
        post_topic = np.where(
            r < 0.75,
            author_topic[post_author],
            np.where(r < 0.9, author_topic2[post_author], rng.integers(0, n_t, size=n_p)),
        )
        cum_fmt = np.cumsum(author_format[post_author], axis=1)
        post_format = (rng.random((n_p, 1)) > cum_fmt).sum(1).clip(0, n_f - 1)
        post_age = rng.uniform(0.0, cfg.max_age_hours, size=n_p)
        q_logit = np.log(author_quality / (1 - author_quality))[post_author] + rng.normal(0, 0.5, n_p)
        post_quality = _sigmoid(q_logit)
        post_bait = np.clip(author_bait[post_author] + rng.normal(0, 0.08, n_p), 0.0, 1.0)
        post_latent = rng.normal(0.0, 1.0 / np.sqrt(cfg.latent_dim), size=(n_p, cfg.latent_dim))
        # Violations concentrate on low-quality, baity posts; the classifier catches ~80% of them
        # and flags ~0.3% of clean posts (so the integrity gate matters and is imperfect).
        risk = np.exp(-3.0 * post_quality + 2.0 * post_bait)
        violation = rng.random(n_p) < np.clip(risk / risk.mean() * cfg.violation_rate, 0, 0.9)
        flagged = np.where(violation, rng.random(n_p) < 0.8, rng.random(n_p) < 0.003)
        # Group posts: a group of the post's topic when one exists.
        post_group = np.full(n_p, -1, dtype=np.int64)
        in_group = rng.random(n_p) < cfg.group_post_fraction
        groups_by_topic = [np.flatnonzero(group_topic == t) for t in range(n_t)]
        for t in range(n_t):
            idx = np.flatnonzero(in_group & (post_topic == t))
            cands = groups_by_topic[t]
            if cands.size and idx.size:
                gp = group_pop[cands]
                post_group[idx] = rng.choice(cands, size=idx.size, p=gp / gp.sum())
        # Duplicates: reshared copies of an earlier post (same content cluster, same topic).
        dup_cluster = np.arange(n_p, dtype=np.int64)
        dups = np.flatnonzero(rng.random(n_p) < cfg.duplicate_rate)
        originals = rng.integers(0, n_p, size=dups.size)
        keep = originals != dups
        dup_cluster[dups[keep]] = originals[keep]
        post_topic[dups[keep]] = post_topic[originals[keep]]
        post_latent[dups[keep]] = post_latent[originals[keep]]

        # Social graph: follows chosen by topic interest x popularity, plus a social component.
        follows = cls._sample_edges(
            rng, interests, activity, cfg.mean_follows, author_topic, author_pop, n_t, social=0.25
        )
        members = cls._sample_edges(
            rng, interests, activity, cfg.mean_groups, group_topic, group_pop, n_t, social=0.1
        )
        follow_u, follow_a = follows
        member_u, member_g = members
        follow_indptr, follow_authors = _csr(follow_u, follow_a, n_u)
        member_indptr, member_groups = _csr(member_u, member_g, n_u)
        follow_codes = np.sort(follow_u.astype(np.int64) * n_a + follow_a)
        member_codes = np.sort(member_u.astype(np.int64) * (n_g + 1) + member_g)
        followers = np.bincount(follow_a, minlength=n_a)

        # Summary-store counters accumulated before "now": exposure grows with followers and age.
        exposure = (followers[post_author] + 5.0) * (post_age / cfg.max_age_hours + 0.05)
        prior_impr = rng.poisson(exposure * 3.0)
        m_typ = 0.0
        base_like = _sigmoid(-3.0 + m_typ + 0.7 * q_logit.clip(-3, 3) + 1.1 * post_bait * 0.4)
        base_hide = _sigmoid(-4.0 - 0.7 * q_logit.clip(-3, 3) + 1.3 * post_bait * 0.4 + 1.8 * violation)
        prior_likes = rng.binomial(prior_impr, base_like)
        prior_hides = rng.binomial(prior_impr, base_hide)
        author_impr = np.bincount(post_author, weights=prior_impr, minlength=n_a)
        author_likes = np.bincount(post_author, weights=prior_likes, minlength=n_a)
        author_quality_signal = (author_likes + 2.0) / (author_impr + 40.0)

        # Observed histories: multinomial samples of the true preferences.
        n_hist = rng.poisson(20.0 * activity) + 1
        topic_hist = rng.multinomial(n_hist, interests).astype(np.float32)
        topic_hist = (topic_hist + 0.1) / (topic_hist.sum(1, keepdims=True) + 0.1 * n_t)
        fmt_hist = rng.multinomial(n_hist, format_pref).astype(np.float32)
        fmt_hist = (fmt_hist + 0.1) / (fmt_hist.sum(1, keepdims=True) + 0.1 * n_f)
        user_activity = rng.poisson(10.0 * activity).astype(np.float32)

        fresh_order = np.argsort(post_age, kind="stable")
        author_post_indptr, author_posts = _csr(post_author[fresh_order], fresh_order, n_a)
        grouped = fresh_order[post_group[fresh_order] >= 0]
        group_post_indptr, group_posts = _csr(post_group[grouped], grouped, n_g)
        velocity = (prior_likes + 1.0) / (post_age + 2.0)
        velocity[flagged] = -1.0
        trending = np.argsort(-velocity, kind="stable")[:500]

        store = FeatureStore(
            n_users=n_u,
            n_authors=n_a,
            n_groups=n_g,
            n_topics=n_t,
            post_author=post_author.astype(np.int64),
            post_group=post_group,
            post_topic=post_topic.astype(np.int64),
            post_format=post_format.astype(np.int64),
            post_age_h=post_age.astype(np.float32),
            post_flagged=flagged,
            post_dup_cluster=dup_cluster,
            post_impressions=prior_impr.astype(np.float64),
            post_likes=prior_likes.astype(np.float64),
            post_hides=prior_hides.astype(np.float64),
            author_followers=followers.astype(np.float64),
            author_quality_signal=author_quality_signal.astype(np.float32),
            user_topic_hist=topic_hist.astype(np.float32),
            user_format_hist=fmt_hist.astype(np.float32),
            user_activity=user_activity,
            follow_indptr=follow_indptr,
            follow_authors=follow_authors.astype(np.int64),
            member_indptr=member_indptr,
            member_groups=member_groups.astype(np.int64),
            follow_codes=follow_codes,
            member_codes=member_codes,
            author_post_indptr=author_post_indptr,
            author_posts=author_posts.astype(np.int64),
            group_post_indptr=group_post_indptr,
            group_posts=group_posts.astype(np.int64),
            trending=trending.astype(np.int64),
        )
        latent = {
            "interests": interests.astype(np.float32),
            "activity": activity,
            "format_pref": format_pref.astype(np.float32),
            "susceptibility": susceptibility.astype(np.float32),
            "user_latent": user_latent.astype(np.float32),
            "author_quality": author_quality,
            "post_quality_logit": q_logit.clip(-3, 3).astype(np.float32),
            "post_bait": post_bait.astype(np.float32),
            "post_latent": post_latent.astype(np.float32),
            "violation": violation,
        }
        return cls(cfg, store, latent)

    @staticmethod
    def _sample_edges(
        rng: np.random.Generator,
        interests: np.ndarray,
        activity: np.ndarray,
        mean_degree: float,
        target_topic: np.ndarray,
        target_pop: np.ndarray,
        n_topics: int,
        social: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        n_u = interests.shape[0]
        n_targets = target_topic.shape[0]
        degree = np.maximum(1, rng.poisson(mean_degree * activity / activity.mean()))
        edge_user = np.repeat(np.arange(n_u), degree)
        n_e = edge_user.size
        # Topic of each edge ~ the user's interests (inverse-CDF sampling, chunked for memory).
        topic = np.empty(n_e, dtype=np.int64)
        cum = np.cumsum(interests, axis=1)
        for lo in range(0, n_e, 500_000):
            hi = min(n_e, lo + 500_000)
            r = rng.random(hi - lo)[:, None]
            topic[lo:hi] = (cum[edge_user[lo:hi]] < r).sum(1).clip(0, n_topics - 1)
        target = np.empty(n_e, dtype=np.int64)
        pop_p = target_pop / target_pop.sum()
        for t in range(n_topics):
            idx = np.flatnonzero(topic == t)
            cands = np.flatnonzero(target_topic == t)
            if idx.size == 0:
                continue
            if cands.size == 0:
                target[idx] = rng.choice(n_targets, size=idx.size, p=pop_p)
                continue
            w = target_pop[cands]
            target[idx] = rng.choice(cands, size=idx.size, p=w / w.sum())
        social_edges = rng.random(n_e) < social
        target[social_edges] = rng.choice(n_targets, size=int(social_edges.sum()), p=pop_p)
        codes = np.unique(edge_user.astype(np.int64) * n_targets + target)
        return codes // n_targets, codes % n_targets

    # ------------------------------------------------------------------ ground truth
    def truth(self, users: np.ndarray, posts: np.ndarray) -> Truth:
        """Ground-truth expectations for aligned arrays of (user, post) pairs."""
        users = np.asarray(users, dtype=np.int64)
        posts = np.asarray(posts, dtype=np.int64)
        lt, s = self._latent, self.store
        n_t = self.config.n_topics
        m = np.clip(np.log(n_t * lt["interests"][users, s.post_topic[posts]] + 1e-9), -3.0, 2.0)
        lat = np.einsum("ij,ij->i", lt["user_latent"][users], lt["post_latent"][posts]) * 2.0
        fmt = np.log(len(FORMATS) * lt["format_pref"][users, s.post_format[posts]] + 1e-9).clip(-3, 1.5)
        conn = (s.is_following(users, posts) | s.is_member(users, posts)).astype(np.float32)
        q = lt["post_quality_logit"][posts]
        bait = lt["post_bait"][posts] * lt["susceptibility"][users] * 2.0
        fresh = np.exp(-s.post_age_h[posts] / 24.0)
        viol = lt["violation"][posts].astype(np.float32)
        x = np.stack([np.ones_like(m), m, lat, fmt, conn, q, bait, fresh, viol], axis=1).astype(np.float32)
        coef = np.array([_TRUTH_COEF[a] for a in ACTIONS], dtype=np.float32)
        probs = _sigmoid(x @ coef.T)
        p_read = _sigmoid(x @ np.array(_TRUTH_COEF["read"], dtype=np.float32))
        dwell_mu = 2.0 + 0.35 * m + 0.25 * lat + _DWELL_FORMAT_OFFSET[s.post_format[posts]] + 0.3 * q
        expected_dwell = p_read * np.exp(dwell_mu + _DWELL_SIGMA**2 / 2) + (1 - p_read) * 0.8
        value = self._value_index(probs, p_read, dwell_mu, q)
        value = np.where(viol > 0, 0.0, np.maximum(value, 0.0))
        return Truth(probs, p_read, dwell_mu, expected_dwell, value)

    @staticmethod
    def _value_index(
        probs: np.ndarray, p_read: np.ndarray, dwell_mu: np.ndarray, q: np.ndarray
    ) -> np.ndarray:
        # Survey index at expected actions, shifted so a "typical" impression is ~0 (gain >= 0).
        expected_log_dwell = p_read * np.log1p(np.exp(dwell_mu)) + (1 - p_read) * np.log1p(0.8)
        v = sum(SURVEY_COEF[a] * probs[:, k] for k, a in enumerate(ACTIONS))
        v = v + SURVEY_COEF["dwell"] * expected_log_dwell + SURVEY_QUALITY_COEF * np.tanh(q / 2)
        return v - 0.5

    def true_value_all(self, user_id: int) -> np.ndarray:
        """Ground-truth value of every post for one user (for ideal DCG)."""
        n_p = self.store.n_posts
        return self.truth(np.full(n_p, user_id), np.arange(n_p)).value

    # ------------------------------------------------------------------ serving outcomes
    def simulate_impressions(
        self,
        user_id: int,
        ranked_post_ids: list[int] | np.ndarray,
        effects: Effects | None = None,
        rng: np.random.Generator | None = None,
        record: bool = False,
    ) -> Impressions:
        """Outcomes of showing ``ranked_post_ids`` (best first) to ``user_id``."""
        ranked = np.asarray(ranked_post_ids, dtype=np.int64)[None, :]
        return self.simulate_batch(np.array([user_id]), ranked, effects=effects, rng=rng, record=record)

    def simulate_batch(
        self,
        user_ids: np.ndarray,
        ranked: np.ndarray,
        effects: Effects | None = None,
        rng: np.random.Generator | None = None,
        record: bool = False,
    ) -> Impressions:
        """Vectorized outcomes for ``R`` requests; ``ranked`` is (R, n) with -1 padding.

        With ``record`` the online summary-store counters (impressions, likes, hides) are
        updated, which is what makes online features drift from an offline snapshot.
        """
        eff = effects or Effects()
        gen = rng or self._rng
        cfg = self.config
        user_ids = np.asarray(user_ids, dtype=np.int64)
        ranked = np.asarray(ranked, dtype=np.int64)
        n_req, width = ranked.shape
        errors = np.asarray(gen.random(n_req) < eff.error_rate, dtype=bool)
        depth = np.minimum(width, 1 + gen.geometric(1.0 / cfg.mean_scroll_depth, size=n_req))
        pos = np.broadcast_to(np.arange(width), ranked.shape)
        shown = (ranked >= 0) & (pos < depth[:, None]) & ~errors[:, None]
        rows, cols = np.nonzero(shown)
        if rows.size == 0:
            return self._empty_impressions(errors)
        posts = ranked[rows, cols]
        users = user_ids[rows]
        truth = self.truth(users, posts)
        # Fatigue: earlier same-topic / same-author posts in the same list (only shown ones count).
        topics = np.where(shown, self.store.post_topic[np.maximum(ranked, 0)], -1)
        authors = np.where(shown, self.store.post_author[np.maximum(ranked, 0)], -1)
        tri = np.tril(np.ones((width, width), dtype=bool), k=-1)
        same_topic = ((topics[:, :, None] == topics[:, None, :]) & tri).sum(2)[rows, cols]
        same_author = ((authors[:, :, None] == authors[:, None, :]) & tri).sum(2)[rows, cols]
        fatigue = cfg.fatigue_topic**same_topic * cfg.fatigue_author**same_author
        attention = (1.0 + cols) ** (-cfg.position_bias_eta)
        probs = truth.probs * attention[:, None]
        probs[:, :3] *= fatigue[:, None]
        probs[:, 3] = probs[:, 3] * (1.0 + 0.15 * (same_topic + same_author))
        probs = np.clip(probs * eff.action_multipliers()[None, :], 0.0, 1.0)
        actions = (gen.random(probs.shape) < probs).astype(np.int8)
        read = gen.random(rows.size) < truth.p_read * attention * fatigue
        dwell = np.where(
            read,
            np.exp(truth.dwell_mu + _DWELL_SIGMA * gen.standard_normal(rows.size)),
            gen.uniform(0.4, 1.2, size=rows.size),
        )
        dwell = dwell * eff.dwell_multiplier
        violation = self._latent["violation"][posts]
        asked = gen.random(rows.size) < cfg.survey_rate
        q = self._latent["post_quality_logit"][posts]
        idx = SURVEY_BIAS + SURVEY_QUALITY_COEF * np.tanh(q / 2) + SURVEY_COEF["dwell"] * np.log1p(dwell)
        for k, a in enumerate(ACTIONS):
            idx = idx + SURVEY_COEF[a] * actions[:, k]
        worth = (gen.random(rows.size) < _sigmoid(idx)).astype(np.int8)
        if record:
            s = self.store
            np.add.at(s.post_impressions, posts, 1.0)
            np.add.at(s.post_likes, posts, actions[:, 0])
            np.add.at(s.post_hides, posts, actions[:, 3])
        return Impressions(
            request_index=rows.astype(np.int64),
            user_id=users,
            post_id=posts,
            position=cols.astype(np.int64),
            actions=actions,
            dwell=dwell.astype(np.float32),
            violation=violation,
            survey_asked=asked,
            survey_worth=np.where(asked, worth, -1).astype(np.int8),
            errors=errors,
        )

    @staticmethod
    def _empty_impressions(errors: np.ndarray) -> Impressions:
        z = np.zeros(0, dtype=np.int64)
        return Impressions(
            z, z, z, z, np.zeros((0, len(ACTIONS)), np.int8), np.zeros(0, np.float32),
            np.zeros(0, bool), np.zeros(0, bool), np.zeros(0, np.int8), errors,
        )  # fmt: skip

    def sample_users(self, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """Users drawn in proportion to activity (active users send more requests)."""
        gen = rng or self._rng
        a = self._latent["activity"]
        return gen.choice(self.config.n_users, size=n, p=a / a.sum())

    def describe(self) -> dict[str, Any]:
        s = self.store
        return {
            "config": self.config.name,
            "users": s.n_users,
            "posts": s.n_posts,
            "authors": s.n_authors,
            "groups": s.n_groups,
            "follow_edges": int(s.follow_authors.size),
            "memberships": int(s.member_groups.size),
            "violation_rate": float(self._latent["violation"].mean()),
            "flagged_rate": float(s.post_flagged.mean()),
        }
