"""The linear probe a fresh head starts from: fitted to convergence on frozen features, then copied in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nicheloop.blobs import BlobStore
from nicheloop.model import build_model
from nicheloop.synthetic import write_image_folder
from training.data import Example, read_image_folder
from training.evaluate import predict_all
from training.probe import fit_linear, probe_head


def test_fit_linear_separates_separable_classes() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 4
    y = torch.arange(90) % 3
    x = centres[y] + torch.randn(90, 16, generator=g)
    head = fit_linear(x, y, 3, weight_decay=1e-3)
    assert (head(x).argmax(1) == y).float().mean() == 1.0
    loose = fit_linear(x, y, 3, weight_decay=10.0)  # the penalty shrinks the weights
    assert loose.weight.norm() < head.weight.norm()


def test_probe_becomes_the_models_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("test_resnet", ["crazing", "inclusion", "patches", "scratches"], image_size=32)
    blobs = BlobStore(str(tmp_path / "b"))
    items = read_image_folder(write_image_folder(tmp_path / "imgs", 10, seed=0, size=32))
    examples = [Example(blobs.put(data), label) for data, label in items]
    before = model.net.get_classifier().weight.detach().clone()
    accuracy = probe_head(model, blobs, examples, weight_decay=1e-4)
    assert not torch.equal(before, model.net.get_classifier().weight)
    preds = predict_all(model, blobs, examples)
    agree = float(np.mean(preds.logits.argmax(1) == preds.y))
    assert accuracy == pytest.approx(agree) and accuracy > 0.5  # the whole model predicts as the probe does
