"""Ray Train overhead: steady-state epoch time on Ray Train over a plain PyTorch loop, in one run.

Same model, data, batch size, torch threads and epoch code (training.engine) on both sides; the
Ray side adds what production pays for: the TorchTrainer worker, a report and a checkpoint per
epoch. Epoch time on Ray is the time between consecutive epoch reports (the checkpoint write is
inside it); the first epoch of each side is warm-up and not counted. Last line: JSON with
``ray_over_plain`` (goal <= 1.10).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nicheloop.blobs import BlobStore  # noqa: E402
from nicheloop.model import build_model  # noqa: E402
from nicheloop.synthetic import write_image_folder  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import Example, read_image_folder  # noqa: E402
from training.engine import Progress, local_job, make_optimizer, run_epoch  # noqa: E402
from training.loop import PROGRESS_FILE, fit  # noqa: E402


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


def ray_epochs(classes, blobs_root, train, cfg, args, storage: Path) -> tuple[list[float], float]:
    model = build_model(args.backbone, classes, args.image_size)
    t = time.perf_counter()
    fit(model, train, [], blobs_root, cfg, storage, "overhead")
    total = time.perf_counter() - t
    stamps = [json.loads(line)["reported_at"] for line in (storage / "overhead" / PROGRESS_FILE).read_text().splitlines()]
    return list(np.diff(stamps)), total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--images-per-class", type=int, default=128)
    p.add_argument("--epochs", type=int, default=10,
                   help="Epochs per side; the median after the first is compared (a fresh local Ray "
                        "cluster's own processes are still starting during its first few epochs).")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, threads_per_worker=args.threads, augment=0.5,
                      use_gpu=args.device.startswith("cuda"))
    with tempfile.TemporaryDirectory() as tmp:
        root = write_image_folder(Path(tmp) / "data", args.images_per_class, seed=0, size=args.image_size)
        blobs = BlobStore(str(Path(tmp) / "blobs"))
        train = [Example(blobs.put(data), label) for data, label in read_image_folder(root)]
        classes = sorted({e.label for e in train})
        plain = plain_epochs(classes, blobs, train, cfg, args)
        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 1), log_to_driver=False)
        on_ray, total = ray_epochs(classes, str(Path(tmp) / "blobs"), train, cfg, args, Path(tmp) / "ray")
        ray.shutdown()
    plain_s, ray_s = float(np.median(plain[1:])), float(np.median(on_ray))
    print(json.dumps({"backbone": args.backbone, "image_size": args.image_size, "images": len(train),
                      "batch": args.batch, "threads": args.threads, "device": args.device, "epochs": args.epochs,
                      "plain_epoch_s": round(plain_s, 3), "ray_epoch_s": round(ray_s, 3),
                      "ray_over_plain": round(ray_s / plain_s, 3), "ray_fit_total_s": round(total, 1),
                      "ray_startup_s": round(total - sum(on_ray) - ray_s, 1), "goal_met": ray_s / plain_s <= 1.10}))


if __name__ == "__main__":
    main()
