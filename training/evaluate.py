"""Evaluation that looks past accuracy: macro-F1, per-class precision and recall, the confusion
matrix, precision at a required recall for critical classes, calibration (ECE) and slices."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from nicheloop.blobs import BlobStore
from nicheloop.calibration import expected_calibration_error
from nicheloop.contracts import IMAGE_STATS
from nicheloop.model import NicheModel, as_numpy
from nicheloop.reference import Reference
from training.calibrate import softmax
from training.data import BlobImageDataset, Example, Snapshot, class_shares

BRIGHTNESS_SLICES = ((0.0, 85.0, "dark"), (85.0, 170.0, "mid"), (170.0, 256.0, "bright"))


@dataclass(frozen=True)
class Predictions:
    """A model's raw outputs on labeled examples."""

    logits: np.ndarray  # (N, K), before temperature scaling
    embeddings: np.ndarray  # (N, D)
    y: np.ndarray  # (N,) true class indices
    stats: np.ndarray  # (N, len(IMAGE_STATS)) image statistics, as serving computes them
    early: np.ndarray | None = None  # (N, E) pooled early-stage features (NicheModel.forward)

    @property
    def brightness(self) -> np.ndarray:
        """(N,) mean grey level of each image, 0..255."""
        return self.stats[:, IMAGE_STATS.index("brightness")]


@dataclass
class Report:
    """Scalar metrics (logged to MLflow) and the confusion matrix (rows: truth, columns: prediction)."""

    metrics: dict[str, float]
    confusion: list[list[int]] = field(default_factory=list)


def metric_key(text: str) -> str:
    """A class or slice name made safe for an MLflow metric key."""
    return re.sub(r"[^0-9A-Za-z_.\-/]", "_", text)


@torch.inference_mode()
def predict_all(
    model: NicheModel, blobs: BlobStore, examples: tuple[Example, ...] | list[Example], batch_size: int = 64
) -> Predictions:
    """Run ``model`` over ``examples`` (evaluation transform, no temperature)."""
    model.net.eval()
    ds = BlobImageDataset(
        blobs, examples, model.class_names, model.transform(training=False), with_stats=True
    )
    logits, embs, ys, stats, early = [], [], [], [], []
    for x, y, st in DataLoader(ds, batch_size=batch_size):
        out = model.forward(x)
        logits.append(as_numpy(out.logits))
        embs.append(as_numpy(out.embeddings))
        early.append(as_numpy(out.early))
        ys.append(y.numpy())
        stats.append(st.numpy())
    if not logits:
        return Predictions(
            np.zeros((0, model.num_classes)),
            np.zeros((0, 0)),
            np.zeros(0, dtype=int),
            np.zeros((0, len(IMAGE_STATS))),
            np.zeros((0, 0)),
        )
    return Predictions(*(np.concatenate(a) for a in (logits, embs, ys, stats, early)))


def classification_metrics(probs: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 of argmax predictions; NaN-free (0.0 for empty input)."""
    if len(y) == 0:
        return {"accuracy": 0.0, "macro_f1": 0.0, "n": 0.0}
    pred = probs.argmax(axis=1)
    f1s = []
    for k in range(num_classes):
        tp = float(((pred == k) & (y == k)).sum())
        fp, fn = float(((pred == k) & (y != k)).sum()), float(((pred != k) & (y == k)).sum())
        if tp + fp + fn > 0:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "n": float(len(y)),
    }


def confusion_matrix(pred: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts, rows = true class, columns = predicted class."""
    return np.bincount(y * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def per_class(conf: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """precision_<class> and recall_<class> from a confusion matrix (0.0 where undefined)."""
    out: dict[str, float] = {}
    for k, name in enumerate(class_names):
        tp, predicted, actual = conf[k, k], conf[:, k].sum(), conf[k, :].sum()
        out[f"precision_{metric_key(name)}"] = float(tp / predicted) if predicted else 0.0
        out[f"recall_{metric_key(name)}"] = float(tp / actual) if actual else 0.0
    return out


def precision_at_recall(scores: np.ndarray, positive: np.ndarray, target: float) -> tuple[float, float]:
    """Best precision over thresholds on ``scores`` that reach recall >= ``target``; (precision, threshold).

    Returns (0.0, 1.0) when there are no positives.
    """
    if not positive.any():
        return 0.0, 1.0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(positive[order])
    precision, recall = tp / np.arange(1, len(order) + 1), tp / positive.sum()
    ok = np.flatnonzero(recall >= target - 1e-12)
    best = ok[np.argmax(precision[ok])]
    return float(precision[best]), float(scores[order][best])


def report(
    model: NicheModel, preds: Predictions, critical: list[str] | None = None, target_recall: float = 0.9
) -> Report:
    """Every metric of ``preds`` (probabilities calibrated with the model's temperature)."""
    k, names = model.num_classes, model.class_names
    probs, raw = softmax(preds.logits, model.temperature), softmax(preds.logits)
    m = classification_metrics(probs, preds.y, k)
    if len(preds.y) == 0:
        return Report(m, [[0] * k for _ in range(k)])
    conf = confusion_matrix(probs.argmax(1), preds.y, k)
    m |= per_class(conf, names)
    m |= {
        "ece": expected_calibration_error(probs, preds.y),
        "ece_uncalibrated": expected_calibration_error(raw, preds.y),
        "temperature": model.temperature,
    }
    for name in critical or []:
        if name in names:
            c = names.index(name)
            m[f"precision_at_recall_{metric_key(name)}"] = precision_at_recall(
                probs[:, c], preds.y == c, target_recall
            )[0]
    for lo, hi, slice_name in BRIGHTNESS_SLICES:
        sel = (preds.brightness >= lo) & (preds.brightness < hi)
        if sel.any():
            m[f"slice_{slice_name}_accuracy"] = float((probs[sel].argmax(1) == preds.y[sel]).mean())
            m[f"slice_{slice_name}_n"] = float(sel.sum())
    return Report(m, conf.tolist())


def evaluate(
    model: NicheModel,
    blobs: BlobStore,
    examples: tuple[Example, ...] | list[Example],
    critical: list[str] | None = None,
    target_recall: float = 0.9,
) -> tuple[Report, Reference]:
    """The :class:`Report` on ``examples`` and the drift :class:`Reference` they make for this model."""
    preds = predict_all(model, blobs, examples)
    rep = report(model, preds, critical, target_recall)
    reference = Reference(
        preds.embeddings,
        preds.stats,
        model.calibrated(preds.logits),
        preds.y,
        tuple(model.class_names),
        rep.metrics["accuracy"],
        rep.metrics["macro_f1"],
        early=preds.early if preds.early is not None else np.zeros((0, 0)),
    )
    return rep, reference


def drift_reference(
    reference: Reference,
    snap: Snapshot,
    class_names: list[str] | tuple[str, ...],
    *,
    world: frozenset[str] = frozenset(),
) -> Reference:
    """The reference a version's drift monitors watch, from its evaluation on ``snap``'s held-out
    side (``reference``, one row per held-out example): only the rows of the images in ``world``
    when at least ``MIN_ROWS`` are (a version trained on an alarm is for the world that raised it;
    the old world's rows would keep the alarm up), in the snapshot's class mix (not the split's
    chance mix)."""
    if world:
        reference = reference.where(np.array([e.image_sha256 in world for e in snap.holdout], bool))
    return reference.in_proportion(class_shares(snap, class_names))
