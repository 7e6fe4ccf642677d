"""Embedding drift: the latest window of prediction embeddings against the champion's reference.

The score is Evidently's embeddings drift (default method: a classifier told to separate the
window from the reference; its ROC AUC is the score, 0.5 meaning no drift).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import EmbeddingsDrift
from pydantic import BaseModel

from nicheloop.contracts import PredictionEvent
from monitoring.metrics import MonitorMetrics

log = logging.getLogger(__name__)

MONITOR = "embeddings"


@dataclass(frozen=True)
class DriftResult:
    score: float
    drifted: bool
    window: int


def embedding_drift(reference: np.ndarray, current: np.ndarray, threshold: float = 0.55) -> DriftResult:
    """Evidently's embeddings drift between two (n, D) float matrices of the same D.

    Raises:
        ValueError: on mismatched dimensions or fewer than 10 rows on either side.
    """
    if reference.ndim != 2 or current.ndim != 2 or reference.shape[1] != current.shape[1]:
        raise ValueError(f"embedding shapes differ: reference {reference.shape}, current {current.shape}")
    if len(reference) < 10 or len(current) < 10:
        raise ValueError("insufficient data: need at least 10 embeddings on each side")
    cols = [f"e{i}" for i in range(reference.shape[1])]
    definition = DataDefinition(numerical_columns=cols, embeddings={"embedding": cols})
    ref = Dataset.from_pandas(pd.DataFrame(reference, columns=cols), data_definition=definition)
    cur = Dataset.from_pandas(pd.DataFrame(current, columns=cols), data_definition=definition)
    snapshot = Report([EmbeddingsDrift(embeddings_name="embedding")]).run(cur, ref)
    score = float(snapshot.dict()["metrics"][0]["value"])
    return DriftResult(score=score, drifted=score > threshold, window=len(current))


class DriftMonitor:
    """Keeps the last ``window`` embeddings of the served version; scores every ``every`` events."""

    def __init__(self, reference_for: Callable[[str], np.ndarray], metrics: MonitorMetrics,
                 window: int = 100, every: int = 25, min_samples: int = 50) -> None:
        self.reference_for, self.metrics = reference_for, metrics
        self.window: deque[np.ndarray] = deque(maxlen=window)
        self.every, self.min_samples = every, min_samples
        self.version: str | None = None
        self.reference: np.ndarray | None = None
        self.seen = 0
        self.last: DriftResult | None = None

    def __call__(self, topic: str, event: BaseModel) -> DriftResult | None:
        if not isinstance(event, PredictionEvent):
            return None
        if event.model_version != self.version:  # a new champion brings its own reference
            self.version, self.reference = event.model_version, self.reference_for(event.model_version)
            self.window.clear()
            self.seen = 0
        self.window.append(np.asarray(event.embedding, dtype=np.float32))
        self.seen += 1
        if self.seen % self.every or len(self.window) < self.min_samples:
            return None
        return self.evaluate()

    def evaluate(self) -> DriftResult | None:
        """Score the window; None (and a log line) when the data cannot be compared."""
        if self.reference is None:
            return None
        try:
            result = embedding_drift(self.reference, np.stack(self.window))
        except ValueError as exc:
            log.warning("drift of version %s not scored: %s", self.version, exc)
            return None
        m = self.metrics
        m.drift_score.labels(MONITOR).set(result.score)
        m.drift_detected.labels(MONITOR).set(float(result.drifted))
        m.drift_window.labels(MONITOR).set(result.window)
        m.drift_last_eval.labels(MONITOR).set(time.time())
        log.info("embedding drift of version %s: %.3f over %d (drifted=%s)",
                 self.version, result.score, result.window, result.drifted)
        self.last = result
        return result
