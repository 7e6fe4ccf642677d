"""Bounds on the request path: how much work a replica takes at once, and how long it waits.

Overload is shed at the door (503 and ``Retry-After`` in well under a millisecond) instead of
queueing without bound, and every wait on another part has a deadline that names the part (504),
so a hung predictor or blob store costs its callers seconds, not the replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TypeVar

from nicheloop.errors import Overloaded, UpstreamTimeout

T = TypeVar("T")


class Admission:
    """At most ``limit`` requests inside at once; one more is refused, not queued.

    Counts in the event loop's thread only (no lock needed). ``shed`` counts the refusals.
    """

    def __init__(self, limit: int, *, retry_after_s: float = 1.0, what: str = "predictions") -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit, self.retry_after_s, self.what = limit, retry_after_s, what
        self.inside = 0
        self.shed = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one place for the body of the ``async with``.

        Raises:
            Overloaded: all ``limit`` places are taken.
        """
        if self.inside >= self.limit:
            self.shed += 1
            raise Overloaded(
                f"busy: {self.inside} {self.what} in progress, the most this replica takes at once; "
                f"retry after {self.retry_after_s:.0f}s",
                retry_after_s=self.retry_after_s,
            )
        self.inside += 1
        try:
            yield
        finally:
            self.inside -= 1


async def within(awaitable: Awaitable[T], seconds: float, *, part: str, knob: str) -> T:
    """``await awaitable``, giving up after ``seconds``.

    Raises:
        UpstreamTimeout: ``part`` did not answer in time (the message names the setting ``knob``).
    """
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError as exc:
        raise UpstreamTimeout(
            f"the {part} did not answer within {seconds:g}s (NICHELOOP_{knob.upper()}); retry later"
        ) from exc
