"""SimSiam on unlabeled blobs (corrupt ones skipped)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nicheloop.blobs import BlobStore
from nicheloop.errors import InvalidInput
from training.pretrain import (
    PretrainConfig,
    make_simsiam,
    ssl_epoch,
    ssl_loader,
    ssl_optimizer,
    usable_images,
)

CLASSES = ["crazing", "inclusion", "patches", "scratches"]


def test_simsiam_learns_on_unlabeled_blobs_and_skips_corrupt_ones(tmp_path: Path) -> None:
    from nicheloop.synthetic import write_image_folder
    from training.data import read_image_folder

    blobs = BlobStore(str(tmp_path / "blobs"))
    for data, _ in read_image_folder(write_image_folder(tmp_path / "imgs", 6, seed=0, size=32)):
        blobs.put(data)
    bad = blobs.put(b"\x89PNG\r\n\x1a\n corrupt")
    digests = usable_images(blobs)
    assert bad not in digests and len(digests) == 24 and set(digests) < set(blobs.digests())
    cfg = PretrainConfig(
        backbone="test_resnet", weights="none", image_size=32, epochs=2, batch_size=8, proj_dim=32, pred_dim=8
    )
    torch.manual_seed(0)
    model = make_simsiam(cfg)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    opt, loader = ssl_optimizer(model, cfg), ssl_loader(blobs, digests, cfg)
    m = ssl_epoch(model, loader, opt, cfg, 0, torch.device("cpu"))
    assert -1.0 <= m["ssl_loss"] <= 1.0 and m["z_std"] > 0
    assert any(not torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    with pytest.raises(InvalidInput, match="at least 8"):
        usable_images(blobs, digests[:3])


def test_continued_pretraining_moves_the_backbone_slower_than_the_fresh_heads() -> None:
    cfg = PretrainConfig(
        backbone="test_resnet",
        weights="none",
        lr=0.1,
        batch_size=256,
        backbone_lr_ratio=0.1,
        proj_dim=32,
        pred_dim=8,
    )
    model = make_simsiam(cfg)
    backbone, projector, predictor = ssl_optimizer(model, cfg).param_groups
    assert backbone["lr"] == pytest.approx(0.01) and projector["lr"] == predictor["lr"] == pytest.approx(0.1)
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone.parameters()}
    assert predictor["fixed"] and not projector["fixed"] and not backbone["fixed"]
