"""The model the benchmarks serve: the product's default backbone fine-tuned on their images."""

from __future__ import annotations

import torch

from nicheloop.blobs import BlobStore
from nicheloop.model import NicheModel, build_model
from training.calibrate import fit_temperature
from training.config import TrainConfig
from training.data import Example, split_validation
from training.engine import fit_local, local_job
from training.evaluate import predict_all


def fine_tuned(
    classes: list[str],
    examples: list[Example],
    blobs: BlobStore,
    *,
    backbone: str,
    image_size: int,
    weights: str,
    epochs: int,
    seed: int = 0,
) -> NicheModel:
    """Fine-tuned on ``examples`` by the product's training engine from ``weights``, in this process,
    with its temperature fitted on a held-out fifth of them; in eval mode."""
    torch.manual_seed(seed)
    model = build_model(backbone, classes, image_size, weights=weights)
    cfg = TrainConfig(
        epochs=epochs, batch_size=32, lr_head=3e-3, lr_backbone=1e-3, augment=0.3, val_fraction=0.2, seed=seed
    )
    train, val = split_validation(examples, cfg.val_fraction, cfg.seed)
    fit_local(local_job(model, blobs, train, val, cfg), cfg)
    model.net.eval()
    preds = predict_all(model, blobs, val)
    model.extra["temperature"] = fit_temperature(preds.logits, preds.y)
    return model
