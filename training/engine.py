"""The epoch loop every fine-tune runs, on a Ray Train worker or in a plain process.

It is device- and world-size-agnostic: the caller says which rank it is, the engine shards each
epoch's order itself (so class-balanced sampling and DDP agree), applies the recipe's freeze
schedule, learning-rate schedule and mixed precision, validates, and keeps the best epoch for
early stopping. Its whole state is one dict, so an epoch checkpoint resumes it exactly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sized
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from nicheloop.blobs import BlobStore
from nicheloop.model import NicheModel
from training.augment import train_transform
from training.config import TrainConfig
from training.data import BlobImageDataset, Example
from training.schedule import (
    balanced_order,
    class_weights,
    frozen_names,
    lr_factor,
    param_groups,
    set_frozen_norms,
    shuffled_passes,
)


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    next_epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Job:
    """What one worker trains: the network (already on ``device``), data, and its place in the world."""

    net: torch.nn.Module  # what forward/backward run through (DDP-wrapped when world > 1)
    raw: torch.nn.Module  # the bare network (parameters, state dict, validation)
    train_set: Dataset
    train_labels: np.ndarray
    val_set: Dataset | None
    num_classes: int
    device: torch.device
    rank: int = 0
    world: int = 1
    all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    # DDP keeps parameters equal across ranks but not batch-norm statistics: validation first makes
    # every rank's buffers rank 0's, so the reduced figures are those of the weights it checkpoints
    share_buffers: Callable[[torch.nn.Module], None] = lambda module: None


def use_amp(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.amp if cfg.amp is not None else device.type == "cuda"


def make_optimizer(raw: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(raw, cfg), lr=cfg.lr_head)


def epoch_order(labels: np.ndarray, cfg: TrainConfig, epoch: int, rank: int, world: int) -> np.ndarray:
    """This rank's indices for ``epoch``: the same global order on every rank, then every world-th item.

    An epoch holds at least ``cfg.min_epoch_images`` items (few labels are cycled, each augmented
    anew). Every rank gets the same number of items (DDP needs equal step counts), dropping at most
    world-1.
    """
    rng = np.random.default_rng([cfg.seed, epoch])
    size = max(len(labels), cfg.min_epoch_images)
    order = (
        balanced_order(labels, rng, size)
        if cfg.class_balance == "sampler"
        else shuffled_passes(len(labels), size, rng)
    )
    usable = len(order) - len(order) % world
    return order[:usable][rank::world]


def _loader(ds: Dataset, indices: np.ndarray, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(
        Subset(ds, indices.tolist()),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


def train_epoch(job: Job, opt: torch.optim.Optimizer, cfg: TrainConfig, epoch: int) -> dict[str, float]:
    """One pass over this rank's share of the epoch; returns the mean training loss over all ranks."""
    frozen = frozen_names(job.raw, cfg, epoch)
    frozen_params = [p for n, p in job.raw.named_parameters() if n in frozen]
    job.net.train()
    set_frozen_norms(job.raw, frozen)
    weight = (
        class_weights(job.train_labels, job.num_classes).to(job.device)
        if cfg.class_balance == "loss"
        else None
    )
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    loader = _loader(
        job.train_set,
        epoch_order(job.train_labels, cfg, epoch, job.rank, job.world),
        cfg.batch_size,
        cfg.loader_workers,
    )
    steps, amp = max(1, len(loader)), use_amp(cfg, job.device)
    total = torch.zeros(2, device=job.device)
    for step, (x, y) in enumerate(loader):
        factor = lr_factor(cfg, epoch + step / steps)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        x, y = x.to(job.device, non_blocking=True), y.to(job.device, non_blocking=True)
        with torch.autocast(job.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(job.net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in frozen_params:  # grads of frozen layers are dropped: AdamW then leaves them untouched
            p.grad = None
        opt.step()
        total += torch.stack([loss.detach().float() * len(y), torch.tensor(float(len(y)), device=job.device)])
    total = job.all_reduce(total)
    return {
        "train_loss": float(total[0] / total[1].clamp(min=1)),
        "train_images": float(total[1]),
        "frozen_tensors": float(len(frozen_params)),
        "lr_factor": lr_factor(cfg, epoch + 1),
    }


@torch.no_grad()
def validate(job: Job, cfg: TrainConfig) -> dict[str, float]:
    """Loss (no smoothing) and accuracy on this rank's share of the validation set, reduced over ranks."""
    if job.val_set is None or len(cast(Sized, job.val_set)) == 0:
        return {}
    job.share_buffers(job.raw)
    job.raw.eval()
    idx = np.arange(len(cast(Sized, job.val_set)))[job.rank :: job.world]
    sums = torch.zeros(3, device=job.device)
    for x, y in _loader(job.val_set, idx, cfg.batch_size * 2, cfg.loader_workers):
        x, y = x.to(job.device), y.to(job.device)
        with torch.autocast(job.device.type, dtype=torch.bfloat16, enabled=use_amp(cfg, job.device)):
            logits = job.raw(x).float()
        sums += torch.stack(
            [
                torch.nn.functional.cross_entropy(logits, y, reduction="sum"),
                (logits.argmax(1) == y).sum().float(),
                torch.tensor(float(len(y)), device=job.device),
            ]
        )
    sums = job.all_reduce(sums)
    n = float(sums[2].clamp(min=1))
    return {"val_loss": float(sums[0]) / n, "val_accuracy": float(sums[1]) / n, "val_images": float(sums[2])}


def run_epoch(
    job: Job, opt: torch.optim.Optimizer, cfg: TrainConfig, prog: Progress, best: dict[str, Any]
) -> dict[str, float]:
    """Train and validate one epoch, update ``prog`` and keep the best weights in ``best['state']``."""
    epoch = prog.next_epoch
    metrics = {"epoch": float(epoch), **train_epoch(job, opt, cfg, epoch), **validate(job, cfg)}
    val = metrics.get("val_loss", -float(epoch))  # without validation the last epoch is the best
    if val < prog.best_val_loss:
        prog.best_val_loss, prog.best_epoch, prog.bad_epochs = val, epoch, 0
        best["state"] = copy.deepcopy({k: v.detach().cpu() for k, v in job.raw.state_dict().items()})
    else:
        prog.bad_epochs += 1
    prog.stopped_early = bool(cfg.early_stopping_patience and prog.bad_epochs >= cfg.early_stopping_patience)
    prog.next_epoch = epoch + 1
    prog.history.append(metrics)
    return metrics


def checkpoint_state(
    job: Job, opt: torch.optim.Optimizer, prog: Progress, best: dict[str, Any]
) -> dict[str, Any]:
    """Everything needed to resume after a failure (weights, optimizer, progress, best weights).

    When the last epoch is the best one its weights are not stored twice (``best`` is None).
    """
    current_is_best = prog.best_epoch == prog.next_epoch - 1
    return {
        "model": job.raw.state_dict(),
        "optimizer": opt.state_dict(),
        "progress": asdict(prog),
        "best": None if current_is_best else best.get("state"),
    }


def restore(job: Job, opt: torch.optim.Optimizer, state: dict[str, Any]) -> tuple[Progress, dict[str, Any]]:
    """Load a :func:`checkpoint_state` back; returns the progress and best weights to continue with."""
    job.raw.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return Progress(**state["progress"]), {
        "state": state["best"] if state["best"] is not None else state["model"]
    }


def local_job(
    model: NicheModel,
    blobs: BlobStore,
    train: list[Example],
    val: list[Example],
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
) -> Job:
    """A single-process :class:`Job` over blob-store examples (the Ray worker builds the same per rank)."""
    dev = torch.device(device)
    train_set = BlobImageDataset(
        blobs, train, model.class_names, train_transform(model.data_config, cfg.augment)
    )
    val_set = (
        BlobImageDataset(blobs, val, model.class_names, model.transform(training=False)) if val else None
    )
    labels = np.array([train_set.index[e.label] for e in train], dtype=np.int64)
    model.net.to(dev)
    return Job(model.net, model.net, train_set, labels, val_set, model.num_classes, dev)


def fit_local(job: Job, cfg: TrainConfig) -> Progress:
    """Run the whole recipe in this process (no Ray): the baseline the Ray path is measured against,
    and the fast path of the transfer benchmark. Leaves the best epoch's weights in ``job.raw``."""
    best: dict[str, Any] = {}
    opt, prog = make_optimizer(job.raw, cfg), Progress()
    while prog.next_epoch < cfg.epochs and not prog.stopped_early:
        run_epoch(job, opt, cfg, prog, best)
    if best.get("state") is not None:
        job.raw.load_state_dict(best["state"])
    return prog
