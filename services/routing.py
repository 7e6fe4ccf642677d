"""Which model answers a request during a rollout, by a stable hash of its key.

The key is the caller's ``X-Request-Key`` when given (a device, a user: one caller sees one model),
else the image's content hash (the same image always meets the same model). It is hashed with
SHA-256, not Python's ``hash`` (salted per process: two gateway replicas would disagree). A key
answers from the candidate when its point in [0, 1) falls below the canary share, so a key in the
5 % cohort stays in the candidate's cohort at 25 %; the shadow draw uses an independent point.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from nicheloop.contracts import Arm


def point(key: str, salt: str) -> float:
    """A uniform point in [0, 1) fixed by ``key`` and ``salt`` (the first 8 bytes of a SHA-256)."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Route:
    """Where one request goes: the arm that answers it, and whether the candidate also sees it in shadow."""

    answer: Arm
    mirror: bool = False


def route(key: str, *, rollout_id: int, share: float, mirror: float) -> Route:
    """The route of the request with ``key`` in rollout ``rollout_id``: answered by the candidate
    below ``share``, else by the champion and mirrored to the candidate below ``mirror``. Each
    rollout draws its own cohorts (the salt), so one candidate's cohort is not the next one's."""
    if point(key, f"answer:{rollout_id}") < share:
        return Route("candidate")
    return Route("champion", mirror=point(key, f"mirror:{rollout_id}") < mirror)
