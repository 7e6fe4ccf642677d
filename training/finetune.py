"""The two training entry points: ``bootstrap`` (the first champion) and ``train`` (a candidate).

Both: snapshot the labeled store, split off validation, fine-tune on Ray Train, fit the
calibration temperature, evaluate on the held-out side, and register the version in MLflow with
its lineage (snapshot manifest, parent version, recipe, code version). ``train`` is continual:
it learns from the labels that are new since the parent, with a class-balanced replay of the
parent's labels, and reports how much the new version forgot of the parent's held-out data.
"""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nicheloop.blobs import BlobStore
from nicheloop.cluster import connect_ray
from nicheloop.contracts import CANDIDATE, CHAMPION
from nicheloop.driftlog import INPUT_MONITORS, DriftLog
from nicheloop.errors import InvalidInput
from nicheloop.model import NicheModel, build_model, init_backbone
from nicheloop.reference import Reference
from nicheloop.registry import MANIFEST, STOPGAP_OF, WORLD_SINCE, Registry, VersionInfo, world_since
from nicheloop.rollouts import Rollouts
from nicheloop.settings import Settings
from nicheloop.store import Store
from training.calibrate import fit_temperature
from training.config import TrainConfig, dump_recipe
from training.data import Example, Snapshot, parse_manifest, replay_buffer, snapshot, split_validation
from training.distributed import fit
from training.evaluate import drift_reference, evaluate, predict_all
from training.label_quality import gate_snapshot
from training.probe import probe_head

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    version: VersionInfo
    metrics: dict[str, float]
    snapshot_digest: str


@dataclass(frozen=True)
class TrainingSet:
    """What one fine-tune sees: new labels and replayed old labels, split three ways.

    ``val`` picks the best epoch (and stops early); ``calibration`` fits the temperature and nothing else.
    """

    train: list[Example]
    val: list[Example]
    new: int
    replayed: int
    calibration: list[Example] = field(default_factory=list)


def training_set(examples: list[Example], cfg: TrainConfig, new: int, replayed: int) -> TrainingSet:
    """Split ``examples`` into training, selection (``val``) and calibration labels, per class and stably."""
    train, held_out = split_validation(examples, cfg.val_fraction, cfg.seed)
    val, calibration = split_validation(
        held_out, cfg.calibration_fraction, cfg.seed
    )  # small classes: all select
    return TrainingSet(train, val, new=new, replayed=replayed, calibration=calibration)


def seed_store(settings: Settings, items: list[tuple[bytes, str]]) -> int:
    """Put seed images into the blob store and the labeled store; returns how many were new."""
    blobs, store = BlobStore(str(settings.blob_dir)), Store(settings.db_url)
    return sum(store.add_seed_example(blobs.put(data), label) for data, label in items)


def code_version() -> str:
    """The git commit of the code that trains (``unknown`` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_model(settings: Settings, cfg: TrainConfig, classes: list[str]) -> NicheModel:
    """A fresh model for ``classes`` with the recipe's starting weights (package, none, hub, file or
    MLflow); ``extra["start_weights"]`` says where they came from.

    Raises:
        InvalidInput: if the weights cannot be found or do not fit the backbone.
    """
    backbone = cfg.backbone or settings.backbone
    if not cfg.weights.startswith("mlflow:"):
        return build_model(backbone, classes, settings.image_size, weights=cfg.weights, dropout=cfg.dropout)
    model = build_model(backbone, classes, settings.image_size, dropout=cfg.dropout)
    registry = Registry(settings.tracking_uri, settings.model_name)
    where = cfg.weights.partition(":")[2]
    version = registry.resolve(where[1:]).version if where.startswith("@") else where
    source = registry.load(version).model
    if source.backbone.split(".")[0] != backbone.split(".")[0]:
        raise InvalidInput(f"weights {cfg.weights} are a {source.backbone}, the recipe asks for {backbone}")
    init_backbone(model.net, source.net.state_dict())
    model.extra["start_weights"] = continued_from(version, source)
    return model


def continued_from(version: str, parent: NicheModel) -> dict[str, Any]:
    """Starting weights of a model that continues registered ``version`` (``parent``): that version,
    and the first weights of its line (package, hub, file or none)."""
    first = parent.extra.get("start_weights", {})
    return {"source": "mlflow", "version": version, "origin": first.get("origin", first)}


def _calibrate(model: NicheModel, blobs: BlobStore, data: TrainingSet, cfg: TrainConfig) -> dict[str, float]:
    """Fit the temperature and store it with the model (serving applies it); returns what it was fitted on.

    It is fitted on the calibration labels; when there are fewer than two of them (few labels, or
    ``calibration_fraction`` 0) it falls back to the selection labels and says so.
    """
    if not cfg.calibrate:
        return {}
    labels = data.calibration if len(data.calibration) >= 2 else data.val
    if len(labels) < 2:
        log.warning("no temperature fitted: fewer than two held-out labels; serving uses T=1")
        return {"calibration_examples": 0.0}
    if labels is data.val and cfg.calibration_fraction > 0:
        log.warning(
            "temperature fitted on the %d labels that picked the epoch (only %d calibration labels): "
            "it may over-sharpen; label more data or raise val_fraction",
            len(labels),
            len(data.calibration),
        )
    preds = predict_all(model, blobs, labels)
    model.extra["temperature"] = fit_temperature(preds.logits, preds.y)
    return {"calibration_examples": float(len(labels)), "calibration_on_selection": float(labels is data.val)}


@dataclass(frozen=True)
class NewWorld:
    """The world a version trained now is for, where a shift began one: since when (seconds since the
    epoch), its held-out labeled images (the drift reference) and all its labeled images."""

    since: float | None = None
    held_out: frozenset[str] = frozenset()
    labeled: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Lineage:
    """Where a new version comes from: the version it was trained from, its alias, and what it may
    not forget (the parent and the parent's held-out labels, for continual training)."""

    alias: str
    parent_version: str = "none"
    parent: NicheModel | None = None
    old_holdout: tuple[Example, ...] = ()
    # which of this snapshot's held-out images the parent got right, in their order (the offline
    # gate's paired test)
    parent_correct: np.ndarray | None = None
    # the world an input alarm on the parent saw (or the parent was trained for): its held-out images
    # are the new version's drift reference
    world: NewWorld = NewWorld()

    def tags(self, snap: Snapshot, model: NicheModel, cfg: TrainConfig) -> dict[str, str]:
        world = {WORLD_SINCE: repr(self.world.since)} if self.world.since is not None else {}
        return world | {
            "snapshot_digest": snap.digest,
            "parent_version": self.parent_version,
            "backbone": model.backbone,
            "weights": cfg.weights,
            "start_weights": json.dumps(model.extra.get("start_weights", {}), sort_keys=True),
            "code_version": code_version(),
            "train_config": cfg.model_dump_json(),
        }


def _training_figures(data: TrainingSet, history: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "train_examples": float(len(data.train)),
        "val_examples": float(len(data.val)),
        "new_examples": float(data.new),
        "replayed_examples": float(data.replayed),
        "epochs_run": float(len(history)),
        "final_train_loss": float(history[-1]["train_loss"]) if history else float("nan"),
    }


def _fit_evaluate_register(
    settings: Settings,
    model: NicheModel,
    snap: Snapshot,
    data: TrainingSet,
    cfg: TrainConfig,
    *,
    lineage: Lineage,
    extra_metrics: dict[str, float],
) -> TrainResult:
    """Fine-tune on Ray Train, calibrate, evaluate on the held-out labels, register with lineage.

    Raises:
        InvalidInput: no training or no held-out labels.
    """
    if not data.train or not snap.holdout:
        raise InvalidInput(
            f"need labeled examples on both sides (train {len(data.train)}, "
            f"held out {len(snap.holdout)}); label more data first"
        )
    connect_ray(settings)
    blobs = BlobStore(str(settings.blob_dir))
    run_name = f"{lineage.alias}-{snap.digest[:12]}"
    model, history = fit(
        model, data.train, data.val, str(settings.blob_dir), cfg, settings.ray_results_dir, run_name
    )
    calibration = _calibrate(model, blobs, data, cfg)
    rep, reference = evaluate(model, blobs, snap.holdout, cfg.critical_classes, cfg.target_recall)
    paired = discordant(reference, lineage.parent_correct) if lineage.parent_correct is not None else {}
    reference = drift_reference(reference, snap, model.class_names, world=lineage.world.held_out)
    snapped = {e.image_sha256 for e in (*snap.train, *snap.holdout)}
    metrics = (
        {f"holdout_{k}": v for k, v in rep.metrics.items()}
        | {
            "reference_rows": float(len(reference.labels)),
            "reference_world_images": float(len(lineage.world.held_out)),
            # the new world's labels it learnt from: the policy's recovery rule waits for as many more
            "world_labels": float(len(lineage.world.labeled & snapped)),
        }
        | extra_metrics
        | _training_figures(data, history)
        | calibration
        | paired
    )
    if lineage.parent is not None:
        metrics |= forgetting(lineage.parent, model, blobs, lineage.old_holdout)
    info = Registry(settings.tracking_uri, settings.model_name).register(
        model,
        reference,
        params=cfg.model_dump(),
        metrics=metrics,
        lineage=lineage.tags(snap, model, cfg),
        alias=lineage.alias,
        artifacts={
            MANIFEST: snap.manifest(),
            "recipe.yaml": dump_recipe(cfg),
            "confusion_matrix.json": json.dumps({"classes": model.class_names, "matrix": rep.confusion}),
            "train_history.json": json.dumps(history, default=str),
        },
    )
    return TrainResult(info, metrics, snap.digest)


def bootstrap(settings: Settings, items: list[tuple[bytes, str]], cfg: TrainConfig) -> TrainResult:
    """Fine-tune a fresh timm model on a seed set and register it as the first ``champion``."""
    seed_store(settings, items)
    model = start_model(settings, cfg, sorted({label for _, label in items}))
    snap = snapshot(Store(settings.db_url))
    data = training_set(list(snap.train), cfg, new=len(snap.train), replayed=0)
    if cfg.head_init == "probe":
        accuracy = probe_head(
            model, BlobStore(str(settings.blob_dir)), data.train, weight_decay=cfg.probe_weight_decay
        )
        log.info("the fresh head starts as a linear probe (training accuracy %.3f)", accuracy)
    result = _fit_evaluate_register(
        settings, model, snap, data, cfg, lineage=Lineage(CHAMPION), extra_metrics={}
    )
    rollouts = Rollouts(Store(settings.db_url))
    rollouts.record_champion(
        result.version.version,
        previous=rollouts.champion(),
        actor="bootstrap",
        reason=f"fine-tuned on the seed set ({len(snap.train)} labeled images)",
        now=time.time(),
    )
    return result


def continual_set(snap: Snapshot, parent: Snapshot | None, cfg: TrainConfig) -> TrainingSet:
    """New labels since ``parent`` plus a class-balanced replay of the parent's, split for validation.

    Without a parent manifest every label counts as new.

    Raises:
        InvalidInput: if nothing is new since the parent (label more data first).
    """
    seen = {(e.image_sha256, e.label) for e in parent.train} if parent else set()
    new = [e for e in snap.train if (e.image_sha256, e.label) not in seen]
    if not new:
        raise InvalidInput("no labels are new since the champion was trained; label more data first")
    new_shas = {e.image_sha256 for e in new}
    old = [e for e in snap.train if (e.image_sha256, e.label) in seen and e.image_sha256 not in new_shas]
    replay = replay_buffer(old, cfg.replay_per_class, cfg.seed)
    return training_set(new + replay, cfg, new=len(new), replayed=len(replay))


def discordant(candidate: Reference, parent_correct: np.ndarray) -> dict[str, float]:
    """The held-out images only the candidate and only its parent got right (the pairs both got
    right or wrong say nothing about which is better)."""
    mine = candidate.probs.argmax(axis=1) == candidate.labels
    return {
        "holdout_candidate_only": float((mine & ~parent_correct).sum()),
        "holdout_parent_only": float((parent_correct & ~mine).sum()),
    }


def forgetting(
    before: NicheModel, after: NicheModel, blobs: BlobStore, old: list[Example] | tuple[Example, ...]
) -> dict[str, float]:
    """Accuracy points lost on the parent's held-out data (positive: forgot; negative: improved)."""
    if not old:
        return {}
    acc = []
    for m in (before, after):
        preds = predict_all(m, blobs, old)
        acc.append(float((preds.logits.argmax(1) == preds.y).mean()))
    return {
        "old_data_accuracy_before": acc[0],
        "old_data_accuracy_after": acc[1],
        "forgetting_points": 100.0 * (acc[0] - acc[1]),
    }


def new_world(store: Store, *versions: str, inherited: float | None = None) -> NewWorld:
    """The labeled images served since the window that raised the oldest image or embedding alarm
    still holding on ``versions`` began, else since ``inherited`` (the world the parent was trained
    for: its successors go on learning it); empty: neither."""
    began = DriftLog(store).earliest_alarm(versions, INPUT_MONITORS, window_start=True)
    since = began.timestamp() if began is not None else inherited
    if since is None:
        return NewWorld()
    rows = store.labeled_examples()
    served = store.served_at([r.prediction_id for r in rows])
    fresh = [r for r in rows if r.prediction_id in served and served[r.prediction_id].timestamp() >= since]
    return NewWorld(
        since,
        held_out=frozenset(r.image_sha256 for r in fresh if r.holdout),
        labeled=frozenset(r.image_sha256 for r in fresh),
    )


def train(settings: Settings, cfg: TrainConfig) -> TrainResult:
    """Fine-tune the champion continually on the labeled store; register the result as ``candidate``.

    The champion is evaluated on the same held-out split, so the promotion gate compares like with like.
    """
    registry = Registry(settings.tracking_uri, settings.model_name)
    champion = registry.load(registry.resolve(CHAMPION).version)
    manifest = registry.artifact_text(champion.info.run_id, MANIFEST)
    parent_snap = parse_manifest(manifest) if manifest else None
    snap, left_out = snapshot(Store(settings.db_url)).within(champion.model.class_names)
    if left_out:
        log.warning("left out labels that are not the champion's classes: %s", left_out)
    blobs = BlobStore(str(settings.blob_dir))
    gate: dict[str, float] = {}
    if cfg.label_gate:  # before anything trains on the labels
        snap, gate = gate_snapshot(Store(settings.db_url), champion.model, blobs, snap, cfg)
        log.info("label gate: %s", gate)
    data = continual_set(snap, parent_snap, cfg)
    parent_report, parent_ref = evaluate(
        champion.model, blobs, snap.holdout, cfg.critical_classes, cfg.target_recall
    )
    extra = {f"parent_holdout_{k}": v for k, v in parent_report.metrics.items()}
    extra["labels_left_out_unknown_class"] = float(sum(left_out.values()))  # lineage says so
    extra |= gate  # and the manifest lists each label the gate held back, with why
    before = copy.deepcopy(champion.model)  # `champion.model` is fine-tuned in place
    # a compressed champion trains on from the full-precision weights it was compiled from
    champion.model.runtime = None
    champion.model.extra.pop("compression", None)
    champion.model.extra["start_weights"] = continued_from(champion.info.version, before)
    # a stopgap champion patches its parent: the parent's alarm is the world's too
    versions = [v for v in (champion.info.version, champion.info.tags.get(STOPGAP_OF)) if v]
    inherited = world_since(champion.info, registry.version)  # the world the champion was trained for
    lineage = Lineage(
        CANDIDATE,
        parent_version=champion.info.version,
        parent=before,
        old_holdout=parent_snap.holdout if parent_snap else (),
        parent_correct=parent_ref.probs.argmax(axis=1) == parent_ref.labels,
        world=new_world(Store(settings.db_url), *versions, inherited=inherited),
    )
    return _fit_evaluate_register(
        settings, champion.model, snap, data, cfg, lineage=lineage, extra_metrics=extra
    )
