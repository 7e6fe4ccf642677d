"""Review: lease the queued predictions most worth a human look; labels become feedback events."""

from __future__ import annotations

import logging

from nicheloop.bus import Publisher
from nicheloop.contracts import FeedbackEvent, ReviewTask
from nicheloop.errors import Conflict
from nicheloop.review_queue import ReviewQueue
from nicheloop.store import Store
from services.feedback import check_label, record_feedback

log = logging.getLogger(__name__)


def claim_next(queue: ReviewQueue, store: Store, reviewer: str) -> ReviewTask | None:
    """Lease the highest-priority item to ``reviewer``; None when the queue is empty.

    Raises:
        BudgetSpent: the hourly or daily budget is used up.
    """
    item = queue.claim(reviewer)
    if item is None:
        return None
    pred = store.prediction(item.prediction_id)
    return ReviewTask(
        task_id=item.task_id,
        prediction_id=item.prediction_id,
        predicted_label=pred.label,
        uncertainty=pred.uncertainty,
        priority=item.priority,
        class_names=list(pred.class_names),
        image_url=f"/v1/images/{pred.image_sha256}",
        lease_token=item.lease_token or "",
        lease_expires_at=item.lease_expires_at,
    )


def submit_review(
    queue: ReviewQueue,
    publisher: Publisher,
    key: bytes,
    task_id: int,
    label: str,
    lease_token: str,
    class_names: list[str],
) -> FeedbackEvent:
    """Publish a reviewer's label for a leased task as reviewer feedback, then close the task.

    The label is durable (on Kafka or in the spool) before the task is marked done, so a crash
    in between loses nothing: the task is handed out again and its label simply arrives twice.

    Raises:
        NotFound: unknown task. Conflict: lease not held (expired and reassigned, or never
        claimed) or task already labeled. InvalidInput: unknown label.
    """
    check_label(label, class_names)
    item = queue.check_lease(task_id, lease_token)
    event = record_feedback(publisher, key, item.prediction_id, label, class_names, source="reviewer")
    try:
        queue.complete(task_id, label, lease_token)
    except Conflict:  # the lease ran out while publishing: the label is kept, the task stays open
        log.warning(
            "review task %d: lease expired while its label was published; label kept as feedback", task_id
        )
    return event
