"""Two-tower on any interactions table, ANN recall against exact search, MovieLens-100k."""

from __future__ import annotations

import numpy as np
import pytest

from rankers.engine.ann import (
    ExactIndex,
    HNSWIndex,
    build_index,
    exact_topk,
    measure_ann,
    recall_against_exact,
)
from rankers.engine.two_tower import (
    InteractionsTable,
    TwoTowerConfig,
    evaluate_leave_last_out,
    leave_last_out_metrics,
    popularity_baseline,
    rank_of_targets,
    train_two_tower,
)


def test_leave_last_out_takes_each_users_latest_item():
    table = InteractionsTable.from_raw(
        users=np.array(["a", "a", "a", "b", "b", "c"]),
        items=np.array([10, 11, 12, 10, 13, 11]),
        timestamps=np.array([3.0, 1.0, 2.0, 5.0, 9.0, 1.0]),
    )
    train, users, items = table.leave_last_out()
    raw_pairs = {(table.user_ids[u], table.item_ids[i]) for u, i in zip(users, items, strict=True)}
    assert raw_pairs == {("a", 10), ("b", 13)}  # c has one interaction: stays in training
    assert len(train) == 4


def test_rank_and_metrics_by_hand():
    scores = np.array([[0.9, 0.5, 0.1, 0.7], [0.2, 0.3, 0.4, 0.1]])
    ranks = rank_of_targets(scores, np.array([1, 0]), exclude=[np.array([0]), np.array([])])
    assert list(ranks) == [1, 2]  # row 0: item 0 excluded, 3 beats 1; row 1: 2 and 1 beat 0
    m = leave_last_out_metrics(ranks, k_recall=2, k_ndcg=2)
    assert m.recall_at_k == 0.5
    assert m.ndcg_at_k == pytest.approx((1 / np.log2(3)) / 2)
    with pytest.raises(ValueError):
        InteractionsTable(np.array([0]), np.array([5]), np.array([0.0]), n_users=1, n_items=3)


def _clustered_table(seed: int = 0) -> InteractionsTable:
    """Users and items in 10 clusters; users interact mostly within their cluster."""
    rng = np.random.default_rng(seed)
    n_users, n_items, n = 400, 300, 12_000
    u_c, i_c = rng.integers(0, 10, n_users), rng.integers(0, 10, n_items)
    users = rng.integers(0, n_users, n)
    same = rng.random(n) < 0.85
    items = np.where(
        same,
        np.array([rng.choice(np.flatnonzero(i_c == u_c[u])) for u in users]),
        rng.integers(0, n_items, n),
    )
    return InteractionsTable(users, items, rng.random(n), n_users, n_items)


def test_two_tower_with_in_batch_negatives_beats_popularity():
    table = _clustered_table()
    train, users, items = table.leave_last_out()
    retriever = train_two_tower(
        train, TwoTowerConfig(dim=16, id_dim=16, hidden=32, epochs=6, batch_size=256, temperature=0.1)
    )
    assert retriever.history[-1] < retriever.history[0]
    learned = evaluate_leave_last_out(retriever, train, users, items)
    pop = popularity_baseline(train, users, items)
    assert learned.recall_at_k > 2 * pop.recall_at_k
    emb = retriever.item_embeddings()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_exact_topk_matches_full_sort():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(2000, 8)).astype(np.float32)
    q = rng.normal(size=(3, 8)).astype(np.float32)
    ids, scores = exact_topk(q, v, 50)
    full = np.argsort(-(q @ v.T), axis=1)[:, :50]
    assert np.array_equal(ids, full)
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert recall_against_exact(ids, full) == 1.0
    assert isinstance(build_index(v), ExactIndex)


def test_hnsw_recall_at_500_on_trained_embeddings(trained):
    retriever = trained.unified.retriever
    items = retriever.item_embeddings()
    index = HNSWIndex.build(items, ef=600)
    queries = retriever.user_embeddings(np.arange(0, 1500, 15))
    m = measure_ann(index, items, queries, k=500)
    assert m.recall >= 0.95
    assert m.kind == "hnsw" and m.n_items == items.shape[0]


def test_movielens_100k_two_tower(tmp_path):
    from rankers.engine.movielens import load_ml100k, locate_ml100k

    path = locate_ml100k(install=True)
    if path is None:
        pytest.skip("recbole wheel (MovieLens-100k) could not be installed: no network")
    table = load_ml100k(path)
    assert (len(table), table.n_users, table.n_items) == (100_000, 943, 1682)
    assert table.item_features is not None and table.item_features.shape[1] >= 18  # genres
    train, users, items = table.leave_last_out()
    assert users.size == 943
    cfg = TwoTowerConfig(dim=32, id_dim=32, hidden=64, temperature=0.05, epochs=3, batch_size=512, lr=0.003)
    retriever = train_two_tower(train, cfg)
    learned = evaluate_leave_last_out(retriever, train, users, items)
    pop = popularity_baseline(train, users, items)
    assert learned.recall_at_k > pop.recall_at_k
    assert learned.ndcg_at_k > pop.ndcg_at_k
