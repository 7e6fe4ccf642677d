"""Recipes, layer groups, freeze and LR schedules, class balance, the epoch engine and its checkpoints."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from nicheloop.blobs import BlobStore
from nicheloop.errors import InvalidInput
from nicheloop.model import build_model
from nicheloop.synthetic import write_image_folder
from training.augment import train_transform
from training.config import TrainConfig, dump_recipe, load_recipe
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
from training.recipe import (
    balanced_order,
    class_weights,
    frozen_names,
    layer_groups,
    lr_factor,
    param_groups,
    trainable_stages,
)

CLASSES = ["crazing", "inclusion", "patches", "scratches"]


# -- recipes ----------------------------------------------------------------------------------------------


def test_recipe_reads_yaml_then_values_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("epochs: 12\nfreeze: gradual\nlayer_decay: 0.7\ncritical_classes: [scratches]\n")
    cfg = load_recipe(path, ["epochs=3", "weights=file:/x/ssl.pt", "amp=null"], {"epochs": 5, "augment": 0.2})
    assert (cfg.epochs, cfg.freeze, cfg.layer_decay, cfg.augment) == (3, "gradual", 0.7, 0.2)
    assert cfg.weights == "file:/x/ssl.pt" and cfg.critical_classes == ["scratches"] and cfg.amp is None
    assert load_recipe() == TrainConfig()
    again = tmp_path / "again.yaml"
    again.write_text(dump_recipe(cfg))
    assert load_recipe(again) == cfg


def test_shipped_recipes_load() -> None:
    for path in sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml")):
        assert isinstance(load_recipe(path), TrainConfig), path


@pytest.mark.parametrize(
    "text,overrides,words",
    [
        ("epochs: 0\n", [], "epochs"),
        ("no_such_knob: 1\n", [], "no_such_knob"),
        ("- a list\n", [], "mapping"),
        ("epochs: [unclosed\n", [], "not valid YAML"),
        ("", ["epochs"], "key=value"),
        ("", ["weights=ftp:x"], "weights"),
        ("", ["freeze=sometimes"], "freeze"),
    ],
)
def test_bad_recipes_say_what_is_wrong(tmp_path: Path, text: str, overrides: list[str], words: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=words):
        load_recipe(path, overrides)


def test_missing_recipe_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


# -- layer groups, learning rates, freezing -----------------------------------------------------------


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    return build_model("test_resnet", CLASSES, image_size=32).net


def test_layer_groups_cover_every_parameter_once(net: torch.nn.Module) -> None:
    groups = layer_groups(net)
    names = [n for n, _ in net.named_parameters()]
    for split in (groups.stages, groups.layers):
        flat = [n for g in split for n in g] + groups.head
        assert sorted(flat) == sorted(names)
    assert len(groups.layers) >= len(groups.stages) >= 2
    assert set(groups.head) == {
        f"{n}" for n, p in net.named_parameters() if any(p is q for q in net.get_classifier().parameters())
    }


def test_layerwise_decay_slows_layers_towards_the_stem(net: torch.nn.Module) -> None:
    cfg = TrainConfig(lr_head=1e-2, lr_backbone=1e-3, layer_decay=0.5)
    groups = param_groups(net, cfg)
    lrs = [g["lr"] for g in groups]
    assert max(lrs) == pytest.approx(1e-2) and min(lrs) == pytest.approx(
        1e-3 * 0.5 ** (len(layer_groups(net).layers) - 1)
    )
    assert lrs == sorted(lrs)  # stem first, head last
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    assert all(g["weight_decay"] == 0 for g in groups if all(p.ndim <= 1 for p in g["params"]))
    flat = {g["lr"] for g in param_groups(net, TrainConfig(lr_head=1e-2, lr_backbone=1e-3, layer_decay=1.0))}
    assert flat == {1e-2, 1e-3}


def test_gradual_unfreezing_releases_one_stage_at_a_time(net: torch.nn.Module) -> None:
    n = len(layer_groups(net).stages)
    cfg = TrainConfig(freeze="gradual", head_only_epochs=2, unfreeze_every=2, epochs=20)
    seen = [trainable_stages(cfg, e, n) for e in range(2 + 2 * n)]
    assert seen[:2] == [0, 0] and seen[2] == 1 and seen == sorted(seen) and seen[-1] == n
    assert trainable_stages(TrainConfig(freeze="backbone"), 99, n) == 0
    assert trainable_stages(TrainConfig(freeze="none"), 0, n) == n
    body = {x for g in layer_groups(net).stages for x in g}
    assert frozen_names(net, cfg, 0) == body and frozen_names(net, cfg, 99) == set()


@given(st.integers(1, 30), st.integers(0, 10), st.integers(1, 3), st.floats(0, 1))
def test_lr_factor_is_a_bounded_cosine_with_restarts(
    epochs: int, restart: int, mult: int, floor: float
) -> None:
    cfg = TrainConfig(epochs=epochs, restart_epochs=restart, restart_mult=mult, min_lr_ratio=floor)
    values = [lr_factor(cfg, t / 4) for t in range(4 * epochs)]
    assert all(floor - 1e-9 <= v <= 1 + 1e-9 for v in values)
    assert lr_factor(cfg, 0) == pytest.approx(1.0)
    if restart and restart < epochs:
        assert lr_factor(cfg, restart) == pytest.approx(1.0)  # warm restart


# -- class balance ------------------------------------------------------------------------------------


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
    cfg = TrainConfig(class_balance="none")
    shards = [epoch_order(y, cfg, 3, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    flat = np.concatenate(shards)
    assert len(set(flat.tolist())) == len(flat) == 50 - 50 % world
    assert not np.array_equal(epoch_order(y, cfg, 0, 0, 1), epoch_order(y, cfg, 1, 0, 1))


# -- augmentation ---------------------------------------------------------------------------------------


def test_augmentation_at_zero_is_the_evaluation_transform() -> None:
    model = build_model("test_resnet", CLASSES, image_size=32)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8))
    assert torch.allclose(
        train_transform(model.data_config, 0.0)(img), model.transform(False)(img.convert("RGB"))
    )
    strong = train_transform(model.data_config, 1.0)
    outs = [strong(img) for _ in range(4)]
    assert all(o.shape == (3, 32, 32) and torch.isfinite(o).all() for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


# -- the engine ---------------------------------------------------------------------------------------


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


def test_an_epoch_checkpoint_is_written_once_into_the_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch.utils.serialization import config

    from training import loop

    state = {
        "model": {"w": torch.arange(12.0).reshape(3, 4)},
        "progress": {"next_epoch": 4},
        "best": None,
        "optimizer": {"state": {0: {"exp_avg": torch.ones(5)}}},
    }
    checkpoint = loop.write_checkpoint(state, tmp_path / "run", 3)
    directory = tmp_path / "run" / "checkpoint_epoch_0003"
    assert Path(checkpoint.path) == directory  # Ray registers it where it lies: no second copy
    assert sorted(p.name for p in directory.iterdir()) == [loop.STATE_FILE]
    loaded = torch.load(directory / loop.STATE_FILE, weights_only=True)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["progress"] == {"next_epoch": 4}
    assert config.save.compute_crc32  # switched off for the checkpoint only

    def dies(obj, path) -> None:  # the worker dies half-way through writing the next epoch
        Path(path).write_bytes(b"PK half a zip")
        raise OSError("killed")

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(OSError):
        loop.write_checkpoint(state, tmp_path / "run", 4)
    # nothing a resumed worker could read half of
    assert not (tmp_path / "run" / "checkpoint_epoch_0004" / loop.STATE_FILE).exists()


@pytest.mark.skipif(sys.platform != "linux", reason="only Linux sets a niceness per thread")
def test_the_training_thread_sends_rays_task_loop_to_nice_19_and_keeps_its_own_priority() -> None:
    # in a child process: the niceness it gives the main thread cannot be taken back without privilege
    probe = """
import os, threading
from training.loop import yield_ray_task_loop
before = os.getpriority(os.PRIO_PROCESS, 0)
yield_ray_task_loop()  # from the main thread itself: nothing to yield to
on_main = os.getpriority(os.PRIO_PROCESS, 0)
own = []
def train():
    yield_ray_task_loop()
    own.append(os.getpriority(os.PRIO_PROCESS, 0))
t = threading.Thread(target=train); t.start(); t.join()
print(before, on_main, os.getpriority(os.PRIO_PROCESS, threading.main_thread().native_id), own[0])
"""
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.split()
    before, on_main, main_after, training = map(int, out)
    assert on_main == before  # the main thread alone: unchanged
    assert main_after == 19 and training == before  # the loop yields, the training thread does not
