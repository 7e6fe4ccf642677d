"""Review: hand out the queued predictions most worth a human look; labels become feedback."""

from __future__ import annotations

from nicheloop.bus import Publisher
from nicheloop.contracts import FeedbackEvent, ReviewTask
from nicheloop.store import Store
from services.feedback import check_label, record_feedback


def claim_next(store: Store) -> ReviewTask | None:
    """Claim the highest-priority queued item; None when the queue is empty."""
    item = store.claim_review()
    if item is None:
        return None
    pred = store.prediction(item.prediction_id)
    return ReviewTask(task_id=item.task_id, prediction_id=item.prediction_id, predicted_label=pred.label,
                      uncertainty=pred.uncertainty, class_names=list(pred.class_names),
                      image_url=f"/v1/images/{pred.image_sha256}")


def submit_review(store: Store, publisher: Publisher, key: bytes, task_id: int, label: str,
                  class_names: list[str]) -> FeedbackEvent:
    """Record a reviewer's label for task ``task_id`` and publish it as reviewer feedback.

    Raises:
        NotFound: unknown task. InvalidInput: unknown label or task already labeled.
    """
    check_label(label, class_names)
    item = store.review_item(task_id)  # NotFound / already labeled are refused before publishing
    event = record_feedback(publisher, key, item.prediction_id, label, class_names, source="reviewer")
    store.complete_review(task_id, label)  # only once the label is durable on Kafka
    return event
