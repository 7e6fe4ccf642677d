"""A label-free stopgap after a shift: batch-norm statistics recalibrated on recent traffic.

Between a drift alarm and the next promoted version, the champion's batch-norm layers can take the
mean and variance of the images it now sees (AdaBN, Li et al. 2016; the gradient-free part of TENT,
Wang et al. ICLR 2021): no label, no gradient, one pass over a few hundred images. Its weights stay
as they are. It helps when the camera changed (light, focus, noise move every layer's statistics),
not when only the class mix did (there the statistics were right and moving them hurts), and it is
served only after it wins in shadow on fresh labels (benchmarks/closed_loop.py measures it).
"""

from __future__ import annotations

import copy
import logging

import torch
from PIL import Image

from nicheloop.model import NicheModel

log = logging.getLogger(__name__)
MIN_IMAGES = 32  # fewer, and a layer's variance is noise


def batch_norm_layers(net: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """The layers that keep running statistics (frozen ones included)."""
    return [
        m
        for m in net.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def recalibrated(model: NicheModel, images: list[Image.Image], *, batch_size: int = 32) -> NicheModel:
    """A copy of ``model`` whose batch-norm statistics are those of ``images`` (their exact mean over
    the batches), every weight and the temperature as they were; in eval mode.

    Raises:
        ValueError: fewer than :data:`MIN_IMAGES` images, or a model with no batch-norm layer
            (a ViT's layer norm has no statistics to move).
    """
    if len(images) < MIN_IMAGES:
        raise ValueError(f"need at least {MIN_IMAGES} recent images to recalibrate, got {len(images)}")
    adapted = copy.deepcopy(model)
    adapted.runtime = None  # a compiled graph has the old statistics baked in
    layers = batch_norm_layers(adapted.net)
    if not layers:
        raise ValueError(f"{model.backbone} has no batch-norm layer: nothing to recalibrate")
    adapted.net.eval()  # dropout and the rest stay in eval; only the statistics gather
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative mean over the batches, not an exponential one
        m.train()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            adapted.net(adapted.preprocess(images[i : i + batch_size]))
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    adapted.net.eval()
    log.info("batch-norm statistics of %d layers recalibrated on %d images", len(layers), len(images))
    return adapted
