"""Fine-tuning on Ray Train (TorchTrainer): GPU when the cluster has one, CPU otherwise."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, prepare_data_loader, prepare_model
from torch.utils.data import DataLoader

from nicheloop.blobs import BlobStore
from nicheloop.model import NicheModel
from training.config import TrainConfig
from training.data import BlobImageDataset, Example

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


def param_groups(net: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Discriminative learning rates: the new head learns at ``lr_head``, the body at ``lr_backbone``."""
    head = {id(p) for p in net.get_classifier().parameters()}
    body = [p for p in net.parameters() if id(p) not in head and p.requires_grad]
    return [{"params": list(net.get_classifier().parameters()), "lr": cfg.lr_head},
            {"params": body, "lr": cfg.lr_backbone}]


def _train_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: one epoch loop, a report (and checkpoint) per epoch."""
    cfg = TrainConfig(**config["cfg"])
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(config["threads"])
    model: NicheModel = ray.get(config["model_ref"])
    ds = BlobImageDataset(BlobStore(config["blob_root"]), config["examples"], model.class_names,
                          model.transform(training=True))
    loader = prepare_data_loader(DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, num_workers=0))
    net = prepare_model(model.net)
    raw = net.module if hasattr(net, "module") else net
    opt = torch.optim.AdamW(param_groups(raw, cfg), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * max(1, len(loader)))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    for epoch in range(cfg.epochs):
        net.train()
        total, seen = 0.0, 0
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            sched.step()
            total, seen = total + loss.item() * len(y), seen + len(y)
        metrics = {"epoch": epoch, "train_loss": total / max(1, seen)}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if ray.train.get_context().get_world_rank() == 0:
                torch.save(raw.state_dict(), Path(tmp) / STATE_FILE)
                checkpoint = Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)


def fit(model: NicheModel, examples: tuple[Example, ...] | list[Example], blob_root: str,
        cfg: TrainConfig, storage_path: Path, run_name: str) -> tuple[NicheModel, list[dict[str, Any]]]:
    """Fine-tune ``model`` in place on ``examples`` with Ray Train; returns it and per-epoch metrics.

    ``ray.init`` must have been called (entry points connect to the cluster).
    """
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else bool(ray.cluster_resources().get("GPU", 0))
    threads = cfg.threads_per_worker or max(1, (os.cpu_count() or 1) // cfg.num_workers)
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"cfg": cfg.model_dump(), "model_ref": ray.put(model), "examples": list(examples),
                           "blob_root": blob_root, "threads": threads},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"GPU": 1} if use_gpu else {"CPU": 1}),
        run_config=RunConfig(name=run_name, storage_path=str(storage_path.resolve())),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {run_name} produced no checkpoint; see its logs under {storage_path}")
    with result.checkpoint.as_directory() as ckpt:
        state = torch.load(Path(ckpt) / STATE_FILE, map_location="cpu", weights_only=True)
    model.net.load_state_dict(state)
    model.net.eval()
    history = [dict(m) for m in (result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else [])]
    log.info("trained %s for %d epochs on %d examples (gpu=%s)", run_name, cfg.epochs, len(examples), use_gpu)
    return model, history
