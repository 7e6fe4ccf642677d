"""One batch for reviewers: a strategy's order, class quotas, and no (near-)duplicates.

A strategy says which candidates are most worth a label; this module turns its order into the
batch actually queued:

- **Quotas**: ``class_quota`` of the batch is reserved, in equal shares, for the predicted
  classes, so a rare predicted class is not starved by a strategy that loves the common ones.
- **Exact duplicates** (same image content hash as something labeled, queued or already in the
  batch) and **near duplicates** (embedding within ``near_radius`` of any of those) are dropped:
  a reviewer never labels the same picture twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from monitoring.strategies import Context, Pool, calibrate, hybrid_scores, margin, novelty, rank, strategy

NEAR_RADIUS = 0.002  # squared L2 between unit embeddings (cos ≥ 0.999): re-encodes, not neighbours


@dataclass(frozen=True)
class Selection:
    """The chosen candidates, best first, with their queue priorities and what was suppressed."""

    indices: np.ndarray  # (m,) int64, m ≤ k
    priorities: np.ndarray  # (m,) float64 in [0, 1]: uncertainty × novelty, comparable across batches
    exact_duplicates: int
    near_duplicates: int


@dataclass
class _Batch:
    """The batch being built: what is taken, and the duplicates turned away."""

    pool: Pool
    k: int
    ctx: Context
    hashes: Sequence[str] | None
    covered_hashes: frozenset[str]
    near_radius: float
    nov: dict[int, float]  # squared distance to the covered set, by candidate
    taken: list[int] = field(default_factory=list)
    taken_set: set[int] = field(default_factory=set)
    seen_hashes: set[str] = field(default_factory=set)
    exact: int = 0
    near: int = 0

    def distance_to_covered(self, i: int) -> float:
        if i not in self.nov:
            self.nov[i] = float(novelty(self.pool.embeddings[[i]], self.ctx.covered)[0])
        return self.nov[i]

    def admit(self, i: int) -> bool:
        """Take candidate ``i`` unless it duplicates something covered or already taken."""
        if i in self.taken_set:
            return False
        digest = self.hashes[i] if self.hashes is not None else None
        if digest is not None and (digest in self.covered_hashes or digest in self.seen_hashes):
            self.exact += 1
            return False
        x = self.pool.embeddings[i]
        if self.distance_to_covered(i) < self.near_radius or (
            self.taken
            and float(np.min(2.0 - 2.0 * (self.pool.embeddings[self.taken] @ x))) < self.near_radius
        ):
            self.near += 1
            return False
        self.taken.append(i)
        self.taken_set.add(i)
        if digest is not None:
            self.seen_hashes.add(digest)
        return True


def select_batch(
    pool: Pool,
    k: int,
    ctx: Context | None = None,
    strategy_name: str = "default",
    hashes: Sequence[str] | None = None,
    covered_hashes: frozenset[str] = frozenset(),
    near_radius: float = NEAR_RADIUS,
    class_quota: float = 0.3,
    class_weights: Sequence[float] | None = None,
) -> Selection:
    """Choose up to ``k`` candidates of ``pool`` for review.

    Args:
        pool: the candidates (probabilities and embeddings).
        k: batch size (≥ 0).
        ctx: covered set, temperature, seed (default: nothing covered).
        strategy_name: a key of :data:`monitoring.strategies.STRATEGIES`, or "default".
        hashes: per-candidate image content hashes, for exact-duplicate suppression.
        covered_hashes: hashes already labeled or queued.
        near_radius: squared L2 distance under which two unit embeddings are the same image.
        class_quota: share of the batch reserved, equally, for each predicted class (0 disables).
        class_weights: split the reserved share in proportion to these, one per class, instead
            (a drift alarm's sampler weights the classes the shift touches).

    Raises:
        ValueError: for an unknown strategy, a negative ``k``, a quota outside [0, 1] or a
            ``hashes`` list of the wrong length.
    """
    ctx = ctx or Context()
    if k < 0 or not 0.0 <= class_quota <= 1.0:
        raise ValueError(f"need k ≥ 0 and class_quota in [0, 1], got k={k}, class_quota={class_quota}")
    if hashes is not None and len(hashes) != len(pool):
        raise ValueError(f"hashes has {len(hashes)} entries for a pool of {len(pool)}")
    if class_weights is not None and (
        len(class_weights) != pool.probs.shape[1] or min(class_weights) < 0 or sum(class_weights) <= 0
    ):
        raise ValueError(f"class_weights must be {pool.probs.shape[1]} non-negative numbers, not all zero")
    order_fn = strategy(strategy_name)
    if k == 0 or len(pool) == 0:
        return Selection(np.zeros(0, np.int64), np.zeros(0), 0, 0)
    order = order_fn(pool, k, ctx)
    known = dict(zip(order.tolist(), novelty(pool.embeddings[order], ctx.covered).tolist()))
    batch = _Batch(pool, k, ctx, hashes, covered_hashes, near_radius, known)
    _fill_quotas(batch, order, class_quota, class_weights)
    for i in order:
        if len(batch.taken) >= k:
            break
        batch.admit(int(i))
    position = {int(i): p for p, i in enumerate(order)}
    chosen = np.asarray(sorted(batch.taken, key=lambda i: position.get(i, len(order))), dtype=np.int64)
    prio = hybrid_scores(pool.probs[chosen], pool.embeddings[chosen], ctx) if len(chosen) else np.zeros(0)
    return Selection(chosen, np.nan_to_num(prio, nan=0.0), batch.exact, batch.near)


def _fill_quotas(
    batch: _Batch, order: np.ndarray, class_quota: float, weights: Sequence[float] | None = None
) -> None:
    """Give each predicted class up to its reserved share (equal, or in proportion to ``weights``):
    from the strategy's order first, then the class's most uncertain candidates (by margin) when the
    order holds too few of them."""
    n_classes = batch.pool.probs.shape[1]
    w = np.ones(n_classes) if weights is None else np.asarray(weights, np.float64)
    quotas = np.floor(int(batch.k * class_quota) * w / w.sum()).astype(int)
    predicted = batch.pool.predicted
    by_margin: np.ndarray | None = None
    for c in range(n_classes):
        quota = int(quotas[c])
        if quota == 0:
            continue
        got = _take_class(batch, order, predicted, c, quota)
        if got < quota:
            if by_margin is None:
                by_margin = rank(margin(calibrate(batch.pool.probs, batch.ctx.temperature)))
            _take_class(batch, by_margin, predicted, c, quota - got)


def _take_class(batch: _Batch, order: np.ndarray, predicted: np.ndarray, c: int, want: int) -> int:
    """Admit up to ``want`` candidates of predicted class ``c`` in ``order``; returns how many."""
    got = 0
    for i in order[predicted[order] == c]:
        if got >= want:
            break
        got += batch.admit(int(i))
    return got
