"""Evaluation beyond accuracy: precision at recall, confusion, per-class figures, the report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nicheloop.contracts import IMAGE_STATS
from nicheloop.model import build_model
from training.evaluate import Predictions, confusion_matrix, per_class, precision_at_recall, report

CLASSES = ["crazing", "inclusion", "patches", "scratches"]


def test_precision_at_recall_picks_the_best_threshold_that_reaches_recall() -> None:
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    positive = np.array([True, False, True, True, False, True])
    assert precision_at_recall(scores, positive, 0.5)[0] == pytest.approx(
        3 / 4
    )  # deeper is more precise here
    assert precision_at_recall(scores, positive, 0.25)[0] == 1.0
    assert precision_at_recall(scores, positive, 0.75)[0] == pytest.approx(3 / 4)
    assert precision_at_recall(scores, positive, 1.0) == (pytest.approx(4 / 6), 0.5)
    assert precision_at_recall(scores, np.zeros(6, dtype=bool), 0.9) == (0.0, 1.0)


def test_confusion_and_per_class_metrics() -> None:
    y, pred = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    conf = confusion_matrix(pred, y, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    m = per_class(conf, ["a", "b", "c d"])
    assert m["precision_a"] == 0.5 and m["recall_a"] == 0.5 and m["precision_b"] == pytest.approx(2 / 3)
    assert m["recall_b"] == 1.0 and m["precision_c_d"] == 0.0 and m["recall_c_d"] == 0.0


def test_report_has_every_metric_and_applies_the_temperature() -> None:
    model = build_model("test_resnet", CLASSES, image_size=32)
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (40, 4))
    y = logits.argmax(1)
    y[:8] = (y[:8] + 1) % 4
    stats = np.zeros((40, len(IMAGE_STATS)))
    stats[:, IMAGE_STATS.index("brightness")] = np.linspace(10, 250, 40)
    preds = Predictions(logits, rng.normal(size=(40, 8)), y, stats)
    model.extra["temperature"] = 0.5
    rep = report(model, preds, critical=["scratches", "not_a_class"], target_recall=0.9)
    m = rep.metrics
    assert m["accuracy"] == pytest.approx(0.8) and m["temperature"] == 0.5
    assert {
        "macro_f1",
        "ece",
        "ece_uncalibrated",
        "precision_at_recall_scratches",
        "recall_crazing",
        "slice_dark_accuracy",
        "slice_mid_n",
        "slice_bright_n",
    } <= set(m)
    assert m["slice_dark_n"] + m["slice_mid_n"] + m["slice_bright_n"] == 40
    assert m["ece"] != m["ece_uncalibrated"]
    assert np.array(rep.confusion).sum() == 40 and np.trace(np.array(rep.confusion)) == 32


def test_drift_reference_holds_the_probabilities_serving_computes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # a confident model saturates near 1, where a float64 softmax ranks differently from serving's
    # float32 one: a K-S test on confidence then flags the rounding (measured on the demo's stream)
    from nicheloop.blobs import BlobStore
    from nicheloop.images import decode_image
    from nicheloop.synthetic import write_image_folder
    from training.data import Example, read_image_folder
    from training.evaluate import evaluate

    model = build_model("test_resnet", CLASSES, image_size=32)
    with torch.no_grad():
        model.net.get_classifier().weight.mul_(3000.0)  # saturated confidences
    model.extra["temperature"] = 1.3
    blobs = BlobStore(str(tmp_path / "b"))
    items = read_image_folder(write_image_folder(tmp_path / "imgs", 5, seed=0, size=32))
    examples = [Example(blobs.put(data), label) for data, label in items]
    _, ref = evaluate(model, blobs, examples)
    served = model.infer(
        model.preprocess([decode_image(blobs.get(e.image_sha256), 1 << 26, 1 << 24) for e in examples])
    )
    assert ref.probs.dtype == np.float32 and (ref.probs.max(1) > 0.999).mean() > 0.5
    np.testing.assert_array_equal(ref.probs, served.probs)
    assert ref.early.shape == served.early.shape and ref.early.shape[1] > 0
    np.testing.assert_allclose(ref.early, served.early, atol=1e-5)  # the monitor compares like with like
