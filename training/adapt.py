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
import json
import logging
from dataclasses import dataclass

import torch
from PIL import Image

from nicheloop.blobs import BlobStore
from nicheloop.contracts import CHAMPION
from nicheloop.driftlog import INPUT_MONITORS, DriftLog
from nicheloop.errors import Conflict, InvalidInput, NotReady
from nicheloop.images import decode_image
from nicheloop.model import NicheModel
from nicheloop.registry import MANIFEST, STOPGAP_OF, Registry, VersionInfo
from nicheloop.settings import Settings
from nicheloop.store import Store
from training.data import MAX_FILE_BYTES, parse_manifest
from training.evaluate import drift_reference, evaluate

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


STOPGAP_ALIAS = "stopgap"


@dataclass(frozen=True)
class Stopgap:
    version: VersionInfo
    metrics: dict[str, float]


def make_stopgap(settings: Settings, *, images: int = 128) -> Stopgap:
    """Recalibrate the champion on up to ``images`` images it answered since its input alarm, measure
    it on the champion's held-out labels (its drift reference), and register it, tagged
    ``stopgap_of`` the champion, with the champion's snapshot manifest (it learnt no label).

    Raises:
        Conflict: the champion is a stopgap already, or one was made for it.
        NotReady: no image or embedding alarm holds on the champion, or it answered too few
            images since.
        InvalidInput: the champion has no snapshot manifest (no held-out labels to measure on), or
            no batch-norm layer.
    """
    registry, store = Registry(settings.tracking_uri, settings.model_name), Store(settings.db_url)
    champion = registry.resolve(CHAMPION)
    if STOPGAP_OF in champion.tags:
        raise Conflict(f"champion {champion.version} is a stopgap already; a retrained version replaces it")
    made = registry.stopgap_of(champion.version)
    if made is not None:
        raise Conflict(f"version {made.version} is the stopgap of champion {champion.version} already")
    since = DriftLog(store).alarm_since(champion.version, INPUT_MONITORS, window_start=True)
    if since is None:
        raise NotReady(
            f"no image or embedding alarm holds on champion {champion.version}: a stopgap helps when "
            "the images changed, not when only the class mix did"
        )
    shas = store.recent_images(champion.version, since=since, limit=images)
    if len(shas) < MIN_IMAGES:
        raise NotReady(
            f"champion {champion.version} answered {len(shas)} images since the window that raised "
            f"its alarm began ({since.isoformat()}); a stopgap needs {MIN_IMAGES}"
        )
    manifest = registry.artifact_text(champion.run_id, MANIFEST)
    if not manifest:
        raise InvalidInput(
            f"champion {champion.version} has no {MANIFEST}: no held-out labels to measure a stopgap on"
        )
    snap = parse_manifest(manifest)
    blobs = BlobStore(str(settings.blob_dir))
    pictures = [decode_image(blobs.get(sha), MAX_FILE_BYTES, 4096 * 4096) for sha in shas]
    parent = registry.load(champion.version)
    try:
        model = recalibrated(parent.model, pictures)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    rep, reference = evaluate(model, blobs, snap.holdout)
    reference = drift_reference(reference, snap, model.class_names)
    before = registry.run_metrics(champion.run_id)
    metrics = {f"holdout_{k}": v for k, v in rep.metrics.items()} | {
        "stopgap_images": float(len(shas)),
        **{f"parent_{k}": v for k, v in before.items() if k.startswith("holdout_")},
    }
    lineage = {
        STOPGAP_OF: champion.version,
        "parent_version": champion.version,
        "snapshot_digest": champion.tags.get("snapshot_digest", ""),
        "backbone": model.backbone,
        "stopgap_since": since.isoformat(),
        "stopgap_images": str(len(shas)),
    }
    info = registry.register(
        model,
        reference,
        params={"stopgap_images": len(shas), "stopgap_since": since.isoformat()},
        metrics=metrics,
        lineage=lineage,
        alias=STOPGAP_ALIAS,
        artifacts={MANIFEST: manifest, "stopgap_images.json": json.dumps(shas)},
    )
    log.info(
        "stopgap %s of champion %s: held-out accuracy %.3f against %.3f",
        info.version,
        champion.version,
        rep.metrics["accuracy"],
        before.get("holdout_accuracy", float("nan")),
    )
    return Stopgap(info, metrics)
