"""The joiner: predictions and feedback from Kafka into the SQL store (idempotent, order-free)."""

from __future__ import annotations

from pydantic import BaseModel

from nicheloop.contracts import FeedbackEvent, PredictionEvent
from nicheloop.errors import InvalidInput
from nicheloop.store import Store


class Joiner:
    """Applies events to the store; labeled examples appear once both sides are there."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __call__(self, topic: str, event: BaseModel) -> None:
        if isinstance(event, PredictionEvent):  # its schema checked one probability per class
            self.store.add_prediction(event)
        elif isinstance(event, FeedbackEvent):
            self.store.add_feedback(event)
        else:
            raise InvalidInput(f"the joiner does not handle {type(event).__name__} from {topic}")
