"""The evaluation transform in two halves (geometry on the gateway, normalisation on the predictor)
equals the transform in one piece, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from nicheloop.model import eval_transform
from nicheloop.pixels import InputSpec, normalise, to_pixels

CONFIGS = [
    {"input_size": (3, 64, 64), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3,
     "crop_pct": 1.0, "crop_mode": "center"},
    {"input_size": (3, 48, 48), "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406),
     "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center"},
]  # fmt: skip


@settings(max_examples=20, deadline=None)
@given(
    width=st.integers(8, 300),
    height=st.integers(8, 300),
    which=st.sampled_from([0, 1]),
    seed=st.integers(0, 9),
)
def test_two_halves_equal_the_evaluation_transform(width: int, height: int, which: int, seed: int) -> None:
    cfg = CONFIGS[which]
    spec = InputSpec.of(cfg)
    rgb = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    pixels = to_pixels(img, spec)
    assert pixels.dtype == np.uint8 and pixels.shape == (*cfg["input_size"][1:], 3)
    assert torch.equal(normalise([pixels], spec)[0], eval_transform(cfg)(img))


def test_a_batch_array_and_a_list_give_the_same_tensor_and_grey_images_become_rgb() -> None:
    spec = InputSpec.of(CONFIGS[0])
    grey = Image.fromarray(np.arange(100 * 80, dtype=np.uint32).reshape(80, 100).astype(np.uint8))
    pixels = to_pixels(grey, spec)
    assert pixels.shape == (64, 64, 3) and np.array_equal(pixels[..., 0], pixels[..., 2])
    stacked = np.stack([pixels, pixels])
    assert torch.equal(normalise(stacked, spec), normalise([pixels, pixels], spec))


def test_the_spec_key_changes_with_anything_that_changes_the_pixels() -> None:
    base = InputSpec.of(CONFIGS[0])
    assert base.key == InputSpec.of(dict(CONFIGS[0])).key and len(base.key) == 16
    for change in [
        {"input_size": (3, 65, 65)},
        {"interpolation": "bilinear"},
        {"crop_pct": 0.9},
        {"mean": (0.4,) * 3},
    ]:
        assert InputSpec.of({**CONFIGS[0], **change}).key != base.key


@pytest.mark.parametrize("cfg", CONFIGS)
def test_the_model_preprocesses_through_the_two_halves(cfg: dict) -> None:  # type: ignore[type-arg]
    from nicheloop.model import build_model

    model = build_model("test_resnet", ["a", "b"], image_size=cfg["input_size"][1])
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(70, 90, 3), dtype=np.uint8))
    assert torch.equal(model.preprocess([img])[0], eval_transform(model.data_config)(img))
