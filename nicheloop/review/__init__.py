"""Review, in one place: the queue the sampler fills and reviewers work through, and the bodies of
its API. Monitoring enqueues (:meth:`ReviewQueue.enqueue`, ``room``, ``known``); services claim,
label and skip (:meth:`ReviewQueue.claim_task`, ``check_lease``, ``complete``, ``skip``, ``stats``).
"""

from nicheloop.review.queue import QueuePolicy, ReviewQueue
from nicheloop.review.schemas import ReviewBudget, ReviewLabel, ReviewSkip, ReviewStats, ReviewTask

__all__ = [
    "QueuePolicy",
    "ReviewBudget",
    "ReviewLabel",
    "ReviewQueue",
    "ReviewSkip",
    "ReviewStats",
    "ReviewTask",
]
