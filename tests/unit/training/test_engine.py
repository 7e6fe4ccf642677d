"""The epoch engine: class balance, sharding, frozen backbones, exact resumption, early stopping."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nicheloop.blobs import BlobStore
from nicheloop.model import build_model
from nicheloop.synthetic import write_image_folder
from training.config import TrainConfig
from training.data import Example, read_image_folder, split_validation
from training.engine import (
    Progress,
    checkpoint_state,
    epoch_order,
    fit_local,
    local_job,
    make_optimizer,
    restore,
    run_epoch,
)
from training.schedule import balanced_order, class_weights, layer_groups

CLASSES = ["crazing", "inclusion", "patches", "scratches"]


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    return build_model("test_resnet", CLASSES, image_size=32).net


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[BlobStore, list[Example]]:
    root = tmp_path_factory.mktemp("engine")
    blobs = BlobStore(str(root / "blobs"))
    folder = write_image_folder(root / "imgs", 10, seed=1, size=32)
    return blobs, [Example(blobs.put(d), lbl) for d, lbl in read_image_folder(folder)]


def _job(data, cfg: TrainConfig, seed: int = 0):
    blobs, examples = data
    torch.manual_seed(seed)
    model = build_model("test_resnet", CLASSES, image_size=32)
    train, val = split_validation(examples, 0.2)
    return model, local_job(model, blobs, train, val, cfg)


def test_class_weights_are_inverse_frequency() -> None:
    y = np.array([0, 0, 0, 1])
    w = class_weights(y, 3)
    assert (
        float(w[0]) * 3 == pytest.approx(float(w[1]))
        and w[2] == 0
        and float(w[y].mean()) == pytest.approx(1.0)
    )


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=8, max_size=200), st.integers(0, 1000))
def test_balanced_order_draws_classes_equally_and_cycles(labels: list[int], seed: int) -> None:
    y = np.array(labels)
    order = balanced_order(y, np.random.default_rng(seed))
    assert len(order) == len(y) and set(order) <= set(range(len(y)))
    for c in np.unique(y):
        picked = order[y[order] == c]
        members = int((y == c).sum())
        first = picked[:members]
        assert len(set(first.tolist())) == len(first)  # no repeat before the whole class was seen


def test_balanced_order_evens_out_a_skewed_set() -> None:
    y = np.array([0] * 950 + [1] * 50)
    order = balanced_order(y, np.random.default_rng(0))
    assert 0.4 < (y[order] == 1).mean() < 0.6


@pytest.mark.parametrize("world", [1, 2, 3])
def test_epoch_order_shards_evenly_and_disjointly(world: int) -> None:
    y = np.arange(50) % 5
    cfg = TrainConfig(class_balance="none", min_epoch_images=0)
    shards = [epoch_order(y, cfg, 3, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    flat = np.concatenate(shards)
    assert len(set(flat.tolist())) == len(flat) == 50 - 50 % world
    assert not np.array_equal(epoch_order(y, cfg, 0, 0, 1), epoch_order(y, cfg, 1, 0, 1))


@pytest.mark.parametrize("balance", ["none", "sampler"])
def test_a_small_label_set_is_cycled_up_to_the_epochs_minimum(balance: str) -> None:
    y = np.arange(12) % 3
    order = epoch_order(y, TrainConfig(class_balance=balance, min_epoch_images=40), 0, 0, 1)
    assert len(order) == 40 and set(order.tolist()) == set(range(12))
    if balance == "none":  # whole passes: every image three times before any a fourth
        assert sorted(np.bincount(order).tolist()) == [3] * 8 + [4] * 4
    assert len(epoch_order(y, TrainConfig(class_balance=balance, min_epoch_images=0), 0, 0, 1)) == 12


def test_frozen_backbone_trains_only_the_head_and_keeps_norm_statistics(data) -> None:
    cfg = TrainConfig(epochs=2, batch_size=8, freeze="backbone", augment=0)
    model, job = _job(data, cfg)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    fit_local(job, cfg)
    after = model.net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= set(layer_groups(model.net).head), changed  # running stats included


def test_engine_checkpoint_resumes_exactly(data) -> None:
    cfg = TrainConfig(epochs=2, batch_size=8, augment=0, class_balance="sampler")
    model_a, job_a = _job(data, cfg)
    opt, prog, best = make_optimizer(job_a.raw, cfg), Progress(), {}
    run_epoch(job_a, opt, cfg, prog, best)
    buf = io.BytesIO()
    torch.save(checkpoint_state(job_a, opt, prog, best), buf)  # what the Ray worker writes per epoch
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # no pickled objects needed to resume
    run_epoch(job_a, opt, cfg, prog, best)

    model_b, job_b = _job(
        data, cfg, seed=123
    )  # other initial weights: everything must come from the checkpoint
    opt_b = make_optimizer(job_b.raw, cfg)
    prog_b, best_b = restore(job_b, opt_b, state)
    assert prog_b.next_epoch == 1
    run_epoch(job_b, opt_b, cfg, prog_b, best_b)
    for k, v in model_a.net.state_dict().items():
        assert torch.allclose(v.float(), model_b.net.state_dict()[k].float(), atol=1e-5), k
    assert [h["epoch"] for h in prog_b.history] == [0.0, 1.0]


def test_early_stopping_stops_and_keeps_the_best_epoch(data) -> None:
    cfg = TrainConfig(
        epochs=30, batch_size=8, lr_head=0.5, lr_backbone=0.5, early_stopping_patience=2, augment=0
    )
    model, job = _job(data, cfg)
    prog = fit_local(job, cfg)
    assert prog.stopped_early and len(prog.history) < 30
    assert len(prog.history) - 1 - prog.best_epoch == cfg.early_stopping_patience
    best_loss = min(h["val_loss"] for h in prog.history)
    assert prog.history[prog.best_epoch]["val_loss"] == best_loss


def test_loss_weighting_and_no_balance_also_train(data) -> None:
    for balance in ("loss", "none"):
        cfg = TrainConfig(epochs=1, batch_size=8, class_balance=balance, augment=0.5)
        _, job = _job(data, cfg)
        prog = fit_local(job, cfg)
        assert np.isfinite(prog.history[0]["train_loss"])
