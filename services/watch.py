"""The gateway's view of the model being served, so that /readyz and labels never queue behind
predictions: asked of the predictor at most every few seconds, kept fresh by every answer."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

from nicheloop.errors import NotReady
from services.inference import ModelState

log = logging.getLogger(__name__)


class StateSource(Protocol):
    async def state(self) -> ModelState: ...


class ModelWatch:
    """The last :class:`ModelState` the predictor reported, and when it last answered anything.

    Args:
        source: the predictor (its ``state()`` is the only call made here).
        fresh_s: a state older than this is asked for again on the next call.
        timeout_s: longest wait for that answer; on timeout the last state is used.
        stale_s: no answer at all for this long means not ready (a dead or wedged predictor).
    """

    def __init__(
        self,
        source: StateSource,
        *,
        fresh_s: float,
        timeout_s: float,
        stale_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source, self.fresh_s, self.timeout_s, self.stale_s = source, fresh_s, timeout_s, stale_s
        self.clock = clock
        self._state = ModelState(ready=False)
        self._at = -math.inf
        self._asked: asyncio.Future[None] | None = None

    async def current(self) -> ModelState:
        """The state, asked again first if it is not ready or older than ``fresh_s``."""
        if not self._state.ready or self.clock() - self._at > self.fresh_s:
            await self._ask()
        return self._state

    async def served(self) -> ModelState:
        """The state of a model that serves now.

        Raises:
            NotReady: no model loaded, or the predictor has not answered for ``stale_s``.
        """
        state = await self.current()
        if not state.ready:
            raise NotReady("no model loaded yet; register a champion with `nicheloop bootstrap`")
        silent = self.clock() - self._at
        if silent > self.stale_s:
            raise NotReady(f"the predictor has not answered for {silent:.0f}s; see its replica's log")
        return state

    def seen(self, model_version: str) -> None:
        """A prediction came back from ``model_version``: proof of life, or news of a new champion."""
        self._at = self.clock() if model_version == self._state.model_version else -math.inf

    async def _ask(self) -> None:
        if self._asked is None or self._asked.done():
            self._asked = asyncio.ensure_future(self._fetch())
        try:  # shielded: one slow answer serves every caller waiting for it
            await asyncio.wait_for(asyncio.shield(self._asked), self.timeout_s)
        except Exception as exc:  # noqa: BLE001  busy or failing: answer from what is known
            log.warning("predictor state not refreshed (%s); using the last one", exc or type(exc).__name__)

    async def _fetch(self) -> None:
        state = await self.source.state()
        self._state, self._at = state, self.clock()
