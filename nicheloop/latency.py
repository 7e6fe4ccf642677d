"""Latency histograms that add up across replicas and flushes: sparse counts in log-spaced buckets.

Bucket ``k`` holds latencies in (BASE_MS * GROWTH**(k-1), BASE_MS * GROWTH**k]; a quantile read back
is its bucket's upper bound, at most 10 % above the true value, which is plenty to tell a p99 of
120 ms from one of 420 ms (the rollout's latency gate compares ratios).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

BASE_MS = 0.5
GROWTH = 1.1
TOP = 160  # 0.5 ms * 1.1**160: about 2 hours; slower calls share the last bucket


def bucket(ms: float) -> int:
    """The bucket of a latency of ``ms`` milliseconds."""
    if ms <= BASE_MS:
        return 0
    return min(TOP, math.ceil(math.log(ms / BASE_MS, GROWTH) - 1e-9))


def upper_ms(k: int) -> float:
    """The upper bound of bucket ``k``, in milliseconds."""
    return BASE_MS * GROWTH**k


def merge(histograms: Iterable[Mapping[str, int]]) -> dict[int, int]:
    """Sum histograms as stored (bucket index as text -> count, the JSON form)."""
    total: dict[int, int] = {}
    for h in histograms:
        for k, n in h.items():
            total[int(k)] = total.get(int(k), 0) + int(n)
    return total


def quantile_ms(histogram: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of ``histogram``, as its bucket's upper bound; None if empty."""
    n = sum(histogram.values())
    if n == 0:
        return None
    need, seen = q * n, 0
    for k in sorted(histogram):
        seen += histogram[k]
        if seen >= need:
            return upper_ms(k)
    return upper_ms(max(histogram))
