"""Layer groups, layer-wise decay, gradual unfreezing and the learning-rate schedule."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nicheloop.model import build_model
from training.config import TrainConfig
from training.schedule import frozen_names, layer_groups, lr_factor, param_groups, trainable_stages

CLASSES = ["crazing", "inclusion", "patches", "scratches"]


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
