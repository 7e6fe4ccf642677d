"""Fine-tuning on Ray Train (TorchTrainer): DDP over ``num_workers``, GPU when the cluster has one,
a checkpoint per epoch, and resumption from it when a worker dies."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    CheckpointUploadMode,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    UserCallback,
)
from ray.train.torch import TorchTrainer, get_device, prepare_model
from torch.utils.serialization import config as serialization_config

from nicheloop.blobs import BlobStore
from nicheloop.contracts import PROGRESS_FILE
from nicheloop.model import NicheModel
from training.config import TrainConfig
from training.data import Example
from training.engine import Job, Progress, checkpoint_state, local_job, make_optimizer, restore, run_epoch

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t)
    return t


def _rank0_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm statistics), which are what it checkpoints."""
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


# Called on every worker at the start of each epoch with (epoch, run directory): a seam for fault
# injection (the resumption tests kill a worker from it); it must be picklable.
EpochHook = Callable[[int, Path], None]


def yield_ray_task_loop() -> None:
    """Lower the priority of this worker's main thread, Ray's task loop, to nice 19; call it from the
    training function, which Ray Train runs in a thread of its own.

    While the function runs, that loop has nothing to execute, yet it wakes every 10 ms to check for
    signals, taking the GIL, and where every core trains each wake-up preempts a training thread
    (docs/training.md has the measurements). Only Linux renices one thread (elsewhere this does
    nothing); raising niceness needs no privilege.
    """
    main = threading.main_thread()
    if sys.platform != "linux" or threading.current_thread() is main or main.native_id is None:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, main.native_id, 19)
    except OSError as exc:  # the thread is gone, or a sandbox forbids it: training goes on as it was
        log.warning("could not lower the priority of Ray's task loop thread: %s", exc)


def write_checkpoint(
    state: dict[str, Any], run_dir: Path, epoch: int, filename: str = STATE_FILE
) -> Checkpoint:
    """Write one epoch's state straight into the run's directory, where Ray Train keeps its checkpoints,
    and return it for a ``NO_UPLOAD`` report: the state is written once, not staged and then copied.

    The file is renamed into place only once complete, so a worker that dies while writing leaves no
    readable half state. torch.load never reads the zip's CRC-32, so it is not computed.
    """
    directory = run_dir / f"checkpoint_epoch_{epoch:04d}"
    directory.mkdir(parents=True, exist_ok=True)
    part = directory / f"{filename}.part"
    with serialization_config.patch({"save.compute_crc32": False}):  # type: ignore[attr-defined]  # untyped
        torch.save(state, part)
    os.replace(part, directory / filename)
    return Checkpoint.from_directory(str(directory))


def report_epoch(
    metrics: dict[str, Any],
    state: dict[str, Any] | None,
    run_dir: Path,
    epoch: int,
    filename: str = STATE_FILE,
) -> None:
    """Report an epoch to Ray Train, with this rank's checkpoint ``state`` (None on ranks that keep none),
    adding ``checkpoint_s`` (the time the write took) to ``metrics``.

    The state is on disk before the report returns. Ray Train takes the report on its next poll of
    the worker (every 2 s): a worker that dies after that resumes from this epoch, one that dies
    sooner loses the report with it and resumes from the epoch before.
    """
    started = time.perf_counter()
    checkpoint = write_checkpoint(state, run_dir, epoch, filename) if state is not None else None
    ray.train.report(
        metrics | {"checkpoint_s": time.perf_counter() - started},
        checkpoint=checkpoint,
        checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD,
    )


# Ray Train's worker processes run like a plain training process would (docs/training.md, "Ray Train
# overhead"): at nice 0, not the 15 Ray gives its workers, and with one glibc arena and no mmap or
# trim of blocks below 256 MiB / 1 GiB, since the training function runs in a thread of its own.
TRAIN_WORKER_ENV = {
    "RAY_worker_niceness": "0",
    "GLIBC_TUNABLES": "glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=268435456"
    ":glibc.malloc.trim_threshold=1073741824",
}


def run_config(storage_path: Path, run_name: str, max_failures: int) -> RunConfig:
    """How every Ray Train run here keeps its state: in ``storage_path/run_name`` (:func:`run_directory`),
    the last two epochs' checkpoints (:func:`write_checkpoint`), a progress line per epoch; its workers
    run in :data:`TRAIN_WORKER_ENV`."""
    # Ray Train V2's RunConfig takes worker_runtime_env and UserCallbacks; its hints are V1's
    return RunConfig(  # type: ignore[call-arg]
        name=run_name,
        storage_path=str(storage_path.resolve()),
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        worker_runtime_env={"env_vars": TRAIN_WORKER_ENV},
        callbacks=[ProgressLog(run_directory(storage_path, run_name) / PROGRESS_FILE)],  # type: ignore[list-item]
    )


def run_directory(storage_path: Path, run_name: str) -> Path:
    """Ray Train's directory for a run configured by :func:`run_config`."""
    return storage_path.resolve() / run_name


def _job(config: dict[str, Any], cfg: TrainConfig) -> Job:
    """This rank's :class:`Job`: the local one, with the network wrapped for DDP when world > 1."""
    ctx = ray.train.get_context()
    model: NicheModel = ray.get(config["model_ref"])
    job = local_job(model, BlobStore(config["blob_root"]), config["train"], config["val"], cfg, get_device())
    world = ctx.get_world_size()
    return dataclasses.replace(
        job,
        net=prepare_model(job.raw),
        rank=ctx.get_world_rank(),
        world=world,
        all_reduce=_all_reduce if world > 1 else job.all_reduce,
        share_buffers=_rank0_buffers if world > 1 else job.share_buffers,
    )


def _train_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: resume if a checkpoint exists, then one report (and a
    checkpoint) per epoch."""
    yield_ray_task_loop()
    cfg = TrainConfig(**config["cfg"])
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(config["threads"])
    job = _job(config, cfg)
    best: dict[str, Any] = {}
    opt, prog = make_optimizer(job.raw, cfg), Progress()
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            prog, best = restore(
                job, opt, torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
            )
    first = prog.next_epoch
    while prog.next_epoch < cfg.epochs and not prog.stopped_early:
        if config.get("epoch_hook") is not None:
            config["epoch_hook"](prog.next_epoch, Path(config["run_dir"]))
        started = time.perf_counter()
        metrics: dict[str, Any] = run_epoch(job, opt, cfg, prog, best)
        metrics |= {
            "epoch_s": time.perf_counter() - started,
            "resumed_from_epoch": float(first),
            "best_epoch": float(prog.best_epoch),
            "stopped_early": float(prog.stopped_early),
            "device": str(job.device),
            "world": float(job.world),
            "niceness": float(os.nice(0)),
            "reported_at": time.time(),
        }
        report_epoch(
            metrics,
            checkpoint_state(job, opt, prog, best) if job.rank == 0 else None,
            Path(config["run_dir"]),
            prog.next_epoch - 1,
        )


class ProgressLog(UserCallback):
    """Makes a run visible while it trains: one JSON line per epoch in ``path`` and in the log."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps(metrics[0], default=str) + "\n")
            log.info("epoch %s: %s", metrics[0].get("epoch"), metrics[0])


@dataclass(frozen=True)
class RayRun:
    """One Ray Train run: where it keeps its state, how many workers, whether on GPUs."""

    storage_path: Path
    name: str
    num_workers: int
    use_gpu: bool
    max_failures: int
    state_file: str = STATE_FILE  # the name the worker writes its checkpoint state under

    def final_state(self, worker: Callable[[dict[str, Any]], None], config: dict[str, Any]) -> dict[str, Any]:
        """Run ``worker`` on every worker with ``config``; return the state of its last checkpoint.

        Raises:
            RuntimeError: the run ended without a checkpoint (its logs are under ``storage_path``).
        """
        trainer = TorchTrainer(
            worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(
                num_workers=self.num_workers,
                use_gpu=self.use_gpu,
                resources_per_worker={"GPU": 1} if self.use_gpu else {"CPU": 1},
            ),
            run_config=run_config(self.storage_path, self.name, self.max_failures),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(
                f"Ray Train run {self.name} produced no checkpoint; see its logs under {self.storage_path}"
            )
        with result.checkpoint.as_directory() as ckpt:
            state: dict[str, Any] = torch.load(
                Path(ckpt) / self.state_file, map_location="cpu", weights_only=True
            )
        return state


def use_gpu(requested: bool | None) -> bool:
    """``requested`` if set, else whether the cluster has a GPU."""
    return requested if requested is not None else bool(ray.cluster_resources().get("GPU", 0))


def fit(
    model: NicheModel,
    train: tuple[Example, ...] | list[Example],
    val: tuple[Example, ...] | list[Example],
    blob_root: str,
    cfg: TrainConfig,
    storage_path: Path,
    run_name: str,
    *,
    epoch_hook: EpochHook | None = None,
) -> tuple[NicheModel, list[dict[str, Any]]]:
    """Fine-tune ``model`` in place with Ray Train; returns it (best epoch's weights) and per-epoch metrics.

    Progress is appended to ``storage_path/run_name/progress.jsonl`` while it runs. ``epoch_hook``
    runs on every worker before each epoch (:data:`EpochHook`).
    ``ray.init`` must have been called (entry points connect to the cluster).

    Raises:
        RuntimeError: if the run ends without a checkpoint (its logs are under ``storage_path``).
    """
    gpu = use_gpu(cfg.use_gpu)
    threads = cfg.threads_per_worker or max(1, (os.cpu_count() or 1) // cfg.num_workers)
    progress = run_directory(storage_path, run_name) / PROGRESS_FILE
    log.info(
        "training %s on %d examples (validation %d, gpu=%s); progress in %s",
        run_name,
        len(train),
        len(val),
        gpu,
        progress,
    )
    config = {
        "cfg": cfg.model_dump(),
        "model_ref": ray.put(model),
        "train": list(train),
        "val": list(val),
        "blob_root": blob_root,
        "threads": threads,
        "run_dir": str(progress.parent),
        "epoch_hook": epoch_hook,
    }
    run = RayRun(storage_path, run_name, cfg.num_workers, use_gpu=gpu, max_failures=cfg.max_failures)
    state = run.final_state(_train_worker, config)
    model.net.load_state_dict(state["best"] if state["best"] is not None else state["model"])
    model.net.eval()
    return model, state["progress"]["history"]
