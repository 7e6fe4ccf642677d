"""The loop after a shift: how fast each retraining strategy wins accuracy back, on one stream.

On an ImageFolder (default ../shared/datasets/neu-steel; ``--data DIR``), split per class into a
seed set that bootstraps the champion (``--bootstrap`` a class), held-out test images never
labeled (``--test`` a class, each also under the shift) and the rest, streamed in a random order
on a compressed clock (``--events-per-hour``). At ``--shift-at`` (30%) of the stream the camera
changes (``camera``: blur, darker and flatter light, sensor noise, all at once), slides into
that change over a fifth of the stream (``ramp``), or stays while the mix of classes changes
(``mix``: the last class half the traffic; the shifted test images are then the clean ones).
Every event is scored by whichever version serves at that moment; the score counts before any
label of it is used.

Each arm runs the same stream, with the same review budget (``--budget`` labels an hour, answered
with the true label ``--review-delay-s`` after they are queued) and the same user feedback (a
``--feedback-share`` of events get their true label ``--feedback-delay-s`` later; these train
too, and feed the accuracy evidence):

- ``static``: the champion serves throughout; nothing retrains.
- ``periodic_random``: retrains every ``--period-h`` on reviewed labels chosen at random.
- ``drift_random``: retrains when a drift alarm holds (after the same cooldown as the loop), on
  labels chosen at random.
- ``loop``: the product: labels chosen by the active sampler (uncertainty x FAISS novelty and
  diversity, most of the budget on post-alarm traffic while an alarm holds, class quotas leaning to
  the classes the shift touched, and with ``--dispute-share`` first the images a candidate in shadow
  answers otherwise) and retraining when the retraining policy says so.

What runs is the product's code, in this process: the drift stage and its monitors
(``monitoring.drift.stage.DriftStage``, fed the prediction and feedback events the gateway would
publish, stamped with the simulated clock), the sampler's selection (``select_batch``,
``shift_weights``, ``EmbeddingIndex``), the policy (``rollout.policy.decide``, from
recipes/policies/default.yaml with the overrides below), the continual training set (new labels plus
class-balanced replay, ``continual_set``) fine-tuned by the training engine on the
recipes/continual.yaml recipe (in-process: ``fit_local``, Ray Train's per-worker loop), the
temperature fit and the held-out evaluation that makes the version's drift reference. Not in the
path: Kafka, HTTP, the database and the review pages (they carry the same events; their latency is
not the question), and the rollout's live gates: a candidate that passes the product's offline gate
(``rollout.gates.offline.held_out_verdict``: held-out accuracy not under its parent's on the same
labels, or under it within chance at the plan's ``alpha``) goes through shadow and the canary steps
of the rollout plan, ``--step-s`` each, then becomes champion.

The stream never waits for training: a run starts at the event the decision is taken, takes the
wall time it really takes times ``--time-scale`` on the simulated clock, and its candidate enters
the rollout at the first event after that. Wall time depends on the machine's load, and which
labels arrive meanwhile on it: ``--train-s S`` makes every run take S simulated seconds instead,
for figures that repeat exactly.

Metrics per arm: online accuracy in windows of ``--window`` events; ``deficit_area`` (accuracy
points lost under the pre-shift online level after the shift, summed over windows, times their
hours: point-hours); ``labels_to_recover`` (reviewed labels since the shift until the serving
champion's accuracy on the shifted test images is within 2 points of the first champion's on the
clean ones for three windows in a row; null: never); ``time_to_recover`` split into detection
(shift to the first alarm), waiting for labels (alarm to the start of the run whose version
recovered), training and rollout; ``forgetting_points`` (clean test accuracy the last champion lost
against the first); ``retrains``; and, for the loop, ``false_triggers``: runs its policy starts on
drift or accuracy evidence over a calm stream of ``--calm-events`` (no shift, nothing trains).

``--curve K,K,...`` also fine-tunes the first champion offline on the first K images of the new
world with their true labels, for each K, and reports the fewest that bring it within 2 points of
its clean level (``offline_labels_to_recover``) beside the review budget the stream has after the
shift: whether any arm could recover within the stream at all.

``--quick`` is a smaller stream and shorter training (under 15 minutes on two cores). Writes a PNG
of accuracy over time per arm (``--out``); the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import logging
import sys
import tempfile
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from monitoring.drift.stage import DriftConfig, DriftStage, Transition
from monitoring.index import EmbeddingIndex
from monitoring.metrics import MonitorMetrics
from monitoring.sampling import SamplerConfig, alarm_split, dispute_quota
from monitoring.selection import select_batch
from monitoring.strategies import Context, Pool
from nicheloop.blobs import BlobStore
from nicheloop.contracts import FEEDBACK_TOPIC, IMAGE_STATS, PREDICTIONS_TOPIC, FeedbackEvent, PredictionEvent
from nicheloop.driftlog import INPUT_MONITORS
from nicheloop.errors import InvalidInput
from nicheloop.images import decode_image, image_statistics
from nicheloop.model import NicheModel, build_model
from nicheloop.reference import Reference
from rollout.gates.offline import held_out_verdict
from rollout.gates.shadow import not_won
from rollout.plan import STOPGAP_PLAN, RolloutPlan
from rollout.policy import Evidence, RetrainPolicy, decide, load_policy
from training.adapt import recalibrated
from training.calibrate import fit_temperature
from training.config import TrainConfig, load_recipe
from training.data import Example, Snapshot, read_image_folder
from training.engine import fit_local, local_job
from training.evaluate import drift_reference, evaluate, predict_all
from training.finetune import NewWorld, continual_set, training_set
from training.probe import probe_head

log = logging.getLogger("closed_loop")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "neu-steel"
ARMS = ("static", "periodic_random", "drift_random", "loop", "loop_bn")
T0 = datetime(2026, 1, 5, 6, 0, tzinfo=UTC).timestamp()  # the stream's first event
MAX_BYTES, MAX_PIXELS = 64 << 20, 4096 * 4096
# The default policy, scaled to a stream of hours: a 6-hour cooldown would allow one run a stream.
# The drift rule keeps its 100 labels of the alarm's traffic: they teach the new world as well as
# confirm it, and with the drift fast lane 60 of them came half an hour after the change and were
# too few (a version no better on the new camera, then the cooldown).
POLICY_OVERRIDES = ("cooldown_s=3600", "accuracy_min_labels=30", "labels_after_drop=30")


# -- the world: images, the shift, the stream --------------------------------------------------


def camera_change(img: Image.Image, seed: int) -> Image.Image:
    """The same surface through a changed camera: out of focus, darker and flatter light, sensor noise."""
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    img = ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(0.8)).enhance(0.75)
    noise = np.random.default_rng(seed).normal(0, 8, (img.height, img.width, 1))
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8))


def mix_weights(n: int) -> np.ndarray:
    """The class mix after a ``mix`` shift: the last class half the traffic, the others the rest."""
    w = np.full(n, 0.5 / max(1, n - 1))
    w[-1] = 0.5 if n > 1 else 1.0
    return w


def png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


@dataclass
class World:
    """Images by blob key, their classes and statistics, and the streams of keys."""

    classes: list[str]
    blobs: BlobStore
    images: dict[str, Image.Image] = field(default_factory=dict)
    label: dict[str, int] = field(default_factory=dict)
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    bootstrap: list[Example] = field(default_factory=list)
    test_clean: list[str] = field(default_factory=list)
    test_shifted: list[str] = field(default_factory=list)
    stream: list[str] = field(default_factory=list)  # one key an event
    shifted: list[bool] = field(default_factory=list)  # whether that event is through the new camera
    calm: list[str] = field(default_factory=list)
    shift_at: int = 0

    def add(self, data: bytes, label: int) -> str:
        key = self.blobs.put(data)
        if key not in self.images:
            img = decode_image(data, MAX_BYTES, MAX_PIXELS)
            self.images[key], self.label[key] = img, label
            s = image_statistics(img)
            self.stats[key] = np.array([s[k] for k in IMAGE_STATS], np.float32)
        return key


def build_world(items: list[tuple[bytes, str]], blobs: BlobStore, args: argparse.Namespace) -> World:
    """Split per class, shift a copy of every test and stream image, and lay out the streams."""
    rng = np.random.default_rng(args.seed)
    classes = sorted({lbl for _, lbl in items})
    world = World(classes, blobs)
    pool: list[tuple[bytes, int]] = []
    for c, name in enumerate(classes):
        members = [data for data, lbl in items if lbl == name]
        members = [members[i] for i in rng.permutation(len(members))]
        boot, test = members[: args.bootstrap], members[args.bootstrap : args.bootstrap + args.test]
        world.bootstrap += [Example(world.add(d, c), name) for d in boot]
        for d in test:
            world.test_clean.append(world.add(d, c))
            world.test_shifted.append(
                world.add(png(camera_change(world.images[world.test_clean[-1]], len(world.test_shifted))), c)
            )
        pool += [(d, c) for d in members[args.bootstrap + args.test :]]
    order = rng.permutation(len(pool))[: args.events or None]
    by_class = [[d for d, c in pool if c == k] for k in range(len(classes))]
    n = len(order)
    world.shift_at = int(args.shift_at * n)
    ramp = max(1, int(0.2 * n))
    for i, j in enumerate(order):
        data, c = pool[j]
        key = world.add(data, c)
        p = (
            0.0
            if i < world.shift_at
            else 1.0
            if args.shift == "camera"
            else min(1.0, (i - world.shift_at + 1) / ramp)
        )
        if args.shift == "mix" and i >= world.shift_at:  # the same camera, another mix of classes
            c = int(rng.choice(len(classes), p=mix_weights(len(classes))))
            data = by_class[c][int(rng.integers(len(by_class[c])))]
            key, p = world.add(data, c), 0.0
        shifted = bool(rng.random() < p)
        if shifted:
            key = world.add(png(camera_change(world.images[key], 10_000 + int(j))), c)
        world.stream.append(key)
        world.shifted.append(shifted)
    if args.shift == "mix":  # no camera changed: the shifted test images are the clean ones
        world.test_shifted = list(world.test_clean)
    clean_pool = [world.add(d, c) for d, c in pool]
    world.calm = [clean_pool[int(i)] for i in rng.integers(0, len(clean_pool), args.calm_events)]
    return world


def _hashed_in(key: str, share: float) -> bool:
    """Whether ``key`` falls in a ``share`` of the images, by its hash (the arms' draws stay aligned)."""
    return share >= 1.0 or (
        share > 0 and int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) < share * 2**32
    )


def holdout_side(key: str) -> bool:
    """One label in five is held out (by the image's hash: the same on every arm)."""
    return int(hashlib.sha256(f"holdout:{key}".encode()).hexdigest()[:8], 16) % 5 == 0


# -- versions and their scores -------------------------------------------------------------------


@dataclass
class Version:
    name: str
    model: NicheModel
    snapshot: Snapshot
    reference: Reference
    holdout_accuracy: float
    created_at: float
    test_clean: float = float("nan")
    test_shifted: float = float("nan")
    world_since: float | None = None  # when the new world it was trained for began (training.finetune)
    world_labels: int = 0  # that world's labels in its snapshot


class Scores:
    """Each version's (probabilities, embedding, early features) of an image, computed once."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.cpu_s = 0.0
        self.images = 0

    def of(self, version: Version, keys: list[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        missing = list(dict.fromkeys(k for k in keys if (version.name, k) not in self.cache))
        cpu = time.process_time()
        for i in range(0, len(missing), 32):
            chunk = missing[i : i + 32]
            with torch.no_grad():
                out = version.model.infer(version.model.preprocess([self.world.images[k] for k in chunk]))
            for j, k in enumerate(chunk):
                self.cache[version.name, k] = (out.probs[j], out.embeddings[j], out.early[j])
        self.cpu_s += time.process_time() - cpu
        self.images += len(missing)
        return [self.cache[version.name, k] for k in keys]

    def accuracy(self, version: Version, keys: list[str]) -> float:
        probs = np.stack([p for p, _, _ in self.of(version, keys)])
        return float((probs.argmax(1) == np.array([self.world.label[k] for k in keys])).mean())

    def forget(self, version: Version) -> None:
        """Drop a version that no longer serves (memory)."""
        for key in [k for k in self.cache if k[0] == version.name]:
            del self.cache[key]


def trained(
    name: str,
    model: NicheModel,
    snap: Snapshot,
    data_train: list[Example],
    data_val: list[Example],
    calibration: list[Example],
    cfg: TrainConfig,
    world: World,
    scores: Scores,
    now: float,
    *,
    new_world: NewWorld = NewWorld(),
) -> Version:
    """Fine-tune ``model`` in place by the training engine, fit its temperature, evaluate it on the
    snapshot's held-out labels (its drift reference: those of ``new_world`` where enough) and on
    the test images."""
    torch.manual_seed(cfg.seed)
    fit_local(local_job(model, world.blobs, data_train, data_val, cfg), cfg)
    model.net.eval()
    labels = calibration if len(calibration) >= 2 else data_val
    if len(labels) >= 2:
        preds = predict_all(model, world.blobs, labels)
        model.extra["temperature"] = fit_temperature(preds.logits, preds.y)
    rep, ref = evaluate(model, world.blobs, snap.holdout)
    ref = drift_reference(ref, snap, model.class_names, world=new_world.held_out)
    snapped = {e.image_sha256 for e in (*snap.train, *snap.holdout)}
    v = Version(name, model, snap, ref, rep.metrics["accuracy"], now, world_since=new_world.since)
    v.world_labels = len(new_world.labeled & snapped)
    v.test_clean = scores.accuracy(v, world.test_clean)
    v.test_shifted = scores.accuracy(v, world.test_shifted)
    return v


def bootstrap_champion(world: World, cfg: TrainConfig, scores: Scores, args: argparse.Namespace) -> Version:
    """The first champion: the seed set, fine-tuned from the ImageNet weights (head as a linear probe)."""
    snap = Snapshot(
        train=tuple(e for e in world.bootstrap if not holdout_side(e.image_sha256)),
        holdout=tuple(e for e in world.bootstrap if holdout_side(e.image_sha256)),
    )
    torch.manual_seed(cfg.seed)
    model = build_model(
        args.backbone, world.classes, args.image_size, weights=cfg.weights, dropout=cfg.dropout
    )
    data = training_set(list(snap.train), cfg, new=len(snap.train), replayed=0)
    probe_head(model, world.blobs, data.train, weight_decay=cfg.probe_weight_decay)
    return trained("1", model, snap, data.train, data.val, data.calibration, cfg, world, scores, T0)


def learning_curve(
    world: World, first: Version, cfg: TrainConfig, scores: Scores, sizes: list[int]
) -> tuple[list[dict[str, Any]], Version | None]:
    """What fine-tuning the first champion on the first ``k`` images of the new world (their true
    labels, one in five held out as the product does, with the same replay) wins on the test images,
    for each ``k``: how many labels recovery needs at all, whatever chooses them and whenever. Also
    returns the version best on the shifted test images (None: no ``k`` fitted the stream)."""
    new = [key for key, shifted in zip(world.stream, world.shifted) if shifted]
    if not new:  # a class-mix shift: no image changed
        new = world.stream[world.shift_at :]
    out: list[dict[str, Any]] = []
    best: Version | None = None
    for k in sizes:
        if k > len(new):
            log.info("curve: %d labels asked, the stream has %d images of the new world", k, len(new))
            break
        labels = [Example(key, world.classes[world.label[key]]) for key in new[:k]]
        snap = Snapshot(
            train=(*first.snapshot.train, *(e for e in labels if not holdout_side(e.image_sha256))),
            holdout=(*first.snapshot.holdout, *(e for e in labels if holdout_side(e.image_sha256))),
        )
        data = continual_set(snap, first.snapshot, cfg)
        model = copy.deepcopy(first.model)
        v = trained(f"curve-{k}", model, snap, data.train, data.val, data.calibration, cfg, world, scores, T0)
        out.append(
            {"labels": k, "test_clean": round(v.test_clean, 4), "test_shifted": round(v.test_shifted, 4)}
        )
        log.info(
            "curve: %d labels of the new world: shifted test %.3f, clean %.3f",
            k,
            v.test_shifted,
            v.test_clean,
        )
        if best is None or v.test_shifted > best.test_shifted:
            if best is not None:
                scores.forget(best)
            best = v
        else:
            scores.forget(v)
    return out, best


def oracle_deficit(
    world: World, scores: Scores, first: Version, best: Version, args: argparse.Namespace
) -> float:
    """The deficit of an arm that serves ``best`` from the shift's first event on: no detection, no
    wait for labels, no training or rollout, and more labels of the new world than the stream's budget
    gives. No arm can lose less with versions trained on that many labels: a floor for the goals."""
    right = [
        int(p.argmax()) == world.label[k]
        for v, keys in ((first, world.stream[: world.shift_at]), (best, world.stream[world.shift_at :]))
        for k, (p, _, _) in zip(keys, scores.of(v, keys))
    ]
    w, per_hour = args.window, args.events_per_hour
    windows = [
        {"end": T0 + (j + w - 1) * 3600.0 / per_hour, "online": float(np.mean(right[j : j + w]))}
        for j in range(0, len(right) - w + 1, w)
    ]
    shift_t = T0 + world.shift_at * 3600.0 / per_hour
    return deficit_area(windows, shift_t, float(np.mean(right[: world.shift_at])), w / per_hour)


def labels_needed(curve: list[dict[str, Any]], level: float, points: float = 2.0) -> int | None:
    """The fewest labels of the curve whose version is within ``points`` of ``level`` on the
    shifted test images (None: none of them)."""
    return next((c["labels"] for c in curve if c["test_shifted"] >= level - points / 100), None)


# -- one arm's run ---------------------------------------------------------------------------------


@dataclass
class Label:
    key: str
    label: str
    at: float  # when it reached the store
    served_at: float  # when its image was served
    reviewed: bool  # a reviewer's (else a user's)


@dataclass
class Run:
    """A training run: its candidate (None: nothing to train on) and when it is ready."""

    candidate: Version | None
    rule: str
    started_at: float
    ready_at: float
    parent_accuracy: float = float("nan")  # the champion's accuracy on the candidate's held-out labels
    pairs: tuple[int, int] = (0, 0)  # held-out images only the candidate, only the champion got right


@dataclass
class Rollout:
    run: Run
    started_at: float


@dataclass
class Marks:
    """What a chart marks and the recovery split reads: when alarms, runs and promotions happened."""

    alarms: list[float] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    promotions: list[tuple[float, Run]] = field(default_factory=list)
    rejected: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    stopgaps: list[dict[str, Any]] = field(default_factory=list)  # loop_bn: each recalibration's fate
    disputed: int = 0  # review items the sampler took because a candidate in shadow answered otherwise


class Arm:
    """One strategy over one stream: who serves, what is labeled, when it retrains."""

    def __init__(
        self,
        name: str,
        world: World,
        scores: Scores,
        champion: Version,
        cfg: TrainConfig,
        policy: RetrainPolicy,
        plan: RolloutPlan,
        args: argparse.Namespace,
        *,
        calm: bool = False,
    ) -> None:
        self.name, self.world, self.scores, self.cfg = name, world, scores, cfg
        self.policy, self.plan, self.args, self.calm = policy, plan, args, calm
        self.champion = champion
        self.rng = np.random.default_rng(args.seed + 1)  # the same draws of feedback on every arm
        self.pick = np.random.default_rng(args.seed + ARMS.index(name) + 7)
        self.labels: list[Label] = []
        self.labeled: set[str] = set()
        self.waiting: list[Label] = []  # queued or given, not yet in the store
        self.user_hits: dict[str, list[tuple[float, bool]]] = {}
        self.raised: dict[str, dict[str, float]] = {}  # version -> monitor -> raised at
        self.began: dict[str, dict[str, float]] = {}  # version -> monitor -> its raising window began
        self.pool: OrderedDict[int, tuple[str, np.ndarray, np.ndarray, float]] = OrderedDict()
        self.index: EmbeddingIndex | None = None
        self.covered: set[str] = set()
        self.run: Run | None = None
        self.rollout: Rollout | None = None
        self.last_run_at: float | None = None
        self.versions = 1
        self.marks = Marks()
        self.correct: list[bool] = []
        self.windows: list[dict[str, float]] = []
        self.now = T0
        self._feedback_events: list[tuple[float, str, str]] = []  # (due, prediction id, label)
        self.stage = DriftStage(self._reference, MonitorMetrics(), DriftConfig(), self._transition)
        self.sampler = SamplerConfig(dispute_share=args.dispute_share)
        self.recent: deque[str] = deque(maxlen=1000)  # the images served last, newest last
        self.stopgap: Version | None = None
        self.stopgap_plan = RolloutPlan(**STOPGAP_PLAN)  # the product's: shadow wins, one canary step
        # when its shadow passed (None: still in shadow); the canary step, then it serves all
        self.stopgap_passed: float | None = None
        self.stopgap_since, self.stopgap_tried = 0.0, ""
        self._switch(champion)

    # -- the champion's monitors and covered set
    def _reference(self, version: str) -> Reference:
        for v in (self.champion, self.rollout.run.candidate if self.rollout else None):
            if v is not None and v.name == version:
                return v.reference
        raise KeyError(version)

    def _transition(self, t: Transition) -> None:
        alarms = self.raised.setdefault(t.model_version, {})
        began = self.began.setdefault(t.model_version, {})
        if t.state == "raised":
            alarms[t.result.monitor] = self.now
            began[t.result.monitor] = t.window_start.timestamp() if t.window_start else self.now
            self.marks.alarms.append(self.now)
        else:
            alarms.pop(t.result.monitor, None)
            began.pop(t.result.monitor, None)

    def alarm_since(self) -> float | None:
        held = self.raised.get(self.champion.name, {})
        return min(held.values()) if held else None

    def alarm_began(self, monitors: tuple[str, ...] = ()) -> float | None:
        """When the window that raised the oldest alarm still holding began (the policy's count);
        only ``monitors``' alarms when given."""
        held = [t for m, t in self.began.get(self.champion.name, {}).items() if not monitors or m in monitors]
        return min(held) if held else None

    def _switch(self, v: Version) -> None:
        """A new champion: the sampler's pool is dropped and its covered set starts from the reference;
        a batch-norm stopgap ends (the new version learnt the shift from labels)."""
        self.pool.clear()
        if self.stopgap is not None:
            self.scores.forget(self.stopgap)
        self.stopgap, self.stopgap_passed = None, None
        ref = v.reference.embeddings.astype(np.float32)
        self.index = EmbeddingIndex(ref.shape[1], center=ref.mean(axis=0))
        self.index.add(self.index.prepare(ref), [f"reference-{i}" for i in range(len(ref))])

    def play(self) -> Arm:
        """Serve its whole stream (the calm one for a calm arm), closing accuracy windows as it goes."""
        stream = self.world.calm if self.calm else self.world.stream
        t0 = time.perf_counter()
        for i, key in enumerate(stream):
            self.serve(i, key)
            self.close_window(i)
            if i % 500 == 499:
                log.info(
                    "%s%s: %d/%d events (%.0fs)",
                    self.name,
                    " (calm)" if self.calm else "",
                    i + 1,
                    len(stream),
                    time.perf_counter() - t0,
                )
        return self

    # -- the stream
    def serve(self, i: int, key: str) -> None:
        self.now = T0 + i * 3600.0 / self.args.events_per_hour
        self._arrivals()
        self._progress()
        serving, arm = self.champion, "champion"
        if self.rollout is not None and self.rollout.run.candidate is not None:
            share = self.canary_share()
            if share > 0 and self.rng.random() < share:
                serving, arm = self.rollout.run.candidate, "candidate"
        else:
            self.rng.random()  # keep the draws aligned across arms
        probs, emb, early = self.scores.of(serving, [key])[0]
        truth = self.world.label[key]
        answer = probs  # the champion still runs beside a stopgap: its monitors and evidence stay its own
        if arm == "champion" and self.stopgap is not None and self._stopgap_answers(key):
            answer = self.scores.of(self.stopgap, [key])[0][0]
        self.correct.append(bool(answer.argmax() == truth))
        self.recent.append(key)
        pid = f"{self.name}-{i}"
        at = datetime.fromtimestamp(self.now, UTC)
        self.stage(
            PREDICTIONS_TOPIC,
            PredictionEvent(
                prediction_id=pid,
                model_name="bench",
                model_version=serving.name,
                label=self.world.classes[int(probs.argmax())],
                probs=probs.tolist(),
                class_names=self.world.classes,
                uncertainty=float(1 - probs.max()),
                embedding=emb.tolist(),
                early_embedding=early.tolist(),
                image_sha256=key,
                image_stats=dict(zip(IMAGE_STATS, map(float, self.world.stats[key]))),
                arm=arm,
                created_at=at,
            ),
        )
        if self.rng.random() < self.args.feedback_share:
            due = self.now + self.args.feedback_delay_s
            self.waiting.append(Label(key, self.world.classes[truth], due, self.now, reviewed=False))
            self.user_hits.setdefault(serving.name, []).append((due, bool(probs.argmax() == truth)))
            self._feedback_events.append((due, pid, self.world.classes[truth]))
        if arm == "champion" and key not in self.labeled:
            self.pool[i] = (key, probs, emb, self.now)
            while len(self.pool) > self.sampler.pool:
                self.pool.popitem(last=False)
        if i % self.every == self.every - 1:
            self._select()
        if i % self.args.decide_every == 0:
            self._decide()

    @property
    def every(self) -> int:
        """Events between review batches: the budget an hour in batches of the sampler's size."""
        return max(1, round(self.args.events_per_hour * self.sampler.batch / self.args.budget))

    def _arrivals(self) -> None:
        """Labels and user feedback whose time has come reach the store (and the drift stage)."""
        due = [lb for lb in self.waiting if lb.at <= self.now]
        if due:
            self.waiting = [lb for lb in self.waiting if lb.at > self.now]
            for lb in due:
                if lb.key not in self.labeled:
                    self.labeled.add(lb.key)
                    self.labels.append(lb)
        for at, pid, label in [f for f in self._feedback_events if f[0] <= self.now]:
            self.stage(
                FEEDBACK_TOPIC,
                FeedbackEvent(
                    prediction_id=pid, label=label, source="user", created_at=datetime.fromtimestamp(at, UTC)
                ),
            )
        self._feedback_events = [f for f in self._feedback_events if f[0] > self.now]

    # -- review
    def _select(self) -> None:
        """Queue one batch for review: at random, or as the product's sampler chooses."""
        ids = [i for i, c in self.pool.items() if c[0] not in self.labeled and c[0] not in self.covered]
        k = min(self.sampler.batch, len(ids))
        if k == 0:
            return
        if self.name.startswith("loop"):
            chosen = self._active(ids, k)
        else:
            chosen = [ids[int(j)] for j in self.pick.choice(len(ids), k, replace=False)]
        for i in chosen:
            key = self.pool.pop(i)[0]
            self.covered.add(key)
            due = self.now + self.args.review_delay_s
            self.waiting.append(
                Label(
                    key,
                    self.world.classes[self.world.label[key]],
                    due,
                    T0 + i * 3600.0 / self.args.events_per_hour,
                    reviewed=True,
                )
            )

    def _active(self, ids: list[int], k: int) -> list[int]:
        """The sampler's choice (monitoring/sampling.py): first the images a candidate in shadow
        answered otherwise (``dispute_share`` of the batch), then, while an alarm holds,
        ``alarm_share`` of the rest from traffic since it, class quotas leaning to the classes the
        shift pushed images into."""
        disputed = self._disputed(ids)
        first = self._choose(
            disputed, dispute_quota(len(disputed), k, self.sampler.dispute_share), None, fair=True
        )
        self.marks.disputed += len(first)
        taken = set(first)
        return first + self._rest([i for i in ids if i not in taken], k - len(first))

    def _disputed(self, ids: list[int]) -> list[int]:
        """The pool's images mirrored to a candidate in shadow since its shadow began that it answers
        otherwise than the champion (the product's sampler hears its shadow events)."""
        if not self.sampler.dispute_share:  # off: no candidate's answers to compute
            return []
        if self.stopgap is not None and self.stopgap_passed is None:  # a stopgap mirrors everything
            version, since, share = self.stopgap, self.stopgap_since, 1.0
        elif self.rollout is not None and self.rollout.run.candidate is not None and not self.canary_share():
            version, since, share = (
                self.rollout.run.candidate,
                self.rollout.started_at,
                self.plan.shadow_share,
            )
        else:
            return []
        mine = [i for i in ids if self.pool[i][3] >= since and _hashed_in(self.pool[i][0], share)]
        said = self.scores.of(version, [self.pool[i][0] for i in mine])
        return [i for i, out in zip(mine, said) if out[0].argmax() != self.pool[i][1].argmax()]

    def _rest(self, ids: list[int], k: int) -> list[int]:
        alarm = self.alarm_since()
        if alarm is None:
            return self._choose(ids, k, None)
        is_after, k_after, weights = alarm_split(
            np.array([self.pool[i][3] for i in ids]),
            np.array([int(self.pool[i][1].argmax()) for i in ids]),
            alarm,
            k=k,
            share=self.sampler.alarm_share,
            classes=len(self.world.classes),
        )
        first = self._choose([i for i, a in zip(ids, is_after) if a], k_after, weights)
        taken = set(first)
        return first + self._choose([i for i in ids if i not in taken], k - len(first), None)

    def _choose(
        self, ids: list[int], k: int, weights: list[float] | None, *, fair: bool = False
    ) -> list[int]:
        """The sampler's selection of ``k`` of ``ids`` (``fair``: at random, no class quota)."""
        if k <= 0 or not ids:
            return []
        assert self.index is not None
        x = self.index.prepare(np.stack([self.pool[i][2] for i in ids]))
        sel = select_batch(
            Pool(np.stack([self.pool[i][1] for i in ids]), x),
            k,
            Context(covered=self.index, seed=len(self.correct)),
            "random" if fair else self.sampler.strategy,
            hashes=[self.pool[i][0] for i in ids],
            covered_hashes=frozenset(self.covered),
            near_radius=self.sampler.near_radius,
            class_quota=0.0 if fair else self.sampler.class_quota,
            class_weights=weights,
        )
        chosen = [ids[j] for j in sel.indices.tolist()]
        self.index.add(x[sel.indices], [str(i) for i in chosen])
        return chosen

    # -- decisions, runs, rollouts
    def _new_labels(self) -> list[Label]:
        """The labels the champion's snapshot does not name (trained on or held out)."""
        known = {e.image_sha256 for e in (*self.champion.snapshot.train, *self.champion.snapshot.holdout)}
        return [lb for lb in self.labels if lb.key not in known]

    def evidence(self) -> Evidence:
        new = self._new_labels()
        alarm, began = self.alarm_since(), self.alarm_began()
        hits = [ok for at, ok in self.user_hits.get(self.champion.name, []) if at <= self.now]
        return Evidence(
            now=self.now,
            new_labels=len(new),
            champion=self.champion.name,
            alarm_since=alarm,
            labels_after_alarm=sum(lb.served_at >= began for lb in new) if began is not None else 0,
            accuracy_drop_points=100 * (self.champion.holdout_accuracy - float(np.mean(hits)))
            if hits
            else None,
            user_labels=len(hits),
            holdout_accuracy=self.champion.holdout_accuracy,
            training=self.run is not None,
            rollout_live=self.rollout is not None,
            last_run_at=self.last_run_at,
            champion_since=self.champion.created_at,
            world_since=self.champion.world_since,
            world_labels=self.champion.world_labels,
            world_new_labels=sum(lb.served_at >= self.champion.world_since for lb in new)
            if self.champion.world_since is not None
            else 0,
        )

    def _decide(self) -> None:
        if self.name == "loop_bn" and not self.calm:
            self._stopgap()
        if self.name == "static" or self.run is not None or self.rollout is not None:
            return
        rule: str | None = None
        cooled = self.last_run_at is None or self.now - self.last_run_at >= self.policy.cooldown_s
        if self.name.startswith("loop"):
            d = decide(self.evidence(), self.policy)
            rule = d.rule if d.action == "train" else None
        elif self.name == "drift_random":
            rule = "alarm" if self.alarm_since() is not None and cooled else None
        elif self.name == "periodic_random":
            since = self.last_run_at if self.last_run_at is not None else T0
            rule = "period" if self.now - since >= self.args.period_h * 3600 else None
        if rule is None:
            return
        self.marks.decisions[rule] = self.marks.decisions.get(rule, 0) + 1
        if self.calm:  # the calm stream counts decisions; nothing trains
            self.last_run_at = self.now
            return
        self._train(rule)

    def _train(self, rule: str) -> None:
        """Fine-tune the champion on the store's labels now; the candidate is ready after the run's
        wall time on the simulated clock (the stream goes on meanwhile)."""
        snap = Snapshot(
            train=(
                *self.champion.snapshot.train,
                *(Example(lb.key, lb.label) for lb in self.labels if not holdout_side(lb.key)),
            ),
            holdout=(
                *self.champion.snapshot.holdout,
                *(Example(lb.key, lb.label) for lb in self.labels if holdout_side(lb.key)),
            ),
        )
        snap = Snapshot(tuple(dict.fromkeys(snap.train)), tuple(dict.fromkeys(snap.holdout)))
        wall = time.perf_counter()
        try:
            data = continual_set(snap, self.champion.snapshot, self.cfg)
        except InvalidInput:
            self.last_run_at = self.now
            return
        self.versions += 1
        name = f"{self.name}-{self.versions}"
        mix = Counter(lb.label for lb in self._new_labels() if not holdout_side(lb.key))
        log.info(
            "%s: %s run %s at %.2f h on %d new and %d replayed labels (new: %s)",
            self.name,
            rule,
            name,
            (self.now - T0) / 3600,
            data.new,
            data.replayed,
            ", ".join(f"{c} {n}" for c, n in sorted(mix.items())),
        )
        world = self._new_world()
        cand = trained(
            name,
            copy.deepcopy(self.champion.model),
            snap,
            data.train,
            data.val,
            data.calibration,
            self.cfg,
            self.world,
            self.scores,
            self.now,
            new_world=world,
        )
        held_out = [e.image_sha256 for e in snap.holdout]
        mine, theirs = self._right(cand, held_out), self._right(self.champion, held_out)
        parent = float(theirs.mean())
        pairs = (int((mine & ~theirs).sum()), int((theirs & ~mine).sum()))
        log.info(
            "%s: %s watches %d reference rows (%d held-out labels of the new world; %d of its labels)",
            self.name,
            name,
            len(cand.reference.labels),
            len(world.held_out),
            cand.world_labels,
        )
        took = self.args.train_s or (time.perf_counter() - wall) * self.args.time_scale
        self.run = Run(cand, rule, self.now, self.now + took, parent, pairs)
        self.marks.runs.append(self.run)

    def _new_world(self) -> NewWorld:
        """The labels served since the window that raised the oldest input alarm holding began, else
        since the new world the champion was trained for began (training.finetune.new_world)."""
        began = self.alarm_began(INPUT_MONITORS)
        since = began if began is not None else self.champion.world_since
        if since is None:
            return NewWorld()
        fresh = [lb.key for lb in self.labels if lb.served_at >= since]
        return NewWorld(
            since, held_out=frozenset(k for k in fresh if holdout_side(k)), labeled=frozenset(fresh)
        )

    def _input_alarm(self) -> bool:
        """An image or embedding alarm holds on the champion (a prediction alarm alone may be the
        class mix, where the old statistics were right)."""
        return bool(set(INPUT_MONITORS) & set(self.raised.get(self.champion.name, {})))

    def _stopgap_share(self) -> float:
        """The share of the champion's traffic its stopgap answers: none in shadow, the plan's canary
        step for ``step_s`` once its shadow passed, then all."""
        if self.stopgap is None or self.stopgap_passed is None:
            return 0.0
        return 1.0 if self.now - self.stopgap_passed >= self.args.step_s else self.stopgap_plan.steps[0]

    def _stopgap_answers(self, key: str) -> bool:
        """Whether the stopgap answers ``key`` (by the image's hash: the draws of the arms stay aligned)."""
        return _hashed_in(key, self._stopgap_share())

    def _right(self, v: Version, keys: list[str]) -> np.ndarray:
        return np.array(
            [int(p.argmax()) == self.world.label[k] for k, (p, _, _) in zip(keys, self.scores.of(v, keys))]
        )

    def _stopgap(self) -> None:
        """loop_bn: once per champion, when an input alarm holds, recalibrate its batch norm on the
        latest traffic; it goes through the product's stopgap plan (rollout.plan.STOPGAP_PLAN): in
        shadow for ``step_s`` and until ``min_labels`` fresh labeled pairs say whether it won (the
        product's shadow gate, ``rollout.gates.shadow.not_won``), then a canary step, then it
        answers all the champion's traffic."""
        if self.stopgap is None:
            if self.stopgap_tried == self.champion.name or not self._input_alarm():
                return
            self.stopgap_tried = self.champion.name
            keys = list(self.recent)[-self.args.bn_images :]
            model = recalibrated(self.champion.model, [self.world.images[k] for k in keys])
            c = self.champion
            v = Version(f"{c.name}-bn", model, c.snapshot, c.reference, c.holdout_accuracy, self.now)
            v.test_clean = self.scores.accuracy(v, self.world.test_clean)
            v.test_shifted = self.scores.accuracy(v, self.world.test_shifted)
            self.stopgap, self.stopgap_since = v, self.now
            self.marks.stopgaps.append(
                {
                    "at_h": round((self.now - T0) / 3600, 2),
                    "images": len(keys),
                    "test_shifted": round(v.test_shifted, 4),
                    "champion_test_shifted": round(c.test_shifted, 4),
                }
            )
            log.info(
                "%s: stopgap %s in shadow (shifted test %.3f against %.3f)",
                self.name,
                v.name,
                v.test_shifted,
                c.test_shifted,
            )
            return
        if self.stopgap_passed is not None:
            return
        fresh = [lb.key for lb in self.labels if lb.served_at >= self.stopgap_since]
        plan = self.stopgap_plan
        if len(fresh) < plan.min_labels or self.now - self.stopgap_since < self.args.step_s:
            return
        mine_right, theirs_right = self._right(self.stopgap, fresh), self._right(self.champion, fresh)
        mine, theirs = float(mine_right.mean()), float(theirs_right.mean())
        only_mine = int((mine_right & ~theirs_right).sum())
        only_theirs = int((theirs_right & ~mine_right).sum())
        wins = only_mine - only_theirs
        self.marks.stopgaps[-1] |= {
            "shadow_labels": len(fresh),
            "shadow_accuracy": round(mine, 4),
            "champion_shadow_accuracy": round(theirs, 4),
            "wins": wins,
        }
        if not_won(only_mine, only_theirs, plan) is None:
            self.stopgap_passed = self.now
            self.marks.stopgaps[-1]["canary_at_h"] = round((self.now - T0) / 3600, 2)
            self.marks.stopgaps[-1]["served_at_h"] = round((self.now + self.args.step_s - T0) / 3600, 2)
            log.info(
                "%s: stopgap serves (%.3f against %.3f on %d fresh labels)",
                self.name,
                mine,
                theirs,
                len(fresh),
            )
        else:
            log.info(
                "%s: stopgap refused (%.3f against %.3f on %d fresh labels)",
                self.name,
                mine,
                theirs,
                len(fresh),
            )
            self.scores.forget(self.stopgap)
            self.stopgap = None

    def canary_share(self) -> float:
        """The share of traffic the candidate in rollout answers now (0 in shadow)."""
        assert self.rollout is not None
        step = int((self.now - self.rollout.started_at) // self.args.step_s)  # 0: shadow
        return 0.0 if step == 0 else self.plan.steps[min(step, len(self.plan.steps)) - 1]

    def _progress(self) -> None:
        """A run that is done enters the rollout (offline gate first); a rollout that has gone
        through shadow and every canary step promotes its candidate."""
        if self.run is not None and self.now >= self.run.ready_at:
            run, self.run = self.run, None
            self.last_run_at = run.ready_at
            assert run.candidate is not None
            verdict = held_out_verdict(  # the product's offline gate, as `rollout start` calls it
                run.candidate.holdout_accuracy,
                run.parent_accuracy,
                tolerance=self.plan.offline_tolerance,
                alpha=self.plan.alpha,
                pairs=run.pairs,
            )
            if verdict.passed:
                self.rollout = Rollout(run, self.now)
                if verdict.p_value is not None:
                    log.info("%s: %s starts: %s", self.name, run.candidate.name, verdict.reason)
            else:
                log.info(
                    "%s: %s refused by the offline gate: %s", self.name, run.candidate.name, verdict.reason
                )
                self.marks.rejected += 1
                self.scores.forget(run.candidate)
        if self.rollout is not None and self.now - self.rollout.started_at >= self.args.step_s * (
            1 + len(self.plan.steps)
        ):
            run, self.rollout = self.rollout.run, None
            assert run.candidate is not None
            old, self.champion = self.champion, run.candidate
            if old.name != "1":
                self.scores.forget(old)
            self.marks.promotions.append((self.now, run))
            log.info(
                "%s: %s promoted at %.2f h (clean test %.3f, shifted test %.3f)",
                self.name,
                run.candidate.name,
                (self.now - T0) / 3600,
                run.candidate.test_clean,
                run.candidate.test_shifted,
            )
            self._switch(run.candidate)

    def close_window(self, i: int) -> None:
        w = self.args.window
        if (i + 1) % w:
            return
        serving = self.stopgap if self.stopgap is not None and self._stopgap_share() >= 1.0 else self.champion
        self.windows.append(
            {
                "end": self.now,
                "online": float(np.mean(self.correct[-w:])),
                "test_shifted": serving.test_shifted,
                "test_clean": serving.test_clean,
                "reviewed": sum(lb.reviewed for lb in self.labels),
            }
        )


# -- the figures ---------------------------------------------------------------------------------


def unfinished(arm: Arm) -> dict[str, Any] | None:
    """The version the stream ended before it served alone: its run still training, or its rollout
    in shadow or a canary step (with the share it answered); None when there is none."""
    if arm.rollout is not None:
        run, share = arm.rollout.run, arm.canary_share()
        state = "canary" if share else "shadow"
    elif arm.run is not None:
        run, share, state = arm.run, 0.0, "training"
    else:
        return None
    if run.candidate is None:
        return None
    return {
        "version": run.candidate.name,
        "rule": run.rule,
        "state": state,
        "share": share,
        "test_clean": round(run.candidate.test_clean, 4),
        "test_shifted": round(run.candidate.test_shifted, 4),
    }


def deficit_area(
    windows: list[dict[str, float]], shift_t: float, level: float, hours_per_window: float
) -> float:
    """Accuracy points under ``level`` summed over the windows that end after the shift, times their hours."""
    return sum(max(0.0, level - w["online"]) * 100 * hours_per_window for w in windows if w["end"] > shift_t)


def recovered_at(
    windows: list[dict[str, float]], shift_t: float, level: float, *, points: float = 2.0, run: int = 3
) -> int | None:
    """The first window after the shift from which the champion's shifted-test accuracy is within
    ``points`` of ``level`` for ``run`` windows in a row (None: never)."""
    after = [j for j, w in enumerate(windows) if w["end"] > shift_t]
    for a in range(len(after) - run + 1):
        if all(windows[after[a + d]]["test_shifted"] >= level - points / 100 for d in range(run)):
            return after[a]
    return None


def recovery(arm: Arm, shift_t: float, level: float) -> dict[str, Any]:
    """Labels and time to recover, the time split into detection, waiting, training and rollout."""
    j = recovered_at(arm.windows, shift_t, level)
    before = [w for w in arm.windows if w["end"] <= shift_t]
    reviewed0 = before[-1]["reviewed"] if before else 0
    if j is None:
        return {"labels_to_recover": None, "time_to_recover_s": None}
    w = arm.windows[j]
    alarms = [a for a in arm.marks.alarms if a >= shift_t]
    detected = alarms[0] if alarms else None
    out: dict[str, Any] = {
        "labels_to_recover": int(w["reviewed"] - reviewed0),
        "time_to_recover_s": round(w["end"] - shift_t),
    }
    runs = [r for at, r in arm.marks.promotions if at <= w["end"]]
    if not runs:  # the first champion was never far off
        return out | {"time_split_s": None}
    run = runs[-1]
    promoted = next(at for at, r in arm.marks.promotions if r is run)
    start = detected if detected is not None and detected <= run.started_at else shift_t
    out["time_split_s"] = {
        "detection": round(detected - shift_t) if detected is not None else None,
        "waiting_for_labels": round(max(0.0, run.started_at - start)),
        "training": round(run.ready_at - run.started_at),
        "rollout": round(promoted - run.ready_at),
        "windows_to_confirm": round(w["end"] - promoted),
    }
    return out


def chart(arms: dict[str, Arm], shift_t: float, path: Path) -> Path:
    """Online accuracy per arm over the stream's hours, with the shift, alarms, runs and promotions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
    hours = lambda t: (t - T0) / 3600  # noqa: E731
    for n, (name, arm) in enumerate(arms.items()):
        colour = f"C{n}"
        xs = [hours(w["end"]) for w in arm.windows]
        ax.plot(xs, [w["online"] for w in arm.windows], color=colour, label=f"{name} (online)")
        ax.plot(xs, [w["test_shifted"] for w in arm.windows], color=colour, ls=":", lw=1)
        y = 1.005 + 0.012 * n
        ax.scatter(
            [hours(a) for a in arm.marks.alarms], [y] * len(arm.marks.alarms), marker="v", color=colour, s=14
        )
        ax.scatter(
            [hours(r.started_at) for r in arm.marks.runs],
            [y] * len(arm.marks.runs),
            marker="x",
            color=colour,
            s=24,
        )
        ax.scatter(
            [hours(at) for at, _ in arm.marks.promotions],
            [y] * len(arm.marks.promotions),
            marker="o",
            color=colour,
            s=24,
        )
    ax.axvline(hours(shift_t), color="k", ls="--", lw=1)
    ax.text(hours(shift_t), 0.02, " shift", transform=ax.get_xaxis_transform())
    ax.set(
        xlabel="stream hours",
        ylabel="accuracy",
        title="online accuracy (solid) and the champion on shifted test images (dotted); "
        "v alarm, x run, o promotion",
    )
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# -- the benchmark -----------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument(
        "--quick", action="store_true", help="A smaller stream and shorter training (under 15 min)."
    )
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--shift", choices=("camera", "ramp", "mix"), default="camera")
    p.add_argument("--shift-at", type=float, default=0.3)
    p.add_argument("--bootstrap", type=int, default=40, help="Seed labels a class.")
    p.add_argument("--test", type=int, default=60, help="Held-out test images a class.")
    p.add_argument("--events", type=int, default=0, help="Stream length (0: every remaining image once).")
    p.add_argument("--events-per-hour", type=float, default=200.0)
    p.add_argument("--budget", type=float, default=60.0, help="Reviewed labels an hour.")
    p.add_argument(
        "--dispute-share",
        type=float,
        default=SamplerConfig.dispute_share,
        help="The loop's review batch share for images a candidate in shadow answers otherwise (0: off).",
    )
    p.add_argument("--review-delay-s", type=float, default=300.0)
    p.add_argument("--feedback-share", type=float, default=0.05)
    p.add_argument("--feedback-delay-s", type=float, default=1800.0)
    p.add_argument("--period-h", type=float, default=1.5, help="periodic_random's period.")
    p.add_argument("--step-s", type=float, default=600.0, help="Time in shadow and in each canary step.")
    p.add_argument(
        "--time-scale", type=float, default=1.0, help="Simulated seconds per wall second of training."
    )
    p.add_argument(
        "--train-s", type=float, default=0.0, help="Simulated seconds every run takes (0: its wall time)."
    )
    p.add_argument("--decide-every", type=int, default=5, help="Events between two looks of the policy.")
    p.add_argument("--window", type=int, default=50, help="Events in an accuracy window.")
    p.add_argument("--calm-events", type=int, default=5000)
    p.add_argument("--bn-images", type=int, default=128, help="loop_bn: recent images a recalibration sees.")
    p.add_argument("--epochs", type=int, default=0, help="Continual runs' epochs (0: the recipe's).")
    p.add_argument(
        "--boot-epochs", type=int, default=0, help="The first champion's epochs (0: the recipe's)."
    )
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--curve",
        default="",
        metavar="K,K,...",
        help="Also fine-tune the first champion offline on the first K labeled images of the new world, "
        "for each K: the labels recovery needs whatever the loop does (about a minute each).",
    )
    p.add_argument(
        "--policy-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="A retraining-policy key for the loop arms, after the benchmark's own (repeatable).",
    )
    p.add_argument("--out", type=Path, default=Path("closed_loop.png"))
    args = p.parse_args()
    if args.quick:
        args.bootstrap, args.test, args.events = (
            min(args.bootstrap, 30),
            min(args.test, 30),
            args.events or 900,
        )
        args.epochs, args.boot_epochs, args.window = args.epochs or 4, args.boot_epochs or 8, 40
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for noisy in ("monitoring", "training", "nicheloop"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    overrides = [*POLICY_OVERRIDES, *args.policy_set]
    policy = load_policy(ROOT / "recipes" / "policies" / "default.yaml", overrides)
    plan = RolloutPlan()
    boot_cfg = load_recipe(
        ROOT / "recipes" / "few-labels.yaml",
        values={"epochs": args.boot_epochs} if args.boot_epochs else None,
    )
    cfg = load_recipe(
        ROOT / "recipes" / "continual.yaml", values={"epochs": args.epochs} if args.epochs else None
    )
    with tempfile.TemporaryDirectory() as tmp:
        world = build_world(read_image_folder(args.data), BlobStore(tmp), args)
        scores = Scores(world)
        log.info(
            "world: %d seed labels, %d test images (x2), %d stream events (shift at %d), %.0fs",
            len(world.bootstrap),
            len(world.test_clean),
            len(world.stream),
            world.shift_at,
            time.perf_counter() - t0,
        )
        first = bootstrap_champion(world, boot_cfg, scores, args)
        log.info(
            "champion 1: clean test %.3f, shifted test %.3f (%.0fs)",
            first.test_clean,
            first.test_shifted,
            time.perf_counter() - t0,
        )
        curve, best = learning_curve(world, first, cfg, scores, [int(k) for k in args.curve.split(",") if k])
        floor = round(oracle_deficit(world, scores, first, best, args), 2) if best is not None else None
        arms = {
            name: Arm(name, world, scores, first, cfg, policy, plan, args).play()
            for name in args.arms.split(",")
            if name
        }
        calm = (
            Arm("loop", world, scores, first, cfg, policy, plan, args, calm=True).play()
            if "loop" in arms
            else None
        )
        shift_t = T0 + world.shift_at * 3600.0 / args.events_per_hour
        level = first.test_clean
        hours_per_window = args.window / args.events_per_hour
        out: dict[str, Any] = {}
        for name, arm in arms.items():
            pre = float(np.mean(arm.correct[: world.shift_at]))
            tail = arm.correct[-max(1, len(arm.correct) // 5) :]
            out[name] = {
                "deficit_area": round(deficit_area(arm.windows, shift_t, pre, hours_per_window), 2),
                **recovery(arm, shift_t, level),
                "forgetting_points": round(100 * (first.test_clean - arm.champion.test_clean), 2),
                "retrains": len(arm.marks.runs),
                "promotions": len(arm.marks.promotions),
                "refused_offline": arm.marks.rejected,
                "alarms": len(arm.marks.alarms),
                "reviewed_labels": sum(lb.reviewed for lb in arm.labels),
                "reviewed_disputes": arm.marks.disputed,
                "pre_shift_online_accuracy": round(pre, 4),
                "last_fifth_online_accuracy": round(float(np.mean(tail)), 4),
                "final_champion_test": {
                    "clean": round(arm.champion.test_clean, 4),
                    "shifted": round(arm.champion.test_shifted, 4),
                },
                "decisions": arm.marks.decisions,
                "unfinished": unfinished(arm),
            } | ({"stopgaps": arm.marks.stopgaps} if name == "loop_bn" else {})
        if calm is not None:
            out["loop"]["false_triggers"] = sum(
                n for rule, n in calm.marks.decisions.items() if rule in ("drift", "accuracy")
            )
            out["loop"]["calm_alarms"] = len(calm.marks.alarms)
            out["loop"]["calm_decisions"] = calm.marks.decisions
        if arms:
            chart(arms, shift_t, args.out)
    goals = goals_met(out)
    print(
        json.dumps(
            {
                "benchmark": "closed_loop",
                "data": str(args.data),
                "quick": args.quick,
                "shift": args.shift,
                "events": len(world.stream),
                "calm_events": len(world.calm),
                "events_per_hour": args.events_per_hour,
                "review_budget_per_hour": args.budget,
                "dispute_share": args.dispute_share,
                "policy_overrides": overrides,
                "first_champion_test": {
                    "clean": round(first.test_clean, 4),
                    "shifted": round(first.test_shifted, 4),
                },
                "arms": out,
                "goals_for": product_arm(out),
                "goals_met": goals,
                **(
                    {
                        "offline_curve": curve,
                        "offline_labels_to_recover": labels_needed(curve, first.test_clean),
                        "oracle_deficit_area": floor,
                        "review_budget_after_shift": round(
                            args.budget * (len(world.stream) - world.shift_at) / args.events_per_hour
                        ),
                    }
                    if curve
                    else {}
                ),
                "chart": str(args.out) if arms else None,
                "scored_images": scores.images,
                "wall_s": round(time.perf_counter() - t0, 1),
            }
        )
    )


def product_arm(out: dict[str, Any]) -> str:
    """The arm that runs as the product does by default: with the stopgap (``stopgap_images`` is on
    in recipes/policies/default.yaml) where it ran, else the loop."""
    return "loop_bn" if "loop_bn" in out else "loop"


def goals_met(out: dict[str, Any]) -> dict[str, bool | None]:
    """The issue's goals for the product's arm (:func:`product_arm`), each None where an arm it
    compares is missing or never recovered. False triggers are counted on the calm stream, which
    runs the loop's policy (nothing trains there, so the stopgap makes no difference)."""
    me = product_arm(out)

    def ratio(a: str, b: str, key: str, bound: float) -> bool | None:
        if a not in out or b not in out or out[a].get(key) is None or out[b].get(key) is None:
            return None
        return out[a][key] <= bound * out[b][key]

    loop, mine = out.get("loop", {}), out.get(me, {})
    return {
        "labels_to_recover_le_half_drift_random": ratio(me, "drift_random", "labels_to_recover", 0.5),
        "deficit_le_0_6_periodic_random": ratio(me, "periodic_random", "deficit_area", 0.6),
        "deficit_le_0_3_static": ratio(me, "static", "deficit_area", 0.3),
        "no_false_triggers": loop.get("false_triggers") == 0 if "false_triggers" in loop else None,
        "forgetting_le_2": mine["forgetting_points"] <= 2 if mine else None,
        "recovered_within_2_points": mine.get("labels_to_recover") is not None if mine else None,
        "stopgap_lowers_deficit": ratio("loop_bn", "loop", "deficit_area", 1.0),
    }


if __name__ == "__main__":
    main()
