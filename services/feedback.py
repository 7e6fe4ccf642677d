"""Feedback: checks a label for a prediction and turns it into a FeedbackEvent on Kafka."""

from __future__ import annotations

from nicheloop.bus import Publisher
from nicheloop.contracts import FEEDBACK_TOPIC, FeedbackEvent, FeedbackSource
from nicheloop.errors import InvalidInput, NotFound
from services.ids import is_issued

FEEDBACK_ACK_TIMEOUT_S = 5.0  # then the label is fsynced to the spool instead


def check_label(label: str, class_names: list[str]) -> str:
    """Raises InvalidInput unless ``label`` is one of the model's classes."""
    if label not in class_names:
        raise InvalidInput(f"unknown label {label!r}; the model's classes are {class_names}")
    return label


def record_feedback(
    publisher: Publisher,
    key: bytes,
    prediction_id: str,
    label: str,
    class_names: list[str],
    source: FeedbackSource,
) -> FeedbackEvent:
    """Validate and publish one label; returns once it is durable (acknowledged by the broker, or
    in the local spool while the broker is unreachable).

    Raises:
        NotFound: ``prediction_id`` was not issued by this service.
        InvalidInput: ``label`` is not a class of the model.
    """
    if not is_issued(key, prediction_id):
        raise NotFound(f"unknown prediction_id {prediction_id!r}: use the id returned by /v1/predict")
    event = FeedbackEvent(prediction_id=prediction_id, label=check_label(label, class_names), source=source)
    publisher.publish_durable(FEEDBACK_TOPIC, prediction_id, event, ack_timeout_s=FEEDBACK_ACK_TIMEOUT_S)
    return event
