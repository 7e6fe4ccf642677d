"""Suspected label errors by confident learning, before a training run takes the labels.

The method is Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty in Dataset
Labels" (JAIR 2021), implemented here from the paper (cleanlab, its reference code, is AGPL-3.0):

1. out-of-sample probabilities for every labeled example (:func:`out_of_sample_probs`: a
   cross-validated linear probe on the examples' frozen embeddings, scikit-learn, BSD-3);
2. per-class thresholds ``t_j``: the mean probability of class ``j`` over the examples labeled ``j``;
3. the confident joint ``C[i, j]`` (:func:`confident_joint`): examples labeled ``i`` whose
   probability of ``j`` reaches ``t_j`` (the likeliest such class when several do), calibrated so
   each row sums to the number of examples labeled ``i``: its off-diagonal estimates how many
   labels are wrong, and between which classes;
4. the suspects (:func:`suspected_errors`) are the examples whose out-of-sample likeliest class is
   not their label (the paper's "C_confusion"), likeliest errors (largest margin) first. The
   paper's "prune by noise rate" keeps only the joint's count of them per class pair; on real
   embeddings the joint undercounts (a flip's probability of its true class often falls just
   under that class's threshold) and found as few as half the flips, and a suspect goes to a
   second reviewer rather than out of the data, so all of them are kept (docs/training.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold


@dataclass(frozen=True)
class Suspect:
    """One label confident learning doubts: its row, the given label, and the likelier class."""

    index: int
    given: int
    likely: int
    margin: float  # p(likely) - p(given), out of sample


def out_of_sample_probs(
    features: np.ndarray, labels: np.ndarray, n_classes: int, *, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Each example's class probabilities from a linear probe that never saw it: ``folds``-fold
    multinomial logistic regression on L2-normalised ``features`` (rows of an (n, d) array).
    A class with fewer examples than ``folds`` is still predicted (its probability from the folds'
    probes, which may not know it: 0)."""
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    probs = np.zeros((len(labels), n_classes))
    counts = np.bincount(labels, minlength=n_classes)
    k = int(max(2, min(folds, counts[counts > 0].min())))
    for train, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(x, labels):
        probe = LogisticRegression(C=1.0, max_iter=1000).fit(x[train], labels[train])
        probs[np.ix_(test, probe.classes_)] = probe.predict_proba(x[test])
    return probs


def confident_joint(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The calibrated confident joint (K, K), and each example's confident class (-1: none)."""
    n_classes = probs.shape[1]
    thresholds = np.array(
        [probs[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(n_classes)]
    )
    above = probs >= thresholds - 1e-12
    masked = np.where(above, probs, -np.inf)
    confident = np.where(above.any(axis=1), masked.argmax(axis=1), -1)
    joint = np.zeros((n_classes, n_classes))
    for i, j in zip(labels[confident >= 0], confident[confident >= 0]):
        joint[i, j] += 1
    rows = joint.sum(axis=1, keepdims=True)
    given = np.bincount(labels, minlength=n_classes)[:, None]
    return np.where(rows > 0, joint / np.maximum(rows, 1) * given, 0.0), confident


def suspected_errors(labels: np.ndarray, probs: np.ndarray) -> list[Suspect]:
    """The examples whose out-of-sample likeliest class is not their label, largest margin first."""
    likeliest = probs.argmax(axis=1)
    rows = np.flatnonzero(likeliest != labels)
    margins = probs[rows, likeliest[rows]] - probs[rows, labels[rows]]
    return [
        Suspect(int(r), int(labels[r]), int(likeliest[r]), float(m))
        for m, r in sorted(zip(margins, rows), key=lambda t: -t[0])
    ]


def estimated_errors(labels: np.ndarray, probs: np.ndarray) -> float:
    """How many of the labels are wrong, by the confident joint's off-diagonal."""
    joint, _ = confident_joint(labels, probs)
    return float(joint.sum() - np.trace(joint))
