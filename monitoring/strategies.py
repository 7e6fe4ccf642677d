"""Active-learning strategies behind one interface: a pool of candidates in, a priority order out.

Every strategy maps a :class:`Pool` (calibrated class probabilities and L2-normalised
embeddings of unlabeled traffic) and the *covered* set (labeled and already-queued embeddings,
a FAISS index) to candidate indices, most worth a label first. Score-based strategies go through
:func:`rank`, which never ranks a non-finite score; batch strategies (k-center greedy,
typicality) build their order directly. Nothing here allocates an n×n matrix: distances are
taken against one centre at a time or through FAISS, in chunks.

Distances are squared L2 between unit vectors, i.e. ``2 - 2·cos``, in [0, 4].
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import faiss
import numpy as np

log = logging.getLogger(__name__)

CHUNK = 65_536  # rows per FAISS search call: bounds the temporary (chunk, k) arrays


class Covered(Protocol):
    """The labeled and queued embeddings a new candidate should be far from."""

    def __len__(self) -> int: ...

    def nearest(self, queries: np.ndarray) -> np.ndarray:
        """Squared L2 distance from each (unit) query row to its nearest covered vector, shape (n,)."""
        ...


@dataclass(frozen=True)
class Pool:
    """Unlabeled candidates.

    Attributes:
        probs: (n, K) class probabilities, rows summing to 1 (calibrated by serving).
        embeddings: (n, D) float32 embeddings; normalised to unit length on construction.
    """

    probs: np.ndarray
    embeddings: np.ndarray

    def __post_init__(self) -> None:
        if self.probs.ndim != 2 or self.embeddings.ndim != 2 or len(self.probs) != len(self.embeddings):
            raise ValueError(
                f"probs {self.probs.shape} and embeddings {self.embeddings.shape} must be "
                "(n, K) and (n, D) with the same n"
            )
        object.__setattr__(self, "embeddings", normalize(self.embeddings))

    def __len__(self) -> int:
        return len(self.probs)

    @property
    def predicted(self) -> np.ndarray:
        """Predicted class index per candidate, shape (n,)."""
        return np.argmax(np.nan_to_num(self.probs, nan=-1.0), axis=1)


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as C-contiguous float32 for FAISS.

    Rows that already have unit norm are returned as they are, without a copy.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]  # no (n, D) temporary, unlike np.linalg.norm
    if np.allclose(norms, 1.0, atol=1e-4):
        return x
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float32)


# -- scores to ranks -----------------------------------------------------------------------------
def rank(scores: np.ndarray, limit: int | None = None) -> np.ndarray:
    """Indices of the ``limit`` highest finite scores, best first (ties: lower index first).

    Non-finite scores (NaN, ±inf: a broken model output) are never ranked; they are logged.
    Runs in O(n + limit·log limit) with ``argpartition``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(scores))
    if len(finite) < len(scores):
        log.warning(
            "%d of %d candidates have a non-finite score; they are not ranked",
            len(scores) - len(finite),
            len(scores),
        )
    limit = len(finite) if limit is None else min(limit, len(finite))
    if limit <= 0:
        return np.zeros(0, dtype=np.int64)
    vals = scores[finite]
    if limit < len(finite):
        part = np.argpartition(-vals, limit - 1)[:limit]
    else:
        part = np.arange(len(finite))
    order = part[np.lexsort((finite[part], -vals[part]))]
    return finite[order].astype(np.int64)


def calibrate(probs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Temperature-scaled probabilities, ``softmax(log p / T)``; T = 1 leaves them as they are."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if temperature == 1.0:
        return probs
    logp = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=1, keepdims=True)


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """1 − max p, in [0, 1 − 1/K]."""
    return 1.0 - probs.max(axis=1)


def margin(probs: np.ndarray) -> np.ndarray:
    """1 − (p₁ − p₂), the gap between the top two classes turned into an uncertainty in [0, 1]."""
    top2 = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
    return 1.0 - np.abs(top2[:, 1] - top2[:, 0])


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy normalised by log K, in [0, 1]."""
    p = np.clip(probs, 1e-12, 1.0)
    return -(probs * np.log(p)).sum(axis=1) / np.log(probs.shape[1])


def novelty(embeddings: np.ndarray, covered: Covered | None) -> np.ndarray:
    """Squared distance of each unit row to its nearest covered embedding, shape (n,); 4 (the
    maximum) when nothing is covered."""
    if covered is None or len(covered) == 0:
        return np.full(len(embeddings), 4.0, dtype=np.float32)
    out = np.empty(len(embeddings), dtype=np.float32)
    for start in range(0, len(embeddings), CHUNK):
        out[start : start + CHUNK] = covered.nearest(embeddings[start : start + CHUNK])
    return out


# -- batch strategies ----------------------------------------------------------------------------
def k_center_greedy(
    x: np.ndarray, k: int, min_dist: np.ndarray | None = None, weights: np.ndarray | None = None
) -> np.ndarray:
    """Greedy k-center (coreset): repeatedly take the point farthest from everything chosen so far.

    Args:
        x: (n, D) unit rows.
        k: how many to choose.
        min_dist: (n,) squared distance of each point to the covered set (default: +inf, i.e.
            nothing covered yet, so the first pick is the highest-weighted point).
        weights: (n,) non-negative multipliers of the distance (uncertainty-weighted coreset).

    Returns:
        Up to ``k`` distinct indices in pick order. O(n·k·D) time, O(n) extra memory.
    """
    n = len(x)
    dist = (
        np.full(n, np.inf, dtype=np.float64) if min_dist is None else np.asarray(min_dist, np.float64).copy()
    )
    w = np.ones(n) if weights is None else np.nan_to_num(np.asarray(weights, np.float64), nan=0.0)
    dist[~np.isfinite(w)] = -np.inf
    picks: list[int] = []
    for _ in range(min(k, n)):
        gain = np.where(np.isinf(dist) & (dist > 0), 1e9, dist) * w
        gain[picks] = -np.inf
        best = int(np.argmax(gain))
        if not np.isfinite(gain[best]):
            break
        picks.append(best)
        np.minimum(dist, np.maximum(2.0 - 2.0 * (x @ x[best]), 0.0), out=dist)
    return np.asarray(picks, dtype=np.int64)


def typicality(
    x: np.ndarray, k: int, neighbours: int = 20, seed: int = 0, max_points: int = 20_000
) -> np.ndarray:
    """TypiClust's cold start: k clusters, and the most typical point of each, densest clusters first.

    Typicality is the inverse mean distance to a point's ``neighbours`` nearest neighbours. Large
    pools are subsampled to ``max_points`` (the k-NN search is O(n²·D) time, O(n·neighbours) memory).
    """
    n = len(x)
    if n == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    subset = np.sort(rng.choice(n, max_points, replace=False)) if n > max_points else np.arange(n)
    xs = np.ascontiguousarray(x[subset])
    clusters = min(k, len(xs))
    km = faiss.Kmeans(
        xs.shape[1], clusters, niter=20, seed=seed, min_points_per_centroid=1, max_points_per_centroid=10_000
    )
    km.train(xs)
    _, assign = km.index.search(xs, 1)
    index = faiss.IndexFlatL2(xs.shape[1])
    index.add(xs)
    m = min(neighbours + 1, len(xs))
    typ = np.empty(len(xs))
    for start in range(0, len(xs), CHUNK):
        d, _ = index.search(xs[start : start + CHUNK], m)
        typ[start : start + CHUNK] = 1.0 / (d[:, 1:].mean(axis=1) + 1e-6) if m > 1 else 1.0
    best: dict[int, int] = {}
    for i, c in enumerate(assign[:, 0]):
        if c not in best or typ[i] > typ[best[c]]:
            best[c] = i
    sizes = np.bincount(assign[:, 0], minlength=clusters)
    order = sorted(best.values(), key=lambda i: (-sizes[assign[i, 0]], -typ[i]))
    return subset[np.asarray(order, dtype=np.int64)]


# -- the strategies ------------------------------------------------------------------------------
SPARE = 4  # an order holds up to SPARE·k candidates, so duplicates and quotas can fall back on more


@dataclass(frozen=True)
class Context:
    """What a strategy may use besides the pool."""

    covered: Covered | None = None
    temperature: float = 1.0
    seed: int = 0
    prefilter: int = 10_000  # most candidates a batch strategy works on (never the whole pool)


Order = Callable[[Pool, int, Context], np.ndarray]
"""``order(pool, k, ctx)``: pool indices for a batch of ``k``, best first, up to ``SPARE·k`` long."""


def _scored(score: Callable[[Pool, Context], np.ndarray]) -> Order:
    return lambda pool, k, ctx: rank(score(pool, ctx), SPARE * k)


def _random(pool: Pool, k: int, ctx: Context) -> np.ndarray:
    rng = np.random.default_rng(ctx.seed)
    return rng.permutation(len(pool))[: SPARE * k].astype(np.int64)


def _coreset(pool: Pool, k: int, ctx: Context) -> np.ndarray:
    cand = _random(pool, ctx.prefilter // SPARE, ctx) if len(pool) > ctx.prefilter else np.arange(len(pool))
    x = pool.embeddings[cand]
    nov = novelty(x, ctx.covered) if ctx.covered is not None and len(ctx.covered) else None
    return cand[k_center_greedy(x, SPARE * k, nov)]


def _typical(pool: Pool, k: int, ctx: Context) -> np.ndarray:
    return typicality(pool.embeddings, SPARE * k, seed=ctx.seed)


def hybrid_scores(probs: np.ndarray, embeddings: np.ndarray, ctx: Context) -> np.ndarray:
    """Uncertainty (margin on calibrated probabilities) × novelty (distance to covered, scaled to [0, 1])."""
    return margin(calibrate(probs, ctx.temperature)) * np.sqrt(novelty(embeddings, ctx.covered) / 4.0)


def _hybrid(pool: Pool, k: int, ctx: Context) -> np.ndarray:
    """The default: uncertainty, diversity and novelty (a cluster-margin scheme).

    Cold start (nothing covered): typicality. Otherwise the ``5·SPARE·k`` most uncertain
    candidates (margin; at most ``prefilter``) are clustered into ``SPARE·k`` k-means clusters
    (diversity), and each cluster offers its most uncertain candidate, most uncertain first.
    Novelty removes near-copies of labeled or queued images (:mod:`monitoring.selection`) and
    ranks the queue (:func:`hybrid_scores`), but never picks: a bonus for distance to the labeled
    set picks outliers (docs/sampling.md has the measurements).
    """
    if ctx.covered is None or len(ctx.covered) == 0:
        return _typical(pool, k, ctx)
    unc = margin(calibrate(pool.probs, ctx.temperature))
    cand = rank(unc, min(ctx.prefilter, 5 * SPARE * k))  # most uncertain first
    clusters = min(SPARE * k, len(cand) // 2)
    if clusters < 2:
        return cand
    x = np.ascontiguousarray(pool.embeddings[cand])
    km = faiss.Kmeans(
        x.shape[1], clusters, niter=10, seed=ctx.seed, min_points_per_centroid=1, max_points_per_centroid=256
    )
    km.train(x)
    assign = km.index.search(x, 1)[1][:, 0]
    _, heads = np.unique(assign, return_index=True)  # first of each cluster in cand: its most uncertain
    heads = np.sort(heads)
    return cand[np.concatenate([heads, np.setdiff1d(np.arange(len(cand)), heads)])][: SPARE * k]


STRATEGIES: dict[str, Order] = {
    "random": _random,
    "least_confidence": _scored(lambda p, c: least_confidence(calibrate(p.probs, c.temperature))),
    "margin": _scored(lambda p, c: margin(calibrate(p.probs, c.temperature))),
    "entropy": _scored(lambda p, c: entropy(calibrate(p.probs, c.temperature))),
    "novelty": _scored(lambda p, c: novelty(p.embeddings, c.covered)),
    "coreset": _coreset,
    "typicality": _typical,
    "hybrid": _hybrid,
}
DEFAULT_STRATEGY = "hybrid"


def strategy(name: str) -> Order:
    """The order function of strategy ``name`` ("default" is the hybrid).

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    key = DEFAULT_STRATEGY if name == "default" else name
    if key not in STRATEGIES:
        raise ValueError(
            f"unknown sampling strategy {name!r}; choose one of {sorted(STRATEGIES)} or 'default'"
        )
    return STRATEGIES[key]
