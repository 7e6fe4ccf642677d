"""Bounds on the request path: how much work a replica takes at once, how fast one caller may
call, and how long it waits.

Overload is shed at the door (503 and ``Retry-After`` in well under a millisecond) instead of
queueing without bound, and every wait on another part has a deadline that names the part (504),
so a hung predictor or blob store costs its callers seconds, not the replica.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nicheloop.errors import BudgetSpent, Overloaded, UpstreamTimeout

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

    def enter(self) -> None:
        """Take one place; :meth:`leave` gives it back.

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

    def leave(self) -> None:
        self.inside -= 1


class CallerRates:
    """A token bucket per caller: ``per_s`` calls a second on average, ``burst`` at once; one past
    it is refused with 429 and the seconds until a call is allowed again. ``per_s`` 0 turns it off.

    Per replica, in the event loop's thread only; at most ``callers`` buckets are kept (the least
    recently seen go first: a forgotten caller simply starts with a full bucket again).
    """

    def __init__(
        self, per_s: float, burst: int, *, callers: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_s, self.burst, self.callers, self.clock = per_s, max(1, burst), callers, clock
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # name: (tokens, at)
        self.refused = 0

    def take(self, caller: str, what: str) -> None:
        """Spend one of ``caller``'s calls of ``what`` (the kind named in the refusal).

        Raises:
            BudgetSpent: ``caller`` called faster than ``per_s`` for longer than ``burst`` allows.
        """
        if self.per_s <= 0:
            return
        now = self.clock()
        tokens, at = self.buckets.pop(caller, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.per_s)
        if tokens < 1.0:
            self.buckets[caller] = (tokens, now)
            self.refused += 1
            wait = (1.0 - tokens) / self.per_s
            raise BudgetSpent(
                f"{caller} sends {what} faster than its {self.per_s:g} a second "
                f"(NICHELOOP_CALLER_RATE_PER_S); retry in {wait:.2f}s",
                retry_after_s=max(1.0, wait),
            )
        self.buckets[caller] = (tokens - 1.0, now)
        while len(self.buckets) > self.callers:
            self.buckets.popitem(last=False)


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
