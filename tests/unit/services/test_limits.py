"""The request path's bounds: adaptive batches, shedding at the door, deadlines that name the part,
and a view of the model that answers while the predictor is busy (no Ray here: plain asyncio)."""

from __future__ import annotations

import asyncio

import pytest

from nicheloop.errors import BudgetSpent, NotReady, Overloaded, UpstreamTimeout
from services.batching import Batcher
from services.inference import ModelState
from services.limits import Admission, CallerRates, within
from services.watch import ModelWatch


def test_a_batch_is_what_queued_while_the_previous_one_ran() -> None:
    sizes: list[int] = []

    async def double(items: list[int]) -> list[int]:
        sizes.append(len(items))
        await asyncio.sleep(0.05)  # the model is busy: the others queue meanwhile
        return [2 * i for i in items]

    async def main() -> list[int]:
        batcher = Batcher(double, max_size=4, max_wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)  # alone: it runs at once, without waiting for company
        rest = await asyncio.gather(*(batcher.submit(i) for i in range(1, 9)))
        return [await first, *rest]

    assert asyncio.run(main()) == [2 * i for i in range(9)]
    assert sizes[0] == 1 and max(sizes) == 4 and sum(sizes) == 9  # no wait for the first, full after


def test_a_failing_batch_fails_its_callers_and_the_next_batch_still_runs() -> None:
    async def flaky(items: list[int]) -> list[int]:
        if 0 in items:
            raise ValueError("bad batch")
        return items

    async def main() -> tuple[BaseException | int, int]:
        batcher = Batcher(flaky, max_size=1, max_wait_s=0.0)
        first, second = await asyncio.gather(batcher.submit(0), batcher.submit(5), return_exceptions=True)
        return first, second  # type: ignore[return-value]

    first, second = asyncio.run(main())
    assert isinstance(first, ValueError) and second == 5


def test_a_caller_that_gave_up_is_not_computed() -> None:
    seen: list[int] = []

    async def slow(items: list[int]) -> list[int]:
        seen.extend(items)
        await asyncio.sleep(0.05)
        return items

    async def main() -> None:
        batcher = Batcher(slow, max_size=1, max_wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0)
        doomed = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0.01)
        doomed.cancel()
        assert await first == 1
        await asyncio.sleep(0.06)

    asyncio.run(main())
    assert seen == [1]


def test_concurrent_calls_each_take_what_queued() -> None:
    """Two calls in flight (two replicas behind a remote model): both busy, the rest batch up."""
    running, most, sizes = 0, 0, []

    async def remote(items: list[int]) -> list[int]:
        nonlocal running, most
        running += 1
        most, _ = max(most, running), sizes.append(len(items))
        await asyncio.sleep(0.05)
        running -= 1
        return items

    async def main() -> list[int]:
        batcher = Batcher(remote, max_size=8, max_wait_s=0.0, concurrency=2)
        return await asyncio.gather(*(batcher.submit(i) for i in range(12)))

    assert asyncio.run(main()) == list(range(12))
    assert most == 2 and len(sizes) < 12 and sum(sizes) == 12


def test_a_hung_call_is_cancelled_once_its_callers_gave_up_and_the_worker_goes_on() -> None:
    hung = asyncio.Event()
    cancelled: list[list[int]] = []

    async def sometimes_hangs(items: list[int]) -> list[int]:
        if 0 in items:
            try:
                await hung.wait()  # never set: a replica that stopped answering
            except asyncio.CancelledError:
                cancelled.append(items)
                raise
        return items

    async def main() -> int:
        batcher = Batcher(sometimes_hangs, max_size=4, max_wait_s=0.0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.submit(0), 0.05)  # the caller's deadline passes
        return await asyncio.wait_for(batcher.submit(7), 1.0)  # the next one is not stuck behind it

    assert asyncio.run(main()) == 7
    assert cancelled == [[0]]


def test_admission_sheds_the_one_over_the_limit_and_counts_it() -> None:
    gate = Admission(2, retry_after_s=3)
    gate.enter()
    gate.enter()
    with pytest.raises(Overloaded) as refused:
        gate.enter()
    assert refused.value.retry_after_s == 3 and "2 predictions" in str(refused.value)
    assert (gate.inside, gate.shed) == (2, 1)
    gate.leave()
    gate.enter()  # places come back
    assert gate.inside == 2
    with pytest.raises(ValueError):
        Admission(0)


def test_each_caller_has_its_own_rate_and_burst() -> None:
    now = [0.0]
    rates = CallerRates(2.0, 3, callers=2, clock=lambda: now[0])
    for _ in range(3):  # the burst
        rates.take("shop-a", "predictions")
    with pytest.raises(BudgetSpent, match="shop-a sends predictions faster than its 2 a second") as refused:
        rates.take("shop-a", "predictions")
    assert refused.value.retry_after_s == 1.0 and rates.refused == 1
    rates.take("shop-b", "feedback")  # another caller is not held back
    now[0] = 0.5  # one call earned back at 2 a second
    rates.take("shop-a", "predictions")
    with pytest.raises(BudgetSpent):
        rates.take("shop-a", "predictions")
    rates.take("shop-c", "predictions")  # a third caller: the least recently seen bucket goes
    assert list(rates.buckets) == ["shop-a", "shop-c"]
    off = CallerRates(0, 1)
    for _ in range(1000):
        off.take("shop-a", "predictions")


def test_a_deadline_names_the_part_and_its_setting() -> None:
    with pytest.raises(UpstreamTimeout, match=r"predictor .* 0.01s \(NICHELOOP_PREDICT_TIMEOUT_S\)"):
        asyncio.run(within(asyncio.sleep(1), 0.01, part="predictor", knob="predict_timeout_s"))
    assert asyncio.run(within(asyncio.sleep(0, result=7), 1, part="x", knob="y")) == 7


class Source:
    """A predictor whose state call can be made slow or failing."""

    def __init__(self) -> None:
        self.state_now = ModelState(ready=False)
        self.delay, self.calls = 0.0, 0

    async def state(self) -> ModelState:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return self.state_now


def test_the_model_view_answers_from_what_it_knows_when_the_predictor_is_slow() -> None:
    clock = [0.0]
    source = Source()
    watch = ModelWatch(source, fresh_s=2.0, timeout_s=0.05, stale_s=30.0, clock=lambda: clock[0])

    async def main() -> None:
        with pytest.raises(NotReady, match="bootstrap"):
            await watch.served()
        source.state_now = ModelState(True, "3", ("a", "b"))
        assert (await watch.served()).model_version == "3"
        calls = source.calls
        clock[0] = 1.0
        await watch.served()
        assert source.calls == calls  # fresh: not asked again
        source.delay, clock[0] = 10.0, 5.0  # busy predictor, stale state: one bounded ask, then the cache
        assert (await watch.served()).model_version == "3"
        watch.seen("3")  # a prediction is proof of life
        clock[0] = 30.0
        assert (await watch.current()).ready
        clock[0] = 40.0
        with pytest.raises(NotReady, match="has not answered for"):
            await watch.served()

    asyncio.run(main())


def test_an_answer_from_another_version_asks_again() -> None:
    source = Source()
    source.state_now = ModelState(True, "1", ("a", "b"))
    watch = ModelWatch(source, fresh_s=100.0, timeout_s=1.0, stale_s=300.0)

    async def main() -> str | None:
        await watch.served()
        source.state_now = ModelState(True, "2", ("a", "b"))
        watch.seen("2")
        return (await watch.served()).model_version

    assert asyncio.run(main()) == "2"
