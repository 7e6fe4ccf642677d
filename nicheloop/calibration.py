"""Calibration measured: the gap between how sure a model says it is and how often it is right
(training reports it on held-out data; the rollout's calibration gate compares two arms on it)."""

from __future__ import annotations

import numpy as np


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE: the sample-weighted gap between confidence and accuracy over equal-width confidence bins.

    Args:
        probs: (N, K) probabilities. y: (N,) true class indices.
    """
    if len(y) == 0:
        return 0.0
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == y).astype(np.float64)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    gap = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            gap += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(gap)
