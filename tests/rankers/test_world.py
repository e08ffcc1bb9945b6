from __future__ import annotations

import numpy as np
import pytest

from rankers.engine.world import ACTIONS, Effects, World, WorldConfig


def test_world_is_deterministic_for_a_seed():
    a, b = World.build(WorldConfig.small(seed=3)), World.build(WorldConfig.small(seed=3))
    c = World.build(WorldConfig.small(seed=4))
    assert np.array_equal(a.store.post_author, b.store.post_author)
    assert np.array_equal(a.store.follow_codes, b.store.follow_codes)
    assert not np.array_equal(a.store.post_author, c.store.post_author)


def test_default_config_matches_the_issue_sizes():
    cfg = WorldConfig()
    assert (cfg.n_users, cfg.n_posts, cfg.n_authors, cfg.n_groups) == (50_000, 200_000, 5_000, 5_000)
    with pytest.raises(ValueError):
        WorldConfig.named("huge")


def test_world_has_graph_quality_and_integrity(small_world):
    s = small_world.store
    assert s.n_posts == 8_000 and s.n_users == 1_500
    degree = np.diff(s.follow_indptr)
    assert degree.min() >= 1 and 8 < degree.mean() < 25
    assert 0.01 < small_world.describe()["violation_rate"] < 0.04
    # Users follow authors of the topics they are interested in (observable history agrees).
    users = np.repeat(np.arange(s.n_users), np.diff(s.follow_indptr))
    share_followed = s.user_topic_hist[
        users, s.post_topic[s.author_posts[s.author_post_indptr[s.follow_authors]]]
    ]
    assert share_followed.mean() > 1.5 / s.n_topics


def test_truth_probabilities_and_value(small_world):
    users = np.repeat(np.arange(50), 100)
    posts = np.tile(np.arange(100), 50)
    t = small_world.truth(users, posts)
    assert t.probs.shape == (5000, len(ACTIONS))
    assert ((t.probs > 0) & (t.probs < 1)).all()
    assert (t.value >= 0).all()
    # Violating posts are reported far more often than clean ones.
    viol = small_world._latent["violation"][posts]
    assert t.probs[viol, 4].mean() > 5 * t.probs[~viol, 4].mean()


def _top_value_lists(world: World, n_users: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    users = rng.integers(0, world.store.n_users, n_users)
    ranked = np.stack([rng.choice(world.store.n_posts, 50, replace=False) for _ in users])
    return users, ranked


def test_position_bias_lowers_engagement_down_the_list(small_world):
    users, ranked = _top_value_lists(small_world)
    imp = small_world.simulate_batch(users, ranked, rng=np.random.default_rng(1))
    top = imp.actions[imp.position < 5, :3].mean()
    deep = imp.actions[(imp.position >= 20) & (imp.position < 30), :3].mean()
    assert top > 1.5 * deep


def test_fatigue_same_topic_list_gets_fewer_likes(small_world):
    s = small_world.store
    topic0 = np.flatnonzero(s.post_topic == 0)[:50]
    diverse = np.array(
        [np.flatnonzero(s.post_topic == t)[k] for k in range(4) for t in range(s.n_topics)][:50]
    )
    users = np.arange(300)
    # Make the comparison fair: same users, ground-truth mean like prob of both lists.
    same = small_world.simulate_batch(users, np.tile(topic0, (300, 1)), rng=np.random.default_rng(2))
    div = small_world.simulate_batch(users, np.tile(diverse, (300, 1)), rng=np.random.default_rng(2))
    p_same = small_world.truth(users.repeat(50), np.tile(topic0, 300)).probs[:, 0].mean()
    p_div = small_world.truth(users.repeat(50), np.tile(diverse, 300)).probs[:, 0].mean()
    assert same.action("like").mean() / p_same < 0.8 * div.action("like").mean() / p_div


def test_hide_multiplier_effect_raises_hides_with_common_random_numbers(small_world):
    users, ranked = _top_value_lists(small_world, 1000)
    base = small_world.simulate_batch(users, ranked, rng=np.random.default_rng(5))
    more = small_world.simulate_batch(
        users, ranked, effects=Effects(hide_multiplier=1.5), rng=np.random.default_rng(5)
    )
    assert more.action("hide").sum() > base.action("hide").sum() * 1.3
    assert np.array_equal(more.action("like"), base.action("like"))  # other outcomes untouched


def test_error_rate_effect_drops_requests(small_world):
    users, ranked = _top_value_lists(small_world, 500)
    imp = small_world.simulate_batch(
        users, ranked, effects=Effects(error_rate=0.2), rng=np.random.default_rng(6)
    )
    assert 0.12 < imp.errors.mean() < 0.28
    assert not np.isin(imp.request_index, np.flatnonzero(imp.errors)).any()


def test_survey_is_a_small_random_sample(small_world):
    users, ranked = _top_value_lists(small_world, 1000)
    imp = small_world.simulate_batch(users, ranked, rng=np.random.default_rng(7))
    rate = imp.survey_asked.mean()
    assert abs(rate - small_world.config.survey_rate) < 0.01
    assert set(np.unique(imp.survey_worth[imp.survey_asked])) <= {0, 1}
    assert (imp.survey_worth[~imp.survey_asked] == -1).all()
    # Surveyed impressions with a share are judged worth it more often than those with a hide.
    users, ranked = _top_value_lists(small_world, 6000)
    imp = small_world.simulate_batch(users, ranked, rng=np.random.default_rng(8))
    asked = imp.survey_asked
    shared = imp.survey_worth[asked & (imp.action("share") > 0)]
    hidden = imp.survey_worth[asked & (imp.action("hide") > 0)]
    assert shared.size >= 10 and hidden.size >= 10
    assert shared.mean() > hidden.mean()


def test_record_updates_online_counters_only_when_asked():
    world = World.build(WorldConfig.small(seed=9))
    before = world.store.post_impressions.copy()
    world.simulate_impressions(1, np.arange(50), rng=np.random.default_rng(0))
    assert np.array_equal(before, world.store.post_impressions)
    imp = world.simulate_impressions(1, np.arange(50), rng=np.random.default_rng(0), record=True)
    assert world.store.post_impressions.sum() == before.sum() + len(imp)
