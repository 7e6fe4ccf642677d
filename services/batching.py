"""Adaptive batching: each forward pass takes everything that queued while the previous one ran.

Ray Serve's ``@serve.batch`` forms the next batch as soon as the previous one starts, so at a
short wait it runs many batches of one or two, and a long wait adds that wait to every request
at low load (docs/serving.md has the figures). Here one worker takes a batch only when the
model is free: no wait at low load, full batches under load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

I = TypeVar("I")  # noqa: E741  (an item in, as in a queue)
O = TypeVar("O")  # noqa: E741


class Batcher(Generic[I, O]):
    """Calls ``fn`` on lists of submitted items, one call at a time, and hands each caller its result.

    Args:
        fn: maps a list of items to a list of results of the same length, in order.
        max_size: most items in one call.
        max_wait_s: how long a batch smaller than ``max_size`` waits for more (0: never).
    """

    def __init__(
        self, fn: Callable[[list[I]], Awaitable[list[O]]], *, max_size: int, max_wait_s: float
    ) -> None:
        if max_size < 1 or max_wait_s < 0:
            raise ValueError(f"need max_size >= 1 and max_wait_s >= 0, got {max_size} and {max_wait_s}")
        self.fn, self.max_size, self.max_wait_s = fn, max_size, max_wait_s
        self._queue: asyncio.Queue[tuple[I, asyncio.Future[O]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: I) -> O:
        """The result of ``fn`` for ``item``, computed in a batch with whatever else is waiting.

        Raises:
            Exception: whatever ``fn`` raised for the batch. A cancelled caller's item is dropped
                before it reaches ``fn`` if its batch has not started.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[O] = loop.create_future()
        self._queue.put_nowait((item, future))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(), name="nicheloop-batcher")
        return await future

    async def _next_batch(self) -> list[tuple[I, asyncio.Future[O]]]:
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(batch) < self.max_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [(item, future) for item, future in batch if not future.done()]  # drop cancelled callers

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                results = await self.fn([item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001  every caller of the batch gets the error; the worker goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
