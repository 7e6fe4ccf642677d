"""Calibration: temperature scaling (Guo et al., 2017); its measure, the ECE, is in nicheloop.calibration.

The temperature is fitted on validation logits, stored with the model (``extra['temperature']``)
and applied by :meth:`nicheloop.model.NicheModel.infer`, so serving returns calibrated scores.
"""

from __future__ import annotations

import numpy as np

T_MIN, T_MAX = 0.05, 20.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of (N, K) logits divided by ``temperature``."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of labels ``y`` under ``softmax(logits / temperature)``."""
    p = softmax(logits, temperature)[np.arange(len(y)), y]
    return float(-np.log(np.clip(p, 1e-12, 1.0)).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises validation NLL (log-grid, then golden-section).

    Returns 1.0 for fewer than two examples (nothing to fit on).
    """
    if len(y) < 2:
        return 1.0
    grid = np.geomspace(T_MIN, T_MAX, 61)
    best = int(np.argmin([nll(logits, y, t) for t in grid]))
    lo, hi = np.log(grid[max(0, best - 1)]), np.log(grid[min(len(grid) - 1, best + 1)])
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(logits, y, float(np.exp(a))) < nll(logits, y, float(np.exp(b))):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))
