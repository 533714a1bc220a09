"""Query strategies (active_learning.acquisition) on constructed pools whose right answer is known."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from active_learning.acquisition import (
    names,
    StrategyError,
    bald_scores,
    binary_entropy,
    gradient_embeddings,
    select,
    variation_ratio_scores,
)


def test_uncertainty_lists_clips_as_the_orcaal_clients_sql_does():
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.random(200), [0.5, 0.49999, 0.50001, 0.0, 1.0]])
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE prediction (id INTEGER PRIMARY KEY, predicted_value FLOAT)")
    db.executemany("INSERT INTO prediction (predicted_value) VALUES (?)", [(float(v),) for v in p])
    # api/app/routes.py: order_by(func.abs(0.5 - Prediction.predicted_value)).limit(5), here with limit 40
    client = [row[0] for row in db.execute(
        "SELECT predicted_value FROM prediction ORDER BY abs(0.5 - predicted_value) LIMIT 40")]
    chosen = select("uncertainty", 40, probabilities=p)
    assert [float(p[i]) for i in chosen.indices] == client
    np.testing.assert_array_equal(chosen.scores, np.abs(0.5 - p[chosen.indices]))


def test_uncertainty_keeps_pool_order_among_ties():
    chosen = select("uncertainty", 4, probabilities=np.array([0.9, 0.1, 0.5, 0.9, 0.1]))
    assert chosen.indices.tolist() == [2, 0, 1, 3]


def test_entropy_is_highest_at_one_half_and_uses_mc_means_when_given():
    p = np.array([0.01, 0.5, 0.3, 0.99])
    assert select("entropy", 2, probabilities=p).indices.tolist() == [1, 2]
    assert binary_entropy(np.array([0.5]))[0] == pytest.approx(np.log(2))
    passes = np.array([[0.0, 0.9], [1.0, 0.9]])  # clip 0 averages 0.5 over the passes
    assert select("entropy", 1, probabilities=np.array([0.9, 0.5]), passes=passes).indices.tolist() == [0]


def test_bald_is_the_mutual_information_of_the_passes():
    passes = np.array([[0.1, 0.5, 0.3], [0.9, 0.5, 0.3]])
    h = lambda q: -(q * np.log(q) + (1 - q) * np.log(1 - q))  # noqa: E731
    expected = [h(0.5) - h(0.1), 0.0, 0.0]  # agreeing passes carry no information about the weights
    np.testing.assert_allclose(bald_scores(passes), expected, atol=1e-12)
    assert select("bald", 1, passes=passes).indices.tolist() == [0]


def test_variation_ratio_counts_the_passes_outvoted():
    passes = np.array([[0.9, 0.2, 0.6], [0.8, 0.7, 0.4], [0.7, 0.9, 0.3], [0.6, 0.1, 0.2]])
    np.testing.assert_allclose(variation_ratio_scores(passes), [0.0, 0.5, 0.25])


def test_monte_carlo_strategies_refuse_a_single_pass():
    with pytest.raises(StrategyError, match="at least 2 passes"):
        select("bald", 1, passes=np.array([[0.5, 0.4]]))


def _clusters(centers: np.ndarray, per_cluster: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    points = np.concatenate([c + 0.05 * rng.standard_normal((per_cluster, centers.shape[1])) for c in centers])
    labels = np.repeat(np.arange(len(centers)), per_cluster)
    order = rng.permutation(len(points))
    return points[order], labels[order]


def test_coreset_takes_one_clip_from_every_cluster_before_a_second():
    centers = 10.0 * np.eye(6)[:, :5] + np.arange(6)[:, None]  # 6 well-separated clusters in 5 dimensions
    points, labels = _clusters(centers, 30)
    chosen = select("coreset", 6, embeddings=points, seed=1)
    assert sorted(labels[chosen.indices].tolist()) == list(range(6))
    assert len(set(chosen.indices.tolist())) == 6
    assert np.all(np.diff(chosen.scores[1:]) <= 0)  # greedy distances never grow


def test_coreset_starts_from_what_is_labeled():
    centers = 10.0 * np.eye(4)
    points, labels = _clusters(centers, 25)
    labeled, _ = _clusters(centers[:2], 3, seed=5)  # clusters 0 and 1 already labeled
    chosen = select("coreset", 2, embeddings=points, labeled_embeddings=labeled)
    assert sorted(labels[chosen.indices].tolist()) == [2, 3]


def test_badge_mixes_uncertainty_with_diversity_and_is_reproducible():
    centers = 10.0 * np.eye(3)
    points, labels = _clusters(centers, 20)
    p = np.where(labels == 0, 0.02, 0.45)  # cluster 0 is certain: its gradient embeddings are tiny
    chosen = select("badge", 4, probabilities=p, embeddings=points, seed=7)
    assert len(set(chosen.indices.tolist())) == 4
    assert {1, 2} <= set(labels[chosen.indices].tolist())
    again = select("badge", 4, probabilities=p, embeddings=points, seed=7)
    assert chosen.indices.tolist() == again.indices.tolist()


def test_gradient_embeddings_of_sigmoid_and_softmax_heads_agree_for_two_classes():
    h = np.array([[1.0, 2.0], [3.0, -1.0]])
    p = np.array([0.8, 0.3])
    sigmoid = gradient_embeddings(p, h)
    softmax = gradient_embeddings(np.stack([1 - p, p], axis=1), h)
    np.testing.assert_allclose(sigmoid, [[-0.2, -0.4, -0.2], [0.9, -0.3, 0.3]])
    np.testing.assert_allclose(np.abs(softmax[:, 3:]), np.abs(sigmoid))


def test_random_is_reproducible_with_a_seed_and_changes_without():
    p = np.linspace(0, 1, 50)
    first = select("random", 10, probabilities=p, seed=11).indices.tolist()
    assert first == select("random", 10, probabilities=p, seed=11).indices.tolist()
    assert first != select("random", 10, probabilities=p, seed=12).indices.tolist()
    assert len(set(first)) == 10


def test_k_larger_than_the_pool_returns_the_whole_pool():
    for strategy in ("uncertainty", "coreset", "badge", "random"):
        chosen = select(strategy, 10, probabilities=np.array([0.2, 0.6, 0.5]),
                        embeddings=np.eye(3), seed=0)
        assert sorted(chosen.indices.tolist()) == [0, 1, 2], strategy


@pytest.mark.parametrize("strategy,k,message", [("nope", 3, "unknown strategy 'nope'"), ("uncertainty", 0, "k must")])
def test_bad_strategy_or_k_is_refused(strategy, k, message):
    with pytest.raises(StrategyError, match=message):
        select(strategy, k, probabilities=np.array([0.5]))
    assert "uncertainty" in names()


def test_a_strategy_is_declared_in_one_place_and_every_reader_knows_it(monkeypatch):
    """One @strategy declaration: select, /query's parameter check, the simulation's check and the
    docs table all take it, and what it needs is what the callers compute."""
    from active_learning import acquisition, simulate
    from service.params import Limits, query_params

    monkeypatch.setattr(acquisition, "_REGISTRY", dict(acquisition._REGISTRY))  # undone after the test

    @acquisition.strategy("most_confident", needs=acquisition.Needs(embeddings=True),
                          score="abs(0.5 - p)", first="largest")
    def most_confident(pool, k, rng):
        assert pool.embeddings is not None  # declared, so given
        return acquisition.top_k(np.abs(0.5 - pool.probabilities), k, largest=True)

    chosen = select("most_confident", 2, probabilities=np.array([0.5, 0.9, 0.45, 0.02]), embeddings=np.eye(4))
    assert chosen.indices.tolist() == [3, 1]
    with pytest.raises(StrategyError, match="most_confident needs the clips' embeddings"):
        select("most_confident", 2, probabilities=np.array([0.5, 0.9]))
    assert names()[-1] == "most_confident"
    assert acquisition.needs("most_confident") == acquisition.Needs(embeddings=True)
    assert "| `most_confident` | p, embeddings | abs(0.5 - p) | largest |" in acquisition.markdown_table()
    args = {"model_url": "m.h5", "unlabeled_url": "u/", "img_width": "8", "img_height": "8", "k": "2"}
    assert query_params({**args, "strategy": "most_confident"}, Limits(), 100).strategy == "most_confident"
    config = simulate.SimulationConfig(model="m.h5", labeled_dir="x", rows=8, cols=8, strategies=["most_confident"])
    simulate._check(config, pool_size=100, n_classes=2)  # accepted
    with pytest.raises(ValueError, match="declared twice"):
        acquisition.strategy("most_confident", score="", first="")(most_confident)


def test_what_each_strategy_needs():
    from active_learning.acquisition import Needs, needs

    assert needs("uncertainty") == needs("random") == Needs()
    assert needs("entropy") == Needs() and needs("entropy", passes_given=True) == Needs(passes=True)
    assert needs("bald") == needs("variation_ratio") == Needs(passes=True)
    assert needs("badge") == Needs(embeddings=True)  # badge never reads the labeled set
    assert needs("coreset") == Needs(embeddings=True, labeled_embeddings=True)
    with pytest.raises(StrategyError, match="unknown strategy 'nope'"):
        needs("nope")


def test_the_docs_table_is_the_registry():
    from pathlib import Path

    from active_learning.acquisition import markdown_table

    page = (Path(__file__).resolve().parent.parent / "docs" / "active-learning.md").read_text()
    assert markdown_table() in page
