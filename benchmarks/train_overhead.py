"""Ray Train overhead: steady-state epoch time on Ray Train over a plain PyTorch loop, in one run.

Same model, data, batch size, torch threads, allocator settings (``training.distributed.TRAIN_WORKER_ENV``:
the benchmark re-runs itself under them) and epoch code (training.engine) on both sides; the
Ray side adds what production pays for: a local Ray instance started as the stack starts its head
(no dashboard), the TorchTrainer worker, a report and a checkpoint per epoch. Epoch time on Ray is
the time between consecutive epoch reports (the checkpoint write is inside it); the first epoch of
each plain loop is warm-up and not counted. Each side runs ``--epochs`` per round, 10 by default as
the shipped recipes run 8 to 30: the first few checkpoints of a run cost more than the rest (fresh
page cache on this VM), and a round as short as 2-3 epochs would measure only those.

The two sides alternate for ``--rounds`` rounds (plain, Ray, plain, Ray, ...), each with a fresh
model, and Ray is shut down between rounds, so a machine whose speed drifts during the run (a
shared VM's does, by 10-20 % over a minute here) slows both sides alike instead of whichever ran
then. Last line: JSON with ``ray_over_plain`` (medians over all rounds; goal <= 1.10) and, for the
whole run including the costlier first checkpoints, ``ray_over_plain_mean``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

from nicheloop.blobs import BlobStore
from nicheloop.model import build_model
from nicheloop.synthetic import write_image_folder
from training.config import TrainConfig
from training.data import Example, read_image_folder
from training.distributed import PROGRESS_FILE, TRAIN_WORKER_ENV, fit, run_directory
from training.engine import Progress, local_job, make_optimizer, run_epoch


def plain_epochs(classes, blobs, train, cfg, args) -> list[float]:
    torch.set_num_threads(args.threads)
    model = build_model(args.backbone, classes, args.image_size)
    job = local_job(model, blobs, train, [], cfg, args.device)
    opt, prog, times = make_optimizer(job.raw, cfg), Progress(), []
    for _ in range(cfg.epochs):
        t = time.perf_counter()
        run_epoch(job, opt, cfg, prog, {})
        times.append(time.perf_counter() - t)
    return times


def ray_epochs(
    classes, blobs_root, train, cfg, args, storage: Path, name: str
) -> dict[str, list[float] | float]:
    """One Ray Train fit: intervals between epoch reports, each epoch's compute and checkpoint write,
    the total."""
    model = build_model(args.backbone, classes, args.image_size)
    t = time.perf_counter()
    fit(model, train, [], blobs_root, cfg, storage, name)
    total = time.perf_counter() - t
    reports = [
        json.loads(line) for line in (run_directory(storage, name) / PROGRESS_FILE).read_text().splitlines()
    ]
    intervals = list(np.diff([r["reported_at"] for r in reports]))
    compute = [r["epoch_s"] for r in reports]
    # what an epoch costs beyond its compute: the previous epoch's checkpoint and report
    return {
        "intervals": intervals,
        "compute": compute[1:],
        "total": total,
        "checkpoint_and_report": [i - c for i, c in zip(intervals, compute[1:])],
        "write": [r["checkpoint_s"] for r in reports],
        "startup": total - sum(intervals) - compute[0],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--images-per-class", type=int, default=128)
    p.add_argument(
        "--epochs",
        type=int,
        default=10,
        help="Epochs per side per round; the first plain epoch of each round is warm-up.",
    )
    p.add_argument("--rounds", type=int, default=3, help="Alternations of the plain loop and Ray Train.")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    allocator = TRAIN_WORKER_ENV["GLIBC_TUNABLES"]
    if os.environ.get("GLIBC_TUNABLES") != allocator:  # the plain loop gets the allocator Ray's workers get
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "GLIBC_TUNABLES": allocator})
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # as the stack's head runs
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch,
        threads_per_worker=args.threads,
        augment=0.5,
        use_gpu=args.device.startswith("cuda"),
    )
    plain: list[list[float]] = []
    on_ray: list[dict[str, list[float] | float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_image_folder(Path(tmp) / "data", args.images_per_class, seed=0, size=args.image_size)
        blobs = BlobStore(str(Path(tmp) / "blobs"))
        train = [Example(blobs.put(data), label) for data, label in read_image_folder(root)]
        classes = sorted({e.label for e in train})
        for round_ in range(args.rounds):
            plain.append(plain_epochs(classes, blobs, train, cfg, args)[1:])
            ray.init(
                address="local",
                num_cpus=max(2, os.cpu_count() or 1),
                include_dashboard=False,
                log_to_driver=False,
            )
            try:
                on_ray.append(
                    ray_epochs(
                        classes,
                        str(Path(tmp) / "blobs"),
                        train,
                        cfg,
                        args,
                        Path(tmp) / "ray",
                        f"overhead-{round_}",
                    )
                )
            finally:
                ray.shutdown()

    def pooled(rows: list, key: str | None = None) -> list[float]:
        """Every round's values (of ``key``, for Ray's rows) in one list."""
        return [x for row in rows for x in (row[key] if key else row)]

    def median(rows: list, key: str | None = None) -> float:
        return float(np.median(pooled(rows, key)))

    plain_s, ray_s = median(plain), median(on_ray, "intervals")
    print(
        json.dumps(
            {
                "backbone": args.backbone,
                "image_size": args.image_size,
                "images": len(train),
                "batch": args.batch,
                "threads": args.threads,
                "device": args.device,
                "epochs": args.epochs,
                "rounds": args.rounds,
                "plain_epoch_s": round(plain_s, 3),
                "ray_epoch_s": round(ray_s, 3),
                "ray_over_plain": round(ray_s / plain_s, 3),
                "ray_over_plain_by_round": [
                    round(median([r["intervals"]]) / median([p]), 3) for p, r in zip(plain, on_ray)
                ],
                "ray_compute_over_plain": round(median(on_ray, "compute") / plain_s, 3),
                "ray_over_plain_mean": round(
                    float(np.mean(pooled(on_ray, "intervals")) / np.mean(pooled(plain))), 3
                ),
                "ray_checkpoint_and_report_s": round(median(on_ray, "checkpoint_and_report"), 3),
                "ray_checkpoint_write_s": round(median(on_ray, "write"), 3),
                "ray_checkpoint_write_max_s": round(max(pooled(on_ray, "write")), 3),
                "ray_startup_s": round(float(np.median([r["startup"] for r in on_ray])), 1),
                "ray_fit_total_s": round(float(np.median([r["total"] for r in on_ray])), 1),
                "goal_met": ray_s / plain_s <= 1.10,
            }
        )
    )


if __name__ == "__main__":
    main()
