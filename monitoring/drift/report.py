"""Evidently HTML reports of evaluated drift windows, kept under the data directory, and their index.

A report shows the window's image statistics, top-class confidence and predicted class against
the version's reference (Evidently's DataDriftPreset), next to the monitors' own verdicts. A
report costs about 1.5 s of CPU, so the drift stage writes one for every alarm transition and
otherwise at most one per ``every_s`` seconds (0: every evaluated window); ``index.jsonl`` lists them for
``nicheloop drift report``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.drift.monitor import MonitorResult
from nicheloop.contracts import IMAGE_STATS
from nicheloop.reference import Reference

log = logging.getLogger(__name__)
INDEX = "index.jsonl"
PRUNE_EVERY_S = 3600.0  # how often a writer deletes its reports past their retention


# Decimals a report's numbers keep: a column spread over a few float32 ulps (a sure model's
# confidence, 1 - 6e-8 to 1.0) makes Evidently's ten-bin histogram raise; rounded, it is constant.
DECIMALS = 6


def _frame(stats: np.ndarray, probs: np.ndarray, class_names: tuple[str, ...]) -> pd.DataFrame:
    rounded = np.round(np.asarray(stats, dtype=np.float64), DECIMALS)
    frame = pd.DataFrame(rounded, columns=list(IMAGE_STATS)) if len(stats) else pd.DataFrame()
    if len(probs):
        frame["confidence"] = np.round(probs.max(1).astype(np.float64), DECIMALS)
        frame["predicted_class"] = [
            class_names[i] if i < len(class_names) else str(i) for i in probs.argmax(1)
        ]
    return frame


def render(reference: Reference, stats: np.ndarray, probs: np.ndarray, path: Path) -> Path:
    """Write Evidently's data-drift report of a window against ``reference`` to ``path``."""
    from evidently import DataDefinition, Dataset, Report  # heavy: imported when a report is due
    from evidently.presets import DataDriftPreset

    cur = _frame(stats, probs, reference.class_names)
    ref = _frame(reference.stats, reference.probs, reference.class_names)
    cols = [c for c in cur.columns if c in ref.columns]
    numeric = [c for c in cols if c != "predicted_class"]
    definition = DataDefinition(
        numerical_columns=numeric,
        categorical_columns=["predicted_class"] if "predicted_class" in cols else [],
    )
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant column's correlation is NaN
        snapshot = Report([DataDriftPreset()]).run(
            Dataset.from_pandas(cur[cols], data_definition=definition),
            Dataset.from_pandas(ref[cols], data_definition=definition),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    return path


class ReportWriter:
    """Writes reports under ``folder`` (one sub-folder per model version) and indexes them."""

    def __init__(self, folder: Path, every_s: float = 3600.0, *, keep_days: float = 0.0) -> None:
        """``keep_days`` > 0: periodic reports older than that are deleted (at most once an hour, by
        the writer itself, so nothing else appends to the index meanwhile); an alarm's are kept."""
        self.folder, self.every_s, self.keep_days = folder, every_s, keep_days
        self.last_at = self.pruned_at = float("-inf")

    def due(self, transition: bool) -> bool:
        return transition or time.monotonic() - self.last_at >= self.every_s

    def write(
        self,
        version: str,
        reference: Reference,
        stats: np.ndarray,
        probs: np.ndarray,
        results: list[MonitorResult],
        reason: str,
    ) -> Path | None:
        """Render and index one window's report; None (and a log line) if rendering fails."""
        self.last_at = time.monotonic()
        at = datetime.now(UTC)
        path = self.folder / version / f"{at:%Y%m%dT%H%M%S%fZ}-{len(probs)}.html"
        try:
            render(reference, stats, probs, path)
        except Exception:
            log.exception("drift report for version %s not written", version)
            return None
        entry: dict[str, Any] = {
            "path": str(path),
            "model_version": version,
            "created_at": at.isoformat(),
            "reason": reason,
            "window": len(probs),
            "monitors": {r.monitor: {k: v for k, v in asdict(r).items() if k != "details"} for r in results},
        }
        with (self.folder / INDEX).open("a") as f:
            f.write(json.dumps(entry) + "\n")
        if self.keep_days > 0 and time.monotonic() - self.pruned_at >= PRUNE_EVERY_S:
            self.pruned_at = time.monotonic()
            prune_reports(self.folder, before=at - timedelta(days=self.keep_days))
        return path


def prune_reports(folder: Path, *, before: datetime) -> int:
    """Delete the periodic reports created before ``before`` and their index lines; returns how many.

    A report is about 4 MB and one comes every hour: 35 GB a year. The reports of alarms raised or
    cleared are kept whatever their age (the timeline's transitions keep theirs too). The index is
    rewritten whole and swapped in, so a reader never sees half of it.
    """
    index = folder / INDEX
    if not index.is_file():
        return 0
    kept, pruned = [], 0
    for line in index.read_text().splitlines():
        try:
            entry = json.loads(line)
            old = entry.get("reason") == "periodic" and datetime.fromisoformat(entry["created_at"]) < before
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a torn or foreign line: dropped with the rewrite
        if old:
            Path(entry.get("path", "")).unlink(missing_ok=True)
            pruned += 1
        else:
            kept.append(line)
    if pruned:
        tmp = index.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, index)
        log.info("deleted %d periodic drift reports older than %s", pruned, before.isoformat())
    return pruned


def list_reports(folder: Path, version: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Index entries, newest first; lines that are not JSON are skipped (a torn last write)."""
    index = folder / INDEX
    if not index.is_file():
        return []
    entries = []
    for line in index.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if version is None or entry.get("model_version") == version:
            entries.append(entry)
    return entries[::-1][:limit]
