"""Fine-tuning sets: new labels with replay, calibration labels apart from selection, the temperature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nicheloop.blobs import BlobStore
from nicheloop.driftlog import DriftLog
from nicheloop.errors import InvalidInput
from nicheloop.model import build_model
from nicheloop.store import Store
from nicheloop.synthetic import make_image, png_bytes
from tests.unit.rollout.test_retrain import _served, _window
from tests.unit.training.examples import labeled
from training.calibrate import fit_temperature
from training.config import TrainConfig
from training.data import Example, Snapshot
from training.evaluate import predict_all
from training.finetune import (
    NewWorld,
    TrainingSet,
    _calibrate,
    continual_set,
    discordant,
    new_world,
    training_set,
)

CLASSES = ["crazing", "inclusion", "patches", "scratches"]


def test_continual_set_learns_new_labels_with_replay_of_old_ones() -> None:
    old, new = labeled({"a": 30, "b": 30}, "o"), labeled({"a": 4, "b": 4}, "n")
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
    ex = labeled({"a": 40, "b": 20, "c": 4})
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


def test_discordant_counts_the_images_only_one_model_got_right() -> None:
    from nicheloop.reference import Reference

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 0, 1, 1])  # the candidate: right, wrong, wrong, right
    ref = Reference(np.zeros((4, 3)), np.zeros((0, 0)), probs, labels, ("a", "b"))
    parent = np.array([True, True, False, False])
    assert discordant(ref, parent) == {"holdout_candidate_only": 1.0, "holdout_parent_only": 1.0}
    assert discordant(ref, np.zeros(4, bool)) == {"holdout_candidate_only": 2.0, "holdout_parent_only": 0.0}


def test_the_new_world_is_the_labels_served_since_the_raising_window_began_or_the_parents_world(
    any_store: Store,
) -> None:
    t0 = 1_800_000_000.0
    for i in range(80):
        _served(any_store, f"x{i}", t0 + 10 * i, "a", "a")
    assert new_world(any_store, "1") == NewWorld()  # no alarm holds, and the parent's world is the first
    log = DriftLog(any_store)
    # the class mix alone: not the world's
    log.record([_window("prediction", t0 + 300, alarm=True, change="raised", began=t0 + 100)])
    assert new_world(any_store, "1") == NewWorld()
    log.record([_window("image", t0 + 700, alarm=True, change="raised", began=t0 + 400)])
    rows = {r.image_sha256: r for r in any_store.labeled_examples()}
    since = {sha for sha, r in rows.items() if int(r.prediction_id[1:]) >= 40}
    world = new_world(any_store, "1", "2")  # "2": no alarm of its own
    assert world.since == t0 + 400 and world.labeled == since and len(since) == 40
    assert world.held_out == {sha for sha in since if rows[sha].holdout} and 0 < len(world.held_out) < 40
    # an alarm that holds wins over the world the parent was trained for
    assert new_world(any_store, "1", inherited=t0 + 600).since == t0 + 400
    log.record([_window("image", t0 + 800, alarm=False, change="cleared", began=t0 + 600)])
    assert new_world(any_store, "1") == NewWorld()  # it cleared
    # a version trained from one trained for the new world learns that world on
    inherited = new_world(any_store, "1", inherited=t0 + 600)
    assert inherited.since == t0 + 600 and len(inherited.labeled) == 20
