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


def ece_noise(
    confidences: np.ndarray, correct: np.ndarray | None = None, bins: int = 15
) -> tuple[float, float]:
    """What the ECE of a perfectly calibrated model would read on these confidences, from sampling
    alone: its expected value (ECE is biased upwards on few labels) and its standard deviation.

    Each bin's gap sum(correct - confidence) is then a sum of independent centred terms of variance
    v_b = sum(conf * (1 - conf)); its absolute value has mean sqrt(2 v_b / pi) and variance
    v_b (1 - 2 / pi) (normal approximation), and the ECE is their sum over N.

    With ``correct`` (which predictions were right) the spread is that of the ECE actually read
    (see :func:`binned_ece_noise`).
    """
    if len(confidences) == 0:
        return 0.0, 0.0
    which = np.minimum((confidences * bins).astype(int), bins - 1)
    v = np.bincount(which, weights=confidences * (1 - confidences), minlength=bins)
    if correct is None:
        return binned_ece_noise(v, len(confidences))
    counts = np.bincount(which, minlength=bins)
    right = np.bincount(which, weights=np.asarray(correct, np.float64), minlength=bins)
    return binned_ece_noise(v, len(confidences), counts=counts, right=right)


def binned_ece_noise(
    variances: np.ndarray, n: int, *, counts: np.ndarray | None = None, right: np.ndarray | None = None
) -> tuple[float, float]:
    """:func:`ece_noise` from each bin's sum of ``conf * (1 - conf)`` over ``n`` labels (for callers
    that keep binned sums rather than the confidences themselves).

    With each bin's ``counts`` and ``right`` answers, the spread is that of the ECE read: each bin's
    variance is the larger of v_b and n_b acc_b (1 - acc_b), taken whole, since an overconfident
    model's errors vary more than its confidences say and a gap far from zero varies as much as
    the gap itself.
    """
    if n == 0:
        return 0.0, 0.0
    v = np.asarray(variances, np.float64)
    bias, sd = float(np.sqrt(2 * v / np.pi).sum() / n), float(np.sqrt((v * (1 - 2 / np.pi)).sum()) / n)
    if counts is not None and right is not None:
        c = np.asarray(counts, np.float64)
        acc = np.asarray(right, np.float64) / np.maximum(c, 1)
        sd = max(sd, float(np.sqrt(np.maximum(v, c * acc * (1 - acc)).sum()) / n))
    return bias, sd
