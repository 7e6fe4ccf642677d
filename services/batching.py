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
    """Calls ``fn`` on lists of submitted items, ``concurrency`` calls at a time, and hands each
    caller its result.

    Args:
        fn: maps a list of items to a list of results of the same length, in order.
        max_size: most items in one call.
        max_wait_s: how long a batch smaller than ``max_size`` waits for more (0: never).
        concurrency: calls in flight at once (1 for a model; the replicas behind a remote one).
    """

    def __init__(
        self,
        fn: Callable[[list[I]], Awaitable[list[O]]],
        *,
        max_size: int,
        max_wait_s: float,
        concurrency: int = 1,
    ) -> None:
        if max_size < 1 or max_wait_s < 0 or concurrency < 1:
            raise ValueError(
                f"need max_size >= 1, max_wait_s >= 0 and concurrency >= 1, "
                f"got {max_size}, {max_wait_s} and {concurrency}"
            )
        self.fn, self.max_size, self.max_wait_s = fn, max_size, max_wait_s
        self._queue: asyncio.Queue[tuple[I, asyncio.Future[O]]] = asyncio.Queue()
        self._workers: list[asyncio.Task[None] | None] = [None] * concurrency

    async def submit(self, item: I) -> O:
        """The result of ``fn`` for ``item``, computed in a batch with whatever else is waiting.

        Raises:
            Exception: whatever ``fn`` raised for the batch. A cancelled caller's item is dropped
                before it reaches ``fn`` if its batch has not started.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[O] = loop.create_future()
        self._queue.put_nowait((item, future))
        for i, worker in enumerate(self._workers):
            if worker is None or worker.done():
                self._workers[i] = loop.create_task(self._run(), name=f"nicheloop-batcher-{i}")
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
            if batch:
                await self._call(batch)

    async def _call(self, batch: list[tuple[I, asyncio.Future[O]]]) -> None:
        """One call of ``fn``; cancelled once every caller of the batch has given up (a hung call
        then frees this worker when their deadlines pass)."""
        call = asyncio.ensure_future(self.fn([item for item, _ in batch]))

        def gave_up(_: asyncio.Future[O]) -> None:
            if all(future.done() for _, future in batch):
                call.cancel()

        for _, future in batch:
            future.add_done_callback(gave_up)
        try:
            await asyncio.wait({call})
        except asyncio.CancelledError:
            call.cancel()
            raise
        if call.cancelled():
            return
        exc = call.exception()
        if exc is not None:  # every caller of the batch gets the error; the worker goes on
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, call.result(), strict=True):
            if not future.done():
                future.set_result(result)
