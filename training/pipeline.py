"""The two training entry points: ``bootstrap`` (the first champion) and ``train`` (a candidate)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import ray

from nicheloop.blobs import BlobStore
from nicheloop.contracts import CANDIDATE, CHAMPION
from nicheloop.errors import InvalidInput
from nicheloop.model import NicheModel, build_model
from nicheloop.registry import Registry, VersionInfo
from nicheloop.settings import Settings
from nicheloop.store import Store
from training.config import TrainConfig
from training.data import Snapshot, snapshot
from training.evaluate import evaluate
from training.loop import fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    version: VersionInfo
    metrics: dict[str, float]
    snapshot_digest: str


def seed_store(settings: Settings, items: list[tuple[bytes, str]]) -> int:
    """Put seed images into the blob store and the labeled store; returns how many were new."""
    blobs, store = BlobStore(str(settings.blob_dir)), Store(settings.db_url)
    return sum(store.add_seed_example(blobs.put(data), label) for data, label in items)


def _connect(settings: Settings) -> None:
    if not ray.is_initialized():
        ray.init(address=settings.ray_head_address, log_to_driver=False)


def _fit_evaluate_register(settings: Settings, model: NicheModel, snap: Snapshot, cfg: TrainConfig,
                           alias: str, parent: str, extra_metrics: dict[str, float]) -> TrainResult:
    if not snap.train or not snap.holdout:
        raise InvalidInput(f"need labeled examples on both sides (train {len(snap.train)}, "
                           f"held out {len(snap.holdout)}); label more data first")
    _connect(settings)
    blobs = BlobStore(str(settings.blob_dir))
    model, history = fit(model, snap.train, str(settings.blob_dir), cfg,
                         settings.home / "ray_results", f"{alias}-{snap.digest[:12]}")
    metrics, reference = evaluate(model, blobs, snap.holdout)
    all_metrics = {f"holdout_{k}": v for k, v in metrics.items()} | extra_metrics | {
        "train_examples": float(len(snap.train)),
        "final_train_loss": float(history[-1]["train_loss"]) if history else float("nan")}
    lineage = {"snapshot_digest": snap.digest, "parent_version": parent, "backbone": model.backbone,
               "train_config": cfg.model_dump_json()}
    registry = Registry(settings.tracking_uri, settings.model_name)
    info = registry.register(model, reference, params=cfg.model_dump(), metrics=all_metrics, lineage=lineage,
                             alias=alias, artifacts={"snapshot_manifest.json": snap.manifest(),
                                                     "train_history.json": json.dumps(history, default=str)})
    return TrainResult(info, all_metrics, snap.digest)


def bootstrap(settings: Settings, items: list[tuple[bytes, str]], cfg: TrainConfig,
              pretrained: bool = False, checkpoint: Path | None = None) -> TrainResult:
    """Fine-tune a fresh timm model on a seed set and register it as the first ``champion``."""
    seed_store(settings, items)
    classes = sorted({label for _, label in items})
    model = build_model(settings.backbone, classes, settings.image_size, pretrained, checkpoint)
    return _fit_evaluate_register(settings, model, snapshot(Store(settings.db_url)), cfg, CHAMPION, "none", {})


def train(settings: Settings, cfg: TrainConfig) -> TrainResult:
    """Fine-tune the champion on the labeled store; register the result as ``candidate``.

    The champion is evaluated on the same held-out split, so the promotion gate compares like with like.
    """
    registry = Registry(settings.tracking_uri, settings.model_name)
    champion = registry.load(registry.resolve(CHAMPION).version)
    snap = snapshot(Store(settings.db_url))
    parent_metrics, _ = evaluate(champion.model, BlobStore(str(settings.blob_dir)), snap.holdout)
    extra = {f"parent_holdout_{k}": v for k, v in parent_metrics.items()}
    # the champion's weights are the starting point; they are fine-tuned in place from here on
    return _fit_evaluate_register(settings, champion.model, snap, cfg, CANDIDATE, champion.info.version, extra)
