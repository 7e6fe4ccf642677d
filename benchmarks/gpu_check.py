"""The GPU path of training, checked end to end: Ray Train with ``use_gpu`` and bfloat16 autocast,
a worker killed mid-run and resumed from its epoch checkpoint, and SimSiam pretraining on Ray
Train whose checkpoint a recipe then starts from. Needs a CUDA device; last line JSON."""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

from nicheloop.blobs import BlobStore
from nicheloop.model import build_model
from nicheloop.synthetic import write_image_folder
from training.calibrate import softmax
from training.config import TrainConfig
from training.data import Example, read_image_folder, split_validation
from training.distributed import PROGRESS_FILE, fit
from training.evaluate import classification_metrics, predict_all
from training.pretrain import PretrainConfig, pretrain


def _die_once(epoch: int, run_dir: Path, *, at: int, marker: Path) -> None:
    """The first time epoch ``at`` starts, the worker dies (Ray Train resumes it from a checkpoint)."""
    if epoch == at and not marker.exists():
        marker.write_text(str(epoch))
        os._exit(1)


def main() -> None:
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return
    ray.init(address="local", log_to_driver=False)
    out: dict = {"gpu": torch.cuda.get_device_name(0), "ray_gpus": ray.cluster_resources().get("GPU", 0)}
    with tempfile.TemporaryDirectory() as tmp:
        root = write_image_folder(Path(tmp) / "data", 96, seed=0, size=128)
        blobs = BlobStore(str(Path(tmp) / "blobs"))
        examples = [Example(blobs.put(d), lbl) for d, lbl in read_image_folder(root)]
        train, val = split_validation(examples, 0.2)
        classes = sorted({e.label for e in examples})
        cfg = TrainConfig(
            epochs=5,
            batch_size=64,
            use_gpu=True,
            loader_workers=4,
            freeze="gradual",
            layer_decay=0.7,
            class_balance="sampler",
            augment=0.5,
        )
        model = build_model("resnet18", classes, 128)
        t = time.perf_counter()
        model, history = fit(
            model,
            train,
            val,
            str(Path(tmp) / "blobs"),
            cfg,
            Path(tmp) / "ray",
            "gpu",
            epoch_hook=functools.partial(_die_once, at=2, marker=Path(tmp) / "killed"),
        )
        reports = [
            json.loads(x) for x in (Path(tmp) / "ray" / "gpu" / PROGRESS_FILE).read_text().splitlines()
        ]
        preds = predict_all(model, blobs, val)
        out |= {
            "fit_s": round(time.perf_counter() - t, 1),
            "worker_killed_at_epoch": 2,
            "worker_was_killed": (Path(tmp) / "killed").exists(),
            "reported_epochs": [int(r["epoch"]) for r in reports],
            "resumed_from_epoch": max(int(r["resumed_from_epoch"]) for r in reports),
            "worker_devices": sorted({r["device"] for r in reports}),
            "amp_bf16": cfg.amp is None,
            "history_epochs": len(history),
            "val_accuracy": round(
                classification_metrics(softmax(preds.logits), preds.y, len(classes))["accuracy"], 4
            ),
        }
        print(json.dumps(out), file=sys.stderr, flush=True)
        t = time.perf_counter()
        ckpt = Path(tmp) / "ssl.pt"
        ssl = pretrain(
            str(Path(tmp) / "blobs"),
            [e.image_sha256 for e in train],
            PretrainConfig(
                backbone="resnet18", image_size=128, epochs=3, batch_size=64, use_gpu=True, loader_workers=4
            ),
            ckpt,
            Path(tmp) / "ray",
        )
        build_model("resnet18", classes, 128, weights=f"file:{ckpt}")
        out |= {
            "pretrain_s": round(time.perf_counter() - t, 1),
            "pretrain_final": ssl,
            "pretrained_checkpoint_loads": True,
        }
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
