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

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from nicheloop.blobs import BlobStore
from nicheloop.model import NicheModel
from nicheloop.review import ReviewQueue
from nicheloop.store import Store
from training.config import TrainConfig
from training.data import HeldBack, Snapshot
from training.evaluate import predict_all


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


@dataclass(frozen=True)
class GatePolicy:
    """When the gate judges, and how much it may hold back (:class:`training.config.TrainConfig`)."""

    min_per_class: int = 5
    min_probe_accuracy: float = 0.8
    max_share: float = 0.2
    hold: bool = False  # doubted labels sit out the run (else they train, listed as doubted)
    seed: int = 0


def gate_policy(cfg: TrainConfig) -> GatePolicy:
    """The gate's knobs from a training recipe."""
    return GatePolicy(
        cfg.label_gate_min_per_class,
        cfg.label_gate_min_probe_accuracy,
        cfg.label_gate_max_share,
        cfg.label_gate_hold_suspects,
        cfg.seed,
    )


def gate_labels(
    model: NicheModel,
    blobs: BlobStore,
    snap: Snapshot,
    policy: GatePolicy = GatePolicy(),
    *,
    trusted: frozenset[str] = frozenset(),
) -> tuple[Snapshot, dict[str, float]]:
    """``snap`` with the training labels confident learning suspects on ``model``'s embeddings
    listed, with why, in its ``doubted`` (or, with ``policy.hold``, moved out of its training side
    into its ``held_back``), and the gate's figures for the run's metrics. Judges
    nothing when fewer than two classes have ``min_per_class`` labels, or when the probe agrees
    with fewer than ``min_probe_accuracy`` of the labels (a weak model's doubts say little).
    Images in ``trusted`` (labels a second reviewer gave after an earlier doubt) are not doubted."""
    counts = Counter(e.label for e in snap.train)
    judged = [e for e in snap.train if counts[e.label] >= policy.min_per_class]
    figures = {"label_gate_judged": 0.0, "label_gate_doubted": 0.0, "label_gate_held_back": 0.0}
    if len({e.label for e in judged}) < 2:
        return snap, figures
    preds = predict_all(model, blobs, judged)
    probs = out_of_sample_probs(preds.embeddings, preds.y, model.num_classes, seed=policy.seed)
    accuracy = float((probs.argmax(axis=1) == preds.y).mean())
    figures |= {
        "label_gate_probe_accuracy": accuracy,
        "label_gate_estimated_errors": estimated_errors(preds.y, probs),
    }
    if accuracy < policy.min_probe_accuracy:
        return snap, figures
    names = model.class_names
    doubted = [x for x in suspected_errors(preds.y, probs) if judged[x.index].image_sha256 not in trusted]
    suspects = doubted[: int(policy.max_share * len(judged))]
    flagged = tuple(
        HeldBack(
            judged[s.index].image_sha256,
            judged[s.index].label,
            f"suspected label error: the probe finds {names[s.likely]} likelier by {s.margin:.2f}",
        )
        for s in suspects
    )
    figures |= {"label_gate_judged": float(len(judged)), "label_gate_doubted": float(len(flagged))}
    if not policy.hold:
        return replace(snap, doubted=snap.doubted + flagged), figures
    out = {h.image_sha256 for h in flagged}
    kept = replace(
        snap,
        train=tuple(e for e in snap.train if e.image_sha256 not in out),
        held_back=snap.held_back + flagged,
    )
    return kept, figures | {"label_gate_held_back": float(len(flagged))}


def second_looked(store: Store) -> frozenset[str]:
    """Images whose label a second reviewer gave after the gate doubted it: their label stands."""
    return frozenset(sha for _, sha in store.labels_of(sorted(ReviewQueue(store).second_looks())).values())


def second_opinions(store: Store, held: tuple[HeldBack, ...], *, priority: float = 0.5) -> int:
    """Queue every doubted label that came with a served prediction for another reviewer's look
    (:meth:`nicheloop.review.ReviewQueue.second_opinion`); returns how many were queued. Their
    answers join as the newest reviewer labels, which the next training run's snapshot takes."""
    found = store.predictions_labeled([h.image_sha256 for h in held], {h.image_sha256: h.label for h in held})
    queue = ReviewQueue(store)
    return sum(queue.second_opinion(pid, priority=priority) for pid in found.values())


def doubtful_reviewers(quality: dict[str, Any], *, min_answers: int, min_accuracy: float) -> dict[str, str]:
    """Reviewers whose accuracy on gold items (:meth:`nicheloop.review.ReviewQueue.reviewer_quality`)
    is under ``min_accuracy`` over at least ``min_answers`` answers, with why."""
    return {
        g["reviewer"]: (
            f"reviewer {g['reviewer']} is right on {g['accuracy']:.0%} of {g['answered']} gold items "
            f"(under {min_accuracy:.0%})"
        )
        for g in quality["gold"]
        if g["answered"] >= min_answers and g["accuracy"] < min_accuracy
    }


def hold_reviewers(snap: Snapshot, doubtful: dict[str, str]) -> Snapshot:
    """``snap`` without the training labels of the ``doubtful`` reviewers, listed with why."""
    held = tuple(
        HeldBack(e.image_sha256, e.label, doubtful[e.actor]) for e in snap.train if e.actor in doubtful
    )
    if not held:
        return snap
    return replace(
        snap, train=tuple(e for e in snap.train if e.actor not in doubtful), held_back=snap.held_back + held
    )


def gate_snapshot(
    store: Store, model: NicheModel, blobs: BlobStore, snap: Snapshot, cfg: TrainConfig
) -> tuple[Snapshot, dict[str, float]]:
    """The gate before a continual run: the labels of reviewers under the gold-accuracy bar held
    back, then the labels ``model``'s probe doubts listed (held back too with
    ``label_gate_hold_suspects``) and the likeliest ``label_gate_second_looks`` of them queued for
    a second look; the gated snapshot (each label listed with why) and the gate's figures."""
    doubtful = doubtful_reviewers(
        ReviewQueue(store).reviewer_quality(),
        min_answers=cfg.label_gate_min_gold_answers,
        min_accuracy=cfg.label_gate_min_gold_accuracy,
    )
    for vouched in store.vouched_actors():  # an operator decided their labels train
        doubtful.pop(vouched, None)
    snap = hold_reviewers(snap, doubtful)
    by_reviewers, doubted_before = len(snap.held_back), len(snap.doubted)
    snap, figures = gate_labels(model, blobs, snap, gate_policy(cfg), trusted=second_looked(store))
    flagged = snap.held_back[by_reviewers:] + snap.doubted[doubted_before:]
    queued = second_opinions(store, flagged[: cfg.label_gate_second_looks])
    return snap, figures | {
        "label_gate_reviewers_held": float(len(doubtful)),
        "label_gate_held_back_reviewers": float(by_reviewers),
        "label_gate_second_opinions": float(queued),
    }
