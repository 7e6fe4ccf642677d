"""The batch-norm stopgap moves the statistics to the new images and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nicheloop.model import build_model
from training.adapt import batch_norm_layers, recalibrated


def _images(n: int, level: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(np.clip(rng.normal(level, 20, (32, 32, 3)), 0, 255).astype(np.uint8))
        for _ in range(n)
    ]


def test_recalibration_moves_the_statistics_keeps_the_weights_and_leaves_the_original_alone() -> None:
    model = build_model("tf_efficientnet_lite0", ["a", "b"], 32, weights="none")
    model.extra["temperature"] = 0.7
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    dark = recalibrated(model, _images(64, 40, 0))
    bright = recalibrated(model, _images(64, 200, 1))
    first = batch_norm_layers(dark.net)[0]
    assert not torch.allclose(first.running_mean, batch_norm_layers(bright.net)[0].running_mean)
    assert not dark.net.training and not first.training
    assert dark.extra["temperature"] == 0.7
    stats = ("running_mean", "running_var", "num_batches_tracked")
    for k, v in dark.net.state_dict().items():
        if not k.endswith(stats):
            assert torch.equal(v, before[k]), k  # weights untouched
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, before[k]), k  # the champion is not changed
    # the first layer's mean is the mean of its inputs over the images (cumulative, not exponential)
    x = dark.preprocess(_images(64, 40, 0))
    with torch.no_grad():
        pre = dark.net.conv_stem(x)
    assert torch.allclose(first.running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-4)


def test_too_few_images_are_refused() -> None:
    model = build_model("tf_efficientnet_lite0", ["a", "b"], 32, weights="none")
    with pytest.raises(ValueError, match="at least 32"):
        recalibrated(model, _images(5, 100, 0))
