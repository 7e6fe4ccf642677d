"""Augmentation: at strength 0 it is the evaluation transform."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from nicheloop.model import build_model
from training.augment import train_transform

CLASSES = ["crazing", "inclusion", "patches", "scratches"]


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
