"""Query strategies of active learning: which unlabeled clips to label next.

Every strategy takes what the model said about the pool (P(class 1) per clip, Monte Carlo dropout
passes, embeddings) and returns a `Selection`: the indices of the k clips to label, in the order they
should be labeled, with each one's score. Pure numpy, seeded where random, no torch: the service
(`service.selection`) and the simulation (`active_learning.simulate`) share it.

Scores and their direction:

| strategy          | needs                  | score                                   | chosen first |
|-------------------|------------------------|-----------------------------------------|--------------|
| `uncertainty`     | p                      | abs(0.5 - p): the client's own order    | smallest     |
| `entropy`         | p (or MC passes)       | binary entropy of p (of the MC mean)    | largest      |
| `bald`            | MC passes              | mutual information H(mean) - mean(H)    | largest      |
| `variation_ratio` | MC passes              | 1 - share of passes voting the mode     | largest      |
| `coreset`         | embeddings             | distance to the nearest chosen/labeled  | largest, greedy |
| `badge`           | p, embeddings          | k-means++ distance of gradient embedding | k-means++ order |
| `random`          | seed                   | a uniform draw in [0, 1)                | smallest     |

Ties keep the pool's order (the order of `/predict`), so `uncertainty` lists clips exactly as the
orcaal client's `ORDER BY abs(0.5 - predicted_value)` does for distinct values. BALD and the
variation ratio follow Gal, Islam & Ghahramani (2017); coreset is the k-center greedy of Sener &
Savarese (2018); badge is Ash et al. (2020) with the pseudo-label's gradient of a sigmoid or
softmax head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("uncertainty", "entropy", "bald", "variation_ratio", "coreset", "badge", "random")
MC_STRATEGIES = ("bald", "variation_ratio")  # need Monte Carlo dropout passes
EMBEDDING_STRATEGIES = ("coreset", "badge")  # need embeddings

_EPS = 1e-12


class StrategyError(ValueError):
    """A strategy that does not exist, or inputs it cannot work with."""


@dataclass(frozen=True)
class Selection:
    indices: np.ndarray  # int64, into the pool, in the order to label them
    scores: np.ndarray  # float64, the strategy's score of each chosen clip


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """H(p) in nats of a Bernoulli(p), 0 at p = 0 or 1."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    q = 1.0 - p
    return -(p * np.log(np.maximum(p, _EPS)) + q * np.log(np.maximum(q, _EPS)))


def bald_scores(passes: np.ndarray) -> np.ndarray:
    """Mutual information between the prediction and the weights, from MC passes (T, N) of P(class 1)."""
    passes = _check_passes(passes)
    return binary_entropy(passes.mean(axis=0)) - binary_entropy(passes).mean(axis=0)


def variation_ratio_scores(passes: np.ndarray) -> np.ndarray:
    """1 - (passes voting the most frequent class) / T, from MC passes (T, N); a pass votes class 1 at p ≥ 0.5."""
    passes = _check_passes(passes)
    ones = (passes >= 0.5).sum(axis=0)
    return 1.0 - np.maximum(ones, passes.shape[0] - ones) / passes.shape[0]


def _check_passes(passes) -> np.ndarray:
    passes = np.asarray(passes, dtype=np.float64)
    if passes.ndim != 2 or passes.shape[0] < 2:
        raise StrategyError(f"Monte Carlo strategies need at least 2 passes of shape (T, N), got {passes.shape}")
    return passes


def _top(scores: np.ndarray, k: int, largest: bool) -> Selection:
    """The k best scores; a stable sort keeps the pool's order among ties."""
    order = np.argsort(-scores if largest else scores, kind="stable")[:k]
    return Selection(order.astype(np.int64), scores[order].astype(np.float64))


def k_center_greedy(embeddings: np.ndarray, k: int, labeled: np.ndarray | None = None,
                    rng: np.random.Generator | None = None) -> Selection:
    """Greedy k-center: each pick is the clip farthest from everything labeled or picked so far.

    Without labeled embeddings the first pick is a seeded random clip (its score is inf). Scores are
    the Euclidean distance to the nearest center at the moment of the pick, so they never increase."""
    x = np.asarray(embeddings, dtype=np.float64)
    n = len(x)
    nearest = np.full(n, np.inf)
    if labeled is not None and len(labeled):
        for chunk in np.array_split(np.asarray(labeled, dtype=np.float64), max(1, len(labeled) // 256)):
            nearest = np.minimum(nearest, _distances(x, chunk).min(axis=1))
    picks, scores = [], []
    for _ in range(min(k, n)):
        if np.isinf(nearest).all():
            pick = int((rng or np.random.default_rng(0)).integers(n))
        else:
            pick = int(np.argmax(np.where(np.isnan(nearest), -np.inf, nearest)))
        picks.append(pick)
        scores.append(float(nearest[pick]))
        nearest = np.minimum(nearest, _distances(x, x[pick:pick + 1])[:, 0])
        nearest[pick] = -np.inf  # never again
    return Selection(np.array(picks, dtype=np.int64), np.array(scores, dtype=np.float64))


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return np.sqrt(np.maximum(squared, 0.0))


def gradient_embeddings(probabilities: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """BADGE's gradient of the loss at the pseudo-label with respect to the last layer's weights.

    For a sigmoid head (p = P(class 1), shape (N,)) the logit's gradient is p - ŷ; for a softmax head
    (N, C) it is p - onehot(ŷ); either way times the embedding (bias included as a constant 1)."""
    h = np.asarray(embeddings, dtype=np.float64)
    h = np.concatenate([h, np.ones((len(h), 1))], axis=1)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 1:
        g = p - (p >= 0.5)
        return g[:, None] * h
    g = p - np.eye(p.shape[1])[p.argmax(axis=1)]
    return (g[:, :, None] * h[:, None, :]).reshape(len(h), -1)


def kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> Selection:
    """k-means++ seeding: the first pick is the largest norm (BADGE's choice), then each pick is drawn
    with probability proportional to its squared distance to the nearest pick. Scores: that distance."""
    x = np.asarray(points, dtype=np.float64)
    n = len(x)
    if n == 0:
        return Selection(np.zeros(0, np.int64), np.zeros(0))
    first = int(np.argmax((x * x).sum(1)))
    picks, scores = [first], [float(np.sqrt((x[first] ** 2).sum()))]
    nearest = _distances(x, x[first:first + 1])[:, 0] ** 2
    nearest[first] = 0.0
    while len(picks) < min(k, n):
        total = nearest.sum()
        if total <= 0:  # every remaining point coincides with a pick: take them in pool order
            chosen = set(picks)
            pick = next(i for i in range(n) if i not in chosen)
        else:
            pick = int(rng.choice(n, p=nearest / total))
        picks.append(pick)
        scores.append(float(np.sqrt(nearest[pick])))
        nearest = np.minimum(nearest, _distances(x, x[pick:pick + 1])[:, 0] ** 2)
        nearest[pick] = 0.0
    return Selection(np.array(picks, dtype=np.int64), np.array(scores, dtype=np.float64))


def select(strategy: str, k: int, *, probabilities=None, passes=None, embeddings=None,
           labeled_embeddings=None, seed: int | None = None) -> Selection:
    """The k clips to label next by `strategy` (see the module docstring for what each needs)."""
    if strategy not in STRATEGIES:
        raise StrategyError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
    if k < 1:
        raise StrategyError(f"k must be at least 1, got {k}")
    rng = np.random.default_rng(seed)
    if strategy == "uncertainty":
        p = np.asarray(probabilities, dtype=np.float64)
        return _top(np.abs(0.5 - p), k, largest=False)
    if strategy == "entropy":
        p = np.asarray(passes, dtype=np.float64).mean(axis=0) if passes is not None else probabilities
        return _top(binary_entropy(p), k, largest=True)
    if strategy == "bald":
        return _top(bald_scores(passes), k, largest=True)
    if strategy == "variation_ratio":
        return _top(variation_ratio_scores(passes), k, largest=True)
    if strategy == "coreset":
        return k_center_greedy(embeddings, k, labeled_embeddings, rng)
    if strategy == "badge":
        return kmeans_plus_plus(gradient_embeddings(probabilities, embeddings), k, rng)
    n = len(probabilities if probabilities is not None else embeddings)
    return _top(rng.random(n), k, largest=False)
