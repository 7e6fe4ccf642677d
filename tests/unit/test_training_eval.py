"""Calibration, evaluation beyond accuracy, snapshots/replay, checkpoints and SimSiam pieces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nicheloop.blobs import BlobStore
from nicheloop.contracts import IMAGE_STATS
from nicheloop.errors import InvalidInput
from nicheloop.model import build_model, init_backbone, load_model, read_checkpoint, save_model
from nicheloop.synthetic import make_image, png_bytes
from training.calibrate import expected_calibration_error, fit_temperature, nll, softmax
from training.config import TrainConfig
from training.data import Example, Snapshot, parse_manifest, replay_buffer, split_validation
from training.evaluate import (
    Predictions,
    confusion_matrix,
    per_class,
    precision_at_recall,
    predict_all,
    report,
)
from training.pipeline import TrainingSet, _calibrate, continual_set, training_set
from training.pretrain import (
    PretrainConfig,
    make_simsiam,
    ssl_epoch,
    ssl_loader,
    ssl_optimizer,
    usable_images,
)

CLASSES = ["crazing", "inclusion", "patches", "scratches"]


# -- calibration --------------------------------------------------------------------------------------


def _sampled(temperature: float, n: int = 4000, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / temperature): that temperature is the right one."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, k))
    p = softmax(logits, temperature)
    y = np.array([rng.choice(k, p=row) for row in p])
    return logits, y


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_temperature_scaling_recovers_the_true_temperature(true_t: float) -> None:
    logits, y = _sampled(true_t)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(true_t, rel=0.1)
    assert nll(logits, y, t) <= nll(logits, y, 1.0) + 1e-9
    assert expected_calibration_error(softmax(logits, t), y) < 0.03


def test_temperature_scaling_lowers_ece_of_an_overconfident_model() -> None:
    logits, y = _sampled(3.0)
    before = expected_calibration_error(softmax(logits), y)
    after = expected_calibration_error(softmax(logits, fit_temperature(logits, y)), y)
    assert before > 0.1 and after < before / 3


def test_ece_on_known_cases() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)
    assert expected_calibration_error(np.zeros((0, 2)), np.zeros(0, dtype=int)) == 0.0
    assert fit_temperature(np.zeros((1, 2)), np.zeros(1, dtype=int)) == 1.0


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 60), st.integers(2, 5), st.integers(0, 99))
def test_ece_is_bounded(n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs = softmax(rng.normal(0, 4, (n, k)))
    assert 0.0 <= expected_calibration_error(probs, rng.integers(0, k, n)) <= 1.0


# -- evaluation ------------------------------------------------------------------------------------------


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


def test_serving_applies_the_stored_temperature() -> None:
    model = build_model("test_resnet", CLASSES, image_size=32)
    x = torch.randn(3, 3, 32, 32)
    p1, _ = model.infer(x)
    model.extra["temperature"] = 0.25
    p2, _ = model.infer(x)
    assert (p2.max(1) >= p1.max(1) - 1e-6).all() and (p2.argmax(1) == p1.argmax(1)).all()
    assert np.allclose(p2.sum(1), 1, atol=1e-5)


def test_temperature_survives_save_and_load(tmp_path: Path) -> None:
    model = build_model("test_resnet", CLASSES, image_size=32)
    model.extra["temperature"] = 0.7
    assert load_model(save_model(model, tmp_path / "m")).temperature == 0.7


# -- data: validation split, replay, manifests, continual sets ----------------------------------------


def _examples(per_class: dict[str, int], prefix: str = "") -> list[Example]:
    return [
        Example(f"{prefix}{label}{i:04d}".ljust(64, "0")[:64], label)
        for label, n in per_class.items()
        for i in range(n)
    ]


def test_validation_split_is_stratified_and_deterministic() -> None:
    ex = _examples({"a": 20, "b": 10, "c": 2})
    train, val = split_validation(ex, 0.2, seed=0)
    assert sorted(train + val, key=lambda e: e.image_sha256) == sorted(ex, key=lambda e: e.image_sha256)
    assert [sum(e.label == c for e in val) for c in "abc"] == [4, 2, 0]
    assert split_validation(list(reversed(ex)), 0.2, seed=0)[1] == val
    assert split_validation(ex, 0.2, seed=1)[1] != val


def test_replay_buffer_is_class_balanced_and_stable() -> None:
    old = _examples({"a": 50, "b": 5})
    buf = replay_buffer(old, per_class=10, seed=0)
    assert sum(e.label == "a" for e in buf) == 10 and sum(e.label == "b" for e in buf) == 5
    assert replay_buffer(list(reversed(old)), 10, 0) == buf


def test_manifest_round_trip_and_refusal() -> None:
    snap = Snapshot(tuple(_examples({"a": 3})), tuple(_examples({"b": 2})))
    assert parse_manifest(snap.manifest()) == snap
    for bad in ("{}", "not json", json.dumps({"train": [[1]], "holdout": []})):
        with pytest.raises(InvalidInput, match="manifest"):
            parse_manifest(bad)


def test_continual_set_learns_new_labels_with_replay_of_old_ones() -> None:
    old, new = _examples({"a": 30, "b": 30}, "o"), _examples({"a": 4, "b": 4}, "n")
    relabeled = Example(old[0].image_sha256, "b")
    parent = Snapshot(tuple(old), ())
    now = Snapshot(tuple(old[1:] + new + [relabeled]), ())
    data = continual_set(now, parent, TrainConfig(replay_per_class=10, val_fraction=0.2))
    assert data.new == 9 and data.replayed == 20
    everything = {e.image_sha256 for e in data.train + data.val + data.calibration}
    assert {
        e.image_sha256 for e in new
    } <= everything and relabeled in data.train + data.val + data.calibration
    assert len(data.train) + len(data.val) + len(data.calibration) == 29
    with pytest.raises(InvalidInput, match="no labels are new"):
        continual_set(parent, parent, TrainConfig())
    assert continual_set(now, None, TrainConfig()).new == len(now.train)


def test_training_set_keeps_calibration_labels_apart_from_selection() -> None:
    ex = _examples({"a": 40, "b": 20, "c": 4})
    data = training_set(ex, TrainConfig(val_fraction=0.2, calibration_fraction=0.5), new=len(ex), replayed=0)
    parts = [{e.image_sha256 for e in part} for part in (data.train, data.val, data.calibration)]
    assert sum(map(len, parts)) == len(ex) and len(set.union(*parts)) == len(ex)  # disjoint, nothing lost
    count = lambda part, c: sum(e.label == c for e in part)  # noqa: E731
    assert [count(data.val, c) for c in "abc"] == [4, 2, 1]  # classes too small to split keep selection
    assert [count(data.calibration, c) for c in "abc"] == [4, 2, 0]
    assert training_set(list(reversed(ex)), TrainConfig(val_fraction=0.2), len(ex), 0) == data
    none = training_set(ex, TrainConfig(val_fraction=0.2, calibration_fraction=0.0), len(ex), 0)
    assert none.calibration == [] and len(none.val) == 13 and none.train == data.train


def test_temperature_is_fitted_on_calibration_labels_and_falls_back_to_selection(tmp_path: Path) -> None:
    blobs, rng = BlobStore(str(tmp_path)), np.random.default_rng(0)
    classes = ["crazing", "scratches"]
    labeled = [Example(blobs.put(png_bytes(make_image(c, rng, 32))), c) for c in classes for _ in range(6)]
    torch.manual_seed(0)
    model = build_model("test_resnet", classes, image_size=32)
    model.net.eval()
    # the same images, labeled as they are for selection and the other way round for calibration:
    # the two sets' logits are equal, so only where the temperature is fitted can make it differ
    val = labeled
    calibration = [Example(e.image_sha256, classes[1 - classes.index(e.label)]) for e in labeled]
    data = TrainingSet(train=[], val=val, new=0, replayed=0, calibration=calibration)
    assert _calibrate(model, blobs, data, TrainConfig()) == {
        "calibration_examples": 12.0,
        "calibration_on_selection": 0.0,
    }
    on_calibration = model.extra["temperature"]
    preds = predict_all(model, blobs, calibration)
    assert on_calibration == pytest.approx(fit_temperature(preds.logits, preds.y))
    preds_val = predict_all(model, blobs, val)
    assert on_calibration != pytest.approx(fit_temperature(preds_val.logits, preds_val.y))
    fallback = TrainingSet(train=[], val=val, new=0, replayed=0, calibration=calibration[:1])
    assert _calibrate(model, blobs, fallback, TrainConfig())["calibration_on_selection"] == 1.0
    assert model.extra["temperature"] == pytest.approx(fit_temperature(preds_val.logits, preds_val.y))
    assert _calibrate(model, blobs, fallback, TrainConfig(calibrate=False)) == {}


# -- checkpoints ---------------------------------------------------------------------------------------


def test_a_backbone_checkpoint_starts_a_classifier(tmp_path: Path) -> None:
    backbone = timm.create_model("test_resnet", num_classes=0)
    torch.save({"state_dict": backbone.state_dict()}, tmp_path / "ssl.pt")
    model = build_model("test_resnet", CLASSES, image_size=32, checkpoint_path=tmp_path / "ssl.pt")
    for k, v in backbone.state_dict().items():
        assert torch.equal(model.net.state_dict()[k], v), k


def test_checkpoints_of_another_model_or_garbage_are_refused(tmp_path: Path) -> None:
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), tmp_path / "vit.pt")
    with pytest.raises(InvalidInput, match="another model"):
        build_model("test_resnet", CLASSES, image_size=32, checkpoint_path=tmp_path / "vit.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(InvalidInput, match="not a readable"):
        read_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(InvalidInput, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")
    net = build_model("test_resnet", CLASSES, image_size=32).net
    with pytest.raises(InvalidInput):
        init_backbone(net, {})


# -- SimSiam ---------------------------------------------------------------------------------------------


def test_simsiam_learns_on_unlabeled_blobs_and_skips_corrupt_ones(tmp_path: Path) -> None:
    from nicheloop.synthetic import write_image_folder
    from training.data import read_image_folder

    blobs = BlobStore(str(tmp_path / "blobs"))
    for data, _ in read_image_folder(write_image_folder(tmp_path / "imgs", 6, seed=0, size=32)):
        blobs.put(data)
    bad = blobs.put(b"\x89PNG\r\n\x1a\n corrupt")
    digests = usable_images(blobs)
    assert bad not in digests and len(digests) == 24 and set(digests) < set(blobs.digests())
    cfg = PretrainConfig(
        backbone="test_resnet", image_size=32, epochs=2, batch_size=8, proj_dim=32, pred_dim=8
    )
    torch.manual_seed(0)
    model = make_simsiam(cfg)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    opt, loader = ssl_optimizer(model, cfg), ssl_loader(blobs, digests, cfg)
    m = ssl_epoch(model, loader, opt, cfg, 0, torch.device("cpu"))
    assert -1.0 <= m["ssl_loss"] <= 1.0 and m["z_std"] > 0
    assert any(not torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    with pytest.raises(InvalidInput, match="at least 8"):
        usable_images(blobs, digests[:3])
