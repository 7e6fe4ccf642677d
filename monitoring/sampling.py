"""The review sampler: queue the predictions the model is least sure about (margin uncertainty).

"Least sure" is relative: a prediction is queued when its uncertainty is among the top
``top_fraction`` of the recent window, so a poorly calibrated model does not flood the queue
and a confident one still sends its hardest cases to reviewers.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from pydantic import BaseModel

from nicheloop.contracts import PredictionEvent
from nicheloop.store import Store


class UncertaintySampler:
    """Queues a prediction whose uncertainty reaches the recent window's top-fraction quantile.

    Args:
        top_fraction: share of traffic worth a human look, in (0, 1].
        window: how many recent scores define "recent".
        min_uncertainty: never queue below this score, whatever the quantile.
    """

    def __init__(self, store: Store, top_fraction: float = 0.2, window: int = 200,
                 min_uncertainty: float = 0.05) -> None:
        if not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        self.store, self.top_fraction, self.min_uncertainty = store, top_fraction, min_uncertainty
        self.recent: deque[float] = deque(maxlen=window)

    def score(self, event: PredictionEvent) -> float:
        return event.uncertainty

    def cutoff(self) -> float:
        """The score a prediction needs now to be queued."""
        quantile = float(np.quantile(np.fromiter(self.recent, float), 1.0 - self.top_fraction))
        return max(self.min_uncertainty, quantile)

    def __call__(self, topic: str, event: BaseModel) -> bool:
        """Returns True if the event was queued (False if not uncertain enough or already queued)."""
        if not isinstance(event, PredictionEvent):
            return False
        score = self.score(event)
        self.recent.append(score)
        if score < self.cutoff():
            return False
        return self.store.enqueue_review(event.prediction_id, priority=score)
