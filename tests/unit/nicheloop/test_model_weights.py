"""Model weights: the stored temperature is applied at serving and survives save and load;
backbone checkpoints start a classifier; checkpoints of another model or garbage are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from nicheloop.errors import InvalidInput
from nicheloop.model import build_model, init_backbone, load_model, read_checkpoint, save_model

CLASSES = ["crazing", "inclusion", "patches", "scratches"]


def test_serving_applies_the_stored_temperature() -> None:
    model = build_model("test_resnet", CLASSES, image_size=32)
    x = torch.randn(3, 3, 32, 32)
    p1 = model.infer(x).probs
    model.extra["temperature"] = 0.25
    p2 = model.infer(x).probs
    assert (p2.max(1) >= p1.max(1) - 1e-6).all() and (p2.argmax(1) == p1.argmax(1)).all()
    assert np.allclose(p2.sum(1), 1, atol=1e-5)


def test_temperature_survives_save_and_load(tmp_path: Path) -> None:
    model = build_model("test_resnet", CLASSES, image_size=32)
    model.extra["temperature"] = 0.7
    assert load_model(save_model(model, tmp_path / "m")).temperature == 0.7


def test_a_backbone_checkpoint_starts_a_classifier(tmp_path: Path) -> None:
    backbone = timm.create_model("test_resnet", num_classes=0)
    torch.save({"state_dict": backbone.state_dict()}, tmp_path / "ssl.pt")
    model = build_model("test_resnet", CLASSES, image_size=32, weights=f"file:{tmp_path / 'ssl.pt'}")
    for k, v in backbone.state_dict().items():
        assert torch.equal(model.net.state_dict()[k], v), k


def test_checkpoints_of_another_model_or_garbage_are_refused(tmp_path: Path) -> None:
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), tmp_path / "vit.pt")
    with pytest.raises(InvalidInput, match="another model"):
        build_model("test_resnet", CLASSES, image_size=32, weights=f"file:{tmp_path / 'vit.pt'}")
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(InvalidInput, match="not a readable"):
        read_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(InvalidInput, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")
    net = build_model("test_resnet", CLASSES, image_size=32).net
    with pytest.raises(InvalidInput):
        init_backbone(net, {})
