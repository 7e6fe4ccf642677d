"""Feedback: a label for a prediction (from its app, or a reviewer's for a leased review task)
becomes a FeedbackEvent on Kafka."""

from __future__ import annotations

import logging

from nicheloop.bus import Publisher
from nicheloop.contracts import FEEDBACK_TOPIC, FeedbackEvent, FeedbackSource
from nicheloop.errors import Conflict, InvalidInput, NotFound
from nicheloop.review import ReviewQueue
from services.ids import is_issued

log = logging.getLogger(__name__)

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
    actor: str | None = None,
    *,
    owner: str | None = None,
) -> FeedbackEvent:
    """Validate and publish ``actor``'s label; returns once it is durable (acknowledged by the broker, or
    in the local spool while the broker is unreachable).

    ``owner`` is the caller the prediction must have been issued to; None for a label on a
    prediction taken from the review queue (the store's own, issued to whichever app).

    Raises:
        NotFound: ``prediction_id`` was not issued by this service to ``owner``.
        InvalidInput: ``label`` is not a class of the model.
    """
    if owner is not None and not is_issued(key, prediction_id, owner=owner):
        raise NotFound(
            f"unknown prediction_id {prediction_id!r}: use an id /v1/predict returned to this "
            "caller (an app labels only its own predictions)"
        )
    event = FeedbackEvent(
        prediction_id=prediction_id, label=check_label(label, class_names), source=source, actor=actor
    )
    publisher.publish_durable(FEEDBACK_TOPIC, prediction_id, event, ack_timeout_s=FEEDBACK_ACK_TIMEOUT_S)
    return event


def submit_review(
    queue: ReviewQueue,
    publisher: Publisher,
    key: bytes,
    task_id: int,
    label: str,
    lease_token: str,
    class_names: list[str],
    actor: str | None = None,
) -> FeedbackEvent:
    """Publish a reviewer's (``actor``'s) label for a leased task as reviewer feedback, then close the
    task. A gold item's answer (:attr:`QueuePolicy.gold_share`) is kept by the queue and not
    published: its label is known already; the reviewer is answered alike.

    The label is durable (on Kafka or in the spool) before the task is marked done, so a crash
    in between loses nothing: the task is handed out again and its label simply arrives twice. A
    second label under the same lease, while it holds, replaces the first (the newest wins).

    Raises:
        NotFound: unknown task. Conflict: lease not held (expired and reassigned, or never
        claimed) or task already labeled. InvalidInput: unknown label.
    """
    check_label(label, class_names)
    item = queue.check_lease(task_id, lease_token, correcting=True)  # a second label corrects the first
    if item.kind == "gold":  # a check of the reviewer: the label is known, the answer trains nothing
        queue.complete(task_id, label, lease_token)
        return FeedbackEvent(prediction_id=item.prediction_id, label=label, source="reviewer", actor=actor)
    event = record_feedback(
        publisher, key, item.prediction_id, label, class_names, source="reviewer", actor=actor
    )
    try:
        queue.complete(task_id, label, lease_token)
    except Conflict:  # the lease ran out while publishing: the label is kept, the task stays open
        log.warning(
            "review task %d: lease expired while its label was published; label kept as feedback", task_id
        )
    return event
