"""The Ray Train worker's pieces outside Ray: checkpoints written once, the task loop reniced."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

CLASSES = ["crazing", "inclusion", "patches", "scratches"]


def test_an_epoch_checkpoint_is_written_once_into_the_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch.utils.serialization import config

    from training import distributed

    state = {
        "model": {"w": torch.arange(12.0).reshape(3, 4)},
        "progress": {"next_epoch": 4},
        "best": None,
        "optimizer": {"state": {0: {"exp_avg": torch.ones(5)}}},
    }
    checkpoint = distributed.write_checkpoint(state, tmp_path / "run", 3)
    directory = tmp_path / "run" / "checkpoint_epoch_0003"
    assert Path(checkpoint.path) == directory  # Ray registers it where it lies: no second copy
    assert sorted(p.name for p in directory.iterdir()) == [distributed.STATE_FILE]
    loaded = torch.load(directory / distributed.STATE_FILE, weights_only=True)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["progress"] == {"next_epoch": 4}
    assert config.save.compute_crc32  # switched off for the checkpoint only

    def dies(obj, path) -> None:  # the worker dies half-way through writing the next epoch
        Path(path).write_bytes(b"PK half a zip")
        raise OSError("killed")

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(OSError):
        distributed.write_checkpoint(state, tmp_path / "run", 4)
    # nothing a resumed worker could read half of
    assert not (tmp_path / "run" / "checkpoint_epoch_0004" / distributed.STATE_FILE).exists()


@pytest.mark.skipif(sys.platform != "linux", reason="only Linux sets a niceness per thread")
def test_the_training_thread_sends_rays_task_loop_to_nice_19_and_keeps_its_own_priority() -> None:
    # in a child process: the niceness it gives the main thread cannot be taken back without privilege
    probe = """
import os, threading
from training.distributed import yield_ray_task_loop
before = os.getpriority(os.PRIO_PROCESS, 0)
yield_ray_task_loop()  # from the main thread itself: nothing to yield to
on_main = os.getpriority(os.PRIO_PROCESS, 0)
own = []
def train():
    yield_ray_task_loop()
    own.append(os.getpriority(os.PRIO_PROCESS, 0))
t = threading.Thread(target=train); t.start(); t.join()
print(before, on_main, os.getpriority(os.PRIO_PROCESS, threading.main_thread().native_id), own[0])
"""
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    ).stdout.split()
    before, on_main, main_after, training = map(int, out)
    assert on_main == before  # the main thread alone: unchanged
    assert main_after == 19 and training == before  # the loop yields, the training thread does not
