"""Evaluation on held-out examples: accuracy, macro-F1 and the embeddings used as drift reference."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from nicheloop.blobs import BlobStore
from nicheloop.model import NicheModel
from training.data import BlobImageDataset, Example


def predict_all(model: NicheModel, blobs: BlobStore, examples: tuple[Example, ...] | list[Example],
                batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (probs (N, K), embeddings (N, D), true class indices (N,))."""
    ds = BlobImageDataset(blobs, examples, model.class_names, model.transform(training=False))
    probs, embs, ys = [], [], []
    for x, y in DataLoader(ds, batch_size=batch_size):
        p, e = model.infer(x)
        probs.append(p), embs.append(e), ys.append(y.numpy())
    if not probs:
        return np.zeros((0, model.num_classes)), np.zeros((0, 0)), np.zeros(0, dtype=int)
    return np.concatenate(probs), np.concatenate(embs), np.concatenate(ys)


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
    return {"accuracy": float((pred == y).mean()), "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
            "n": float(len(y))}


@torch.inference_mode()
def evaluate(model: NicheModel, blobs: BlobStore, examples: tuple[Example, ...] | list[Example]
             ) -> tuple[dict[str, float], np.ndarray]:
    """Metrics on ``examples`` and their embeddings (N, D)."""
    probs, embs, y = predict_all(model, blobs, examples)
    return classification_metrics(probs, y, model.num_classes), embs
