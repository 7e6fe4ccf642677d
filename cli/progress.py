"""Progress of long work on the terminal: a bar per training run, read from the run's own progress.

Ray Train workers append one JSON line per epoch to ``<run>/progress.jsonl`` under the results
folder; the bar follows the newest such file written since it started, so it needs no hook into
training and shows exactly what the run recorded.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from nicheloop.contracts import PROGRESS_FILE


def read_epochs(path: Path) -> list[dict[str, Any]]:
    """The epoch records of one progress file (a line still being written is skipped)."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def describe(records: list[dict[str, Any]]) -> str:
    """The figures of the latest epoch: loss (supervised or SimSiam's) and validation accuracy."""
    if not records:
        return "starting"
    last = records[-1]
    loss = last.get("train_loss", last.get("ssl_loss"))
    parts = [f"loss {loss:.3f}" if isinstance(loss, int | float) else ""]
    if isinstance(last.get("val_accuracy"), int | float):
        parts.append(f"val acc {last['val_accuracy']:.3f}")
    return "  ".join(p for p in parts if p)


def newest_progress(root: Path, since: float) -> Path | None:
    """The most recently written progress file under ``root`` touched at or after ``since``."""
    written = [(p.stat().st_mtime, p) for p in root.glob(f"*/{PROGRESS_FILE}")]
    found = [(mtime, p) for mtime, p in written if mtime >= since]
    return max(found)[1] if found else None


def bar(console: Console | None, *, unit: str) -> Progress:
    """A bar on stderr: title, bar, ``<unit>done/total``, the latest figures, time left."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        TextColumn(unit + "{task.completed:.0f}/{task.total:.0f}"),
        TextColumn("{task.fields[figures]}"),
        TextColumn("left"),
        TimeRemainingColumn(compact=True),
        console=console or Console(stderr=True),
    )


class RunProgress:
    """A context manager that shows a training run's epochs as a bar on stderr while it runs.

    ``root`` is the results folder the run writes under (``Settings.ray_results_dir``).
    """

    def __init__(
        self,
        root: Path,
        *,
        title: str,
        total_epochs: int,
        console: Console | None = None,
        every_s: float = 1.0,
    ) -> None:
        self.root, self.total, self.every_s = root, total_epochs, every_s
        self.progress = bar(console, unit="epoch ")
        self.task: TaskID = self.progress.add_task(title, total=total_epochs, figures="starting")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="run-progress", daemon=True)
        self._since = time.time()

    def __enter__(self) -> RunProgress:
        self.progress.start()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.refresh()  # the last epochs, even if they landed after the final poll
        self.progress.stop()

    def refresh(self) -> None:
        """Read the run's progress once and move the bar."""
        path = newest_progress(self.root, self._since)
        records = read_epochs(path) if path is not None else []
        done = len({r.get("epoch") for r in records})
        self.progress.update(self.task, completed=min(done, self.total), figures=describe(records))

    def _follow(self) -> None:
        while not self._stop.wait(self.every_s):
            self.refresh()


class StepProgress:
    """A bar of a known number of steps on stderr, advanced by calling it with what just finished
    (for work in this process, e.g. `nicheloop advise-start`)."""

    def __init__(self, *, title: str, total: int, console: Console | None = None) -> None:
        self.progress = bar(console, unit="")
        self.task: TaskID = self.progress.add_task(title, total=total, figures="starting")

    def __enter__(self) -> StepProgress:
        self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.stop()

    def __call__(self, figures: str) -> None:
        self.progress.update(self.task, advance=1, figures=figures)
