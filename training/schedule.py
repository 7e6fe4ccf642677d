"""Transfer-learning mechanics a recipe switches on: layer groups, discriminative and layer-wise
decayed learning rates, freeze schedules, warm-restart cosine schedules and class balance."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from timm.models import group_parameters

from nicheloop.model import TimmNet
from training.config import TrainConfig


@dataclass(frozen=True)
class LayerGroups:
    """A network's parameters split into body groups ordered stem -> top, and the head.

    ``stages`` are coarse groups (what gradual unfreezing releases one at a time); ``layers``
    are fine groups (what layer-wise learning-rate decay spreads over). Both hold parameter names.
    """

    stages: list[list[str]]
    layers: list[list[str]]
    head: list[str]


def layer_groups(net: TimmNet) -> LayerGroups:
    """Group ``net``'s parameters with timm's own group matcher (stem -> blocks -> head)."""
    head_ids = {id(p) for p in net.get_classifier().parameters()}
    head = [n for n, p in net.named_parameters() if id(p) in head_ids]

    def groups(coarse: bool) -> list[list[str]]:
        grouped = group_parameters(net, net.group_matcher(coarse=coarse))
        body = [[n for n in names if n not in head] for _, names in sorted(grouped.items())]
        return [g for g in body if g]

    return LayerGroups(stages=groups(True), layers=groups(False), head=head)


def param_groups(net: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """Optimizer groups: the head at ``lr_head``; body layer i of n at ``lr_backbone * layer_decay**(n-1-i)``.

    Every group remembers its peak ``base_lr`` (the schedule scales from it); norm and bias
    parameters get no weight decay.
    """
    groups = layer_groups(net)
    params = dict(net.named_parameters())
    out: list[dict] = []
    n = len(groups.layers)
    scaled = [
        (names, cfg.lr_backbone * cfg.layer_decay ** (n - 1 - i)) for i, names in enumerate(groups.layers)
    ]
    for names, lr in [*scaled, (groups.head, cfg.lr_head)]:
        decay = [params[k] for k in names if params[k].ndim > 1]
        no_decay = [params[k] for k in names if params[k].ndim <= 1]
        out += [
            {"params": ps, "lr": lr, "base_lr": lr, "weight_decay": wd}
            for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0))
            if ps
        ]
    return out


def trainable_stages(cfg: TrainConfig, epoch: int, n_stages: int) -> int:
    """How many body stages (counted from the top) train in ``epoch`` under the freeze schedule."""
    if cfg.freeze == "none":
        return n_stages
    if cfg.freeze == "backbone" or epoch < cfg.head_only_epochs:
        return 0
    return min(n_stages, 1 + (epoch - cfg.head_only_epochs) // cfg.unfreeze_every)


def frozen_names(net: torch.nn.Module, cfg: TrainConfig, epoch: int) -> set[str]:
    """Names of the parameters that must not change in ``epoch``."""
    stages = layer_groups(net).stages
    keep = trainable_stages(cfg, epoch, len(stages))
    return {n for stage in stages[: len(stages) - keep] for n in stage}


def set_frozen_norms(net: torch.nn.Module, frozen: set[str]) -> None:
    """Put batch-norm layers whose parameters are all frozen in eval mode, so their statistics stay."""
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            own = [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
            if own and all(p in frozen for p in own):
                module.eval()


def lr_factor(cfg: TrainConfig, progress: float) -> float:
    """Cosine schedule (with warm restarts when ``restart_epochs`` > 0) at ``progress`` epochs done.

    Returns a factor in [min_lr_ratio, 1] that multiplies each group's ``base_lr``.
    """
    t, period = progress, float(cfg.restart_epochs or cfg.epochs)
    while cfg.restart_epochs and t >= period:
        t, period = t - period, period * cfg.restart_mult
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, t / period)))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency ("balanced") loss weights n / (K_present * count): averaged over the examples
    they are 1, so the loss keeps its scale; absent classes get 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, (counts > 0).sum()), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def balanced_order(labels: np.ndarray, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
    """One epoch of ``size`` indices (default: as many as ``labels``) drawn so that every present
    class is equally likely.

    Each class's examples are cycled through in a fresh random order, so none repeats before all
    of that class have been seen.
    """
    classes = np.unique(labels)
    picks = rng.choice(classes, size=len(labels) if size is None else size)
    order = np.empty(len(picks), dtype=np.int64)
    for c in classes:
        members = np.flatnonzero(labels == c)
        slots = np.flatnonzero(picks == c)
        reps = math.ceil(len(slots) / max(1, len(members)))
        cycle = np.concatenate([rng.permutation(members) for _ in range(max(1, reps))])
        order[slots] = cycle[: len(slots)]
    return order


def shuffled_passes(count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` indices of ``count`` items: whole shuffled passes, the last one cut short."""
    passes = max(1, -(-size // max(1, count)))
    return np.concatenate([rng.permutation(count) for _ in range(passes)])[:size]
