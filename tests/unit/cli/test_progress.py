"""The training progress bar follows the run's own progress file."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

from rich.console import Console

from cli.progress import RunProgress, describe, newest_progress, read_epochs


def _write(run: Path, *records: dict[str, float]) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    path = run / "progress.jsonl"
    with path.open("a") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    return path


def test_figures_of_the_latest_epoch() -> None:
    assert describe([]) == "starting"
    assert describe([{"epoch": 0, "train_loss": 1.5, "val_accuracy": 0.5}]) == "loss 1.500  val acc 0.500"
    assert describe([{"epoch": 3, "ssl_loss": -0.61}]) == "loss -0.610"


def test_a_half_written_line_is_skipped(tmp_path: Path) -> None:
    path = _write(tmp_path / "run", {"epoch": 0, "train_loss": 1.0})
    with path.open("a") as fh:
        fh.write('{"epoch": 1, "tra')
    assert read_epochs(path) == [{"epoch": 0, "train_loss": 1.0}]


def test_only_runs_written_since_the_start_are_followed(tmp_path: Path) -> None:
    old = _write(tmp_path / "old", {"epoch": 0})
    os.utime(old, (time.time() - 600, time.time() - 600))
    assert newest_progress(tmp_path, since=time.time() - 60) is None
    new = _write(tmp_path / "new", {"epoch": 0})
    assert newest_progress(tmp_path, since=time.time() - 60) == new


def test_the_bar_shows_epochs_and_figures_as_the_run_writes_them(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    with RunProgress(tmp_path, title="fine-tune", total_epochs=4, console=console, every_s=0.05) as bar:
        _write(tmp_path / "run", {"epoch": 0, "train_loss": 1.2, "val_accuracy": 0.4})
        _write(tmp_path / "run", {"epoch": 1, "train_loss": 0.9, "val_accuracy": 0.7})
        bar.refresh()
        assert bar.progress.tasks[0].completed == 2
    text = out.getvalue()
    assert "fine-tune" in text and "epoch 2/4" in text and "val acc 0.700" in text
