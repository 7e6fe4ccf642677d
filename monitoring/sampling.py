"""The review sampler: queue the predictions the model is least sure about (margin uncertainty)."""

from __future__ import annotations

from pydantic import BaseModel

from nicheloop.contracts import PredictionEvent
from nicheloop.store import Store


class UncertaintySampler:
    """Queues a prediction for review when its margin uncertainty reaches ``threshold``."""

    def __init__(self, store: Store, threshold: float) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.store, self.threshold = store, threshold

    def score(self, event: PredictionEvent) -> float:
        return event.uncertainty

    def __call__(self, topic: str, event: BaseModel) -> bool:
        """Returns True if the event was queued (False if not uncertain enough or already queued)."""
        if not isinstance(event, PredictionEvent):
            return False
        score = self.score(event)
        if score < self.threshold:
            return False
        return self.store.enqueue_review(event.prediction_id, priority=score)
