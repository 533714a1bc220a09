"""Query strategies of active learning: which unlabeled clips to label next.

Every strategy takes what the model said about the pool (P(class 1) per clip, Monte Carlo dropout
passes, embeddings) and returns a `Selection`: the indices of the k clips to label, in the order they
should be labeled, with each one's score. Pure numpy, seeded where random, no torch: the service
(`service.selection`) and the simulation (`active_learning.simulate`) share it.

Each strategy is declared once, with `@strategy(name, needs=…, score=…, first=…)`: the registry
that `/query`'s parameter check, the service, the simulation and the table in
docs/active-learning.md (`markdown_table()`, checked by a test) all read. What each needs:
`Needs(embeddings=, passes=, labeled_embeddings=)`; `needs(name, passes_given)` resolves it.

Ties keep the pool's order (the order of `/predict`), so `uncertainty` lists clips exactly as the
orcaal client's `ORDER BY abs(0.5 - predicted_value)` does for distinct values. BALD and the
variation ratio follow Gal, Islam & Ghahramani (2017); coreset is the k-center greedy of Sener &
Savarese (2018); badge is Ash et al. (2020) with the pseudo-label's gradient of a sigmoid or
softmax head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

_EPS = 1e-12


class StrategyError(ValueError):
    """A strategy that does not exist, or inputs it cannot work with."""


@dataclass(frozen=True)
class Selection:
    indices: np.ndarray  # int64, into the pool, in the order to label them
    scores: np.ndarray  # float64, the strategy's score of each chosen clip


@dataclass(frozen=True)
class Needs:
    """What a strategy needs beyond P(class 1) of every clip of the pool."""

    embeddings: bool = False  # the pool's embeddings (the input of the model's output layer)
    passes: bool | None = False  # Monte Carlo dropout passes: True needs them, None uses them when asked for
    labeled_embeddings: bool = False  # embeddings of the clips labeled already (coreset's first centers)


@dataclass(frozen=True)
class Pool:
    """What the model said about the unlabeled pool, as a strategy receives it."""

    probabilities: np.ndarray | None  # float64 (n,): P(class 1)
    passes: np.ndarray | None = None  # float64 (T, n): P(class 1) per Monte Carlo dropout pass
    embeddings: np.ndarray | None = None  # (n, d)
    labeled_embeddings: np.ndarray | None = None  # (m, d), or None


@dataclass(frozen=True)
class Strategy:
    name: str
    choose: Callable[[Pool, int, np.random.Generator], Selection]
    needs: Needs
    score: str  # what its score is, for the docs' table
    first: str  # which scores are labeled first


_REGISTRY: dict[str, Strategy] = {}  # filled once, at import, by the @strategy declarations below


def strategy(name: str, *, needs: Needs = Needs(), score: str, first: str):
    """Declare a query strategy: `choose(pool, k, rng) -> Selection` (k ≥ 1, at most the pool's size
    is not guaranteed: return fewer when the pool is smaller). Adding a strategy is this decorator on
    one function (docs/active-learning.md, "Adding a strategy")."""
    def declare(choose):
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is declared twice")
        _REGISTRY[name] = Strategy(name, choose, needs, score, first)
        return choose

    return declare


def names() -> tuple[str, ...]:
    """The declared strategies, in the order they were declared."""
    return tuple(_REGISTRY)


def get(name: str) -> Strategy:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise StrategyError(f"unknown strategy {name!r}; one of {', '.join(_REGISTRY)}") from None


def needs(name: str, passes_given: bool = False) -> Needs:
    """What to compute for `name`: `passes` resolved to True or False (`passes_given`: the caller asked
    for Monte Carlo passes, which `entropy` then uses)."""
    wanted = get(name).needs
    passes = bool(passes_given) if wanted.passes is None else wanted.passes
    return Needs(embeddings=wanted.embeddings or wanted.labeled_embeddings, passes=passes,
                 labeled_embeddings=wanted.labeled_embeddings)


def markdown_table() -> str:
    """The strategies as docs/active-learning.md shows them (a test keeps the page in step)."""
    def needed(wanted: Needs) -> str:
        parts = ["p"]
        if wanted.passes:
            parts = ["MC passes"]
        elif wanted.passes is None:
            parts = ["p (or MC passes)"]
        if wanted.embeddings:
            parts.append("embeddings")
        if wanted.labeled_embeddings:
            parts.append("the labeled set's embeddings when given")
        return ", ".join(parts)

    rows = ["| strategy | needs | score | chosen first |", "|---|---|---|---|"]
    rows += [f"| `{s.name}` | {needed(s.needs)} | {s.score} | {s.first} |" for s in _REGISTRY.values()]
    return "\n".join(rows)


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


def top_k(scores: np.ndarray, k: int, largest: bool) -> Selection:
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


# --------------------------------------------------------------------------- the strategies

@strategy("uncertainty", score="abs(0.5 - p): the client's own order", first="smallest")
def _uncertainty(pool: Pool, k: int, rng) -> Selection:
    return top_k(np.abs(0.5 - _probabilities(pool)), k, largest=False)


@strategy("entropy", needs=Needs(passes=None), score="binary entropy of p (of the MC mean)", first="largest")
def _entropy(pool: Pool, k: int, rng) -> Selection:
    p = np.asarray(pool.passes, dtype=np.float64).mean(axis=0) if pool.passes is not None else _probabilities(pool)
    return top_k(binary_entropy(p), k, largest=True)


@strategy("bald", needs=Needs(passes=True), score="mutual information H(mean) - mean(H)", first="largest")
def _bald(pool: Pool, k: int, rng) -> Selection:
    return top_k(bald_scores(pool.passes), k, largest=True)


@strategy("variation_ratio", needs=Needs(passes=True), score="1 - share of passes voting the mode",
          first="largest")
def _variation_ratio(pool: Pool, k: int, rng) -> Selection:
    return top_k(variation_ratio_scores(pool.passes), k, largest=True)


@strategy("coreset", needs=Needs(embeddings=True, labeled_embeddings=True),
          score="distance to the nearest chosen/labeled", first="largest, greedy")
def _coreset(pool: Pool, k: int, rng) -> Selection:
    return k_center_greedy(pool.embeddings, k, pool.labeled_embeddings, rng)


@strategy("badge", needs=Needs(embeddings=True), score="k-means++ distance of gradient embedding",
          first="k-means++ order")
def _badge(pool: Pool, k: int, rng) -> Selection:
    return kmeans_plus_plus(gradient_embeddings(_probabilities(pool), pool.embeddings), k, rng)


@strategy("random", score="a uniform draw in [0, 1)", first="smallest")
def _random(pool: Pool, k: int, rng) -> Selection:
    n = len(pool.probabilities if pool.probabilities is not None else pool.embeddings)
    return top_k(rng.random(n), k, largest=False)


def _probabilities(pool: Pool) -> np.ndarray:
    if pool.probabilities is None:
        raise StrategyError("this strategy needs P(class 1) of every clip")
    return np.asarray(pool.probabilities, dtype=np.float64)


def select(strategy: str, k: int, *, probabilities=None, passes=None, embeddings=None,
           labeled_embeddings=None, seed: int | None = None) -> Selection:
    """The k clips to label next by `strategy` (see `markdown_table()` for what each needs)."""
    declared = get(strategy)
    if k < 1:
        raise StrategyError(f"k must be at least 1, got {k}")
    if declared.needs.passes is True and passes is None:
        raise StrategyError(f"{strategy} needs Monte Carlo dropout passes")
    if declared.needs.embeddings and embeddings is None:
        raise StrategyError(f"{strategy} needs the clips' embeddings")
    pool = Pool(None if probabilities is None else np.asarray(probabilities, dtype=np.float64), passes,
                embeddings, labeled_embeddings)
    return declared.choose(pool, k, np.random.default_rng(seed))
