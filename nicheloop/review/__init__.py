"""Review, in one place: the queue the sampler fills and reviewers work through, and the bodies of
its API. Monitoring enqueues (:meth:`ReviewQueue.enqueue`, ``room``, ``known``); services claim,
label, renew and skip (:meth:`ReviewQueue.claim_task`, ``check_lease``, ``complete``, ``renew``,
``skip``, ``stats``).
"""

from nicheloop.review.queue import QueuePolicy, ReviewQueue
from nicheloop.review.schemas import (
    LeaseRenewed,
    ReviewBudget,
    ReviewLabel,
    ReviewLease,
    ReviewSkip,
    ReviewStats,
    ReviewTask,
    SimilarImage,
    Whoami,
)

__all__ = [
    "LeaseRenewed",
    "QueuePolicy",
    "ReviewBudget",
    "ReviewLabel",
    "ReviewLease",
    "ReviewQueue",
    "ReviewSkip",
    "ReviewStats",
    "ReviewTask",
    "SimilarImage",
    "Whoami",
]
