"""A Ray Train worker that dies once, for the resumption tests (an ``epoch_hook`` of ``fit``).

The module travels to the workers by value (``register_pickle_by_value``): the tests package is
not installed where Ray's workers run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from training.distributed import PROGRESS_FILE


@dataclass(frozen=True)
class DieOnce:
    """The first time ``epoch`` starts, the worker process exits (``marker`` records that it did).

    It dies once the controller has recorded the epoch before (its progress line is written): Ray
    Train collects reports on its next poll of the worker (every 2 s), and a report still waiting in
    a worker that dies is lost with it, so dying at once would make where the run resumes a race.
    """

    epoch: int
    marker: Path

    def __call__(self, epoch: int, run_dir: Path) -> None:
        if epoch != self.epoch or self.marker.exists():
            return
        progress, deadline = run_dir / PROGRESS_FILE, time.monotonic() + 120
        while epoch > 0 and time.monotonic() < deadline and not _recorded(progress, epoch - 1):
            time.sleep(0.1)
        self.marker.write_text(str(epoch))
        os._exit(1)


def _recorded(progress: Path, epoch: int) -> bool:
    lines = progress.read_text().splitlines() if progress.exists() else []
    return any(json.loads(line)["epoch"] == epoch for line in lines)
