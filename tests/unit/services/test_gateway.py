"""The gateway's side of the predictor call: images travel in batches, a replica lost mid-call costs
a retry, a full queue is a 503 (a fake Serve handle in place of Ray; the real one: tests/integration)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ray._common.serialization import pickle_dumps
from ray.exceptions import RayActorError, RayTaskError
from ray.serve._private.utils import ensure_serialization_context
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentResponse

from nicheloop.errors import NotReady, Overloaded
from nicheloop.settings import Settings
from services.app import build_app
from services.gateway import CALLS_PER_REPLICA, ServePredictor
from services.inference import ModelOutput, Pixels


class FakeResponse(DeploymentResponse):
    """What ``handle.method.remote()`` answers, awaiting ``work`` instead of a replica."""

    def __init__(self, work: Awaitable[Any]) -> None:  # no Ray request behind it
        self.work = asyncio.ensure_future(work)

    def __await__(self) -> Any:
        return self.work.__await__()

    def cancel(self) -> None:
        self.work.cancel()


class FakeHandle:
    """``handle.predict_many.remote(items)`` runs ``predict_many(items)``; records every call."""

    def __init__(self, predict_many: Callable[[list[Pixels]], Awaitable[list[ModelOutput]]]) -> None:
        self.calls: list[int] = []
        self.out = 0  # calls in flight now
        self.most_out = 0

        async def tracked(items: list[Pixels]) -> list[ModelOutput]:
            self.calls.append(len(items))
            self.out += 1
            self.most_out = max(self.most_out, self.out)
            try:
                return await predict_many(items)
            finally:
                self.out -= 1

        self.predict_many = type(
            "Method", (), {"remote": staticmethod(lambda items: FakeResponse(tracked(items)))}
        )


def _pixels(i: int) -> Pixels:
    return Pixels(np.full((4, 4, 3), i, np.uint8), "spec")


def _output(p: Pixels) -> ModelOutput:
    return ModelOutput("1", ["a"], [float(p.array[0, 0, 0])], 0.0, [], [])


def test_images_that_arrive_while_calls_are_out_travel_together_in_the_next_call() -> None:
    async def slow(items: list[Pixels]) -> list[ModelOutput]:
        await asyncio.sleep(0.05)
        return [_output(p) for p in items]

    handle = FakeHandle(slow)

    async def main() -> list[float]:
        port = ServePredictor(handle, max_batch=8, calls_at_once=CALLS_PER_REPLICA)  # type: ignore[arg-type]
        outs = await asyncio.gather(*(port.predict(_pixels(i)) for i in range(20)))
        return [o.probs[0] for o in outs]

    assert asyncio.run(main()) == [float(i) for i in range(20)]  # each caller gets its own answer
    assert (
        CALLS_PER_REPLICA >= 2 and handle.most_out == CALLS_PER_REPLICA
    )  # the next call waits while one runs
    assert sum(handle.calls) == 20 and len(handle.calls) < 20 and max(handle.calls) <= 8


Predict = Callable[[list[Pixels]], Awaitable[list[ModelOutput]]]


def _one_call(fn: Predict, i: int) -> ModelOutput:
    """Image ``i`` through a gateway port whose replicas run ``fn``."""

    async def main() -> ModelOutput:
        port = ServePredictor(FakeHandle(fn), max_batch=4, calls_at_once=1)  # type: ignore[arg-type]
        return await port.predict(_pixels(i))

    return asyncio.run(main())


def _fails_first(error: Callable[[], Exception]) -> tuple[Predict, list[int]]:
    """A replica call that raises ``error()`` the first time and answers after; and its calls' sizes."""
    attempts: list[int] = []

    async def fn(items: list[Pixels]) -> list[ModelOutput]:
        attempts.append(len(items))
        if len(attempts) == 1:
            raise error()
        return [_output(p) for p in items]

    return fn, attempts


def _always(error: Callable[[], Exception]) -> Predict:
    async def fn(items: list[Pixels]) -> list[ModelOutput]:
        raise error()

    return fn


def test_a_replica_lost_mid_call_costs_one_retry_and_then_says_not_ready() -> None:
    dies_once, attempts = _fails_first(RayActorError)
    assert _one_call(dies_once, 7).probs == [7.0] and len(attempts) == 2
    with pytest.raises(NotReady, match="failed 2 times"):
        _one_call(_always(RayActorError), 7)


def test_a_replica_without_a_model_yet_costs_a_retry_and_speaks_its_own_words() -> None:
    """A replacement replica may still be loading: another replica answers; if none can, the caller
    reads the replica's message, not a remote traceback."""

    def remote_not_ready() -> RayTaskError:  # what Ray raises in the caller for a replica's NotReady
        cause = NotReady("no model loaded yet; register a champion with `nicheloop bootstrap`")
        error = RayTaskError("predict_many", "Traceback (most recent call last): ...", cause)
        return error.as_instanceof_cause()

    loading_once, attempts = _fails_first(remote_not_ready)
    assert _one_call(loading_once, 3).probs == [3.0] and len(attempts) == 2
    with pytest.raises(NotReady) as err:
        _one_call(_always(remote_not_ready), 3)
    assert str(err.value).startswith("no model loaded yet") and "Traceback" not in str(err.value)


def test_a_full_predictor_queue_is_overloaded_with_a_retry_hint() -> None:
    def full() -> BackPressureError:
        return BackPressureError(num_queued_requests=64, max_queued_requests=64)

    with pytest.raises(Overloaded, match="queue is full") as err:
        _one_call(_always(full), 1)
    assert err.value.retry_after_s > 0


def test_two_apps_fit_the_local_ray_head() -> None:
    """The app's replicas ask Ray for at most half the local head's logical CPUs, so a second app
    (the serving-limits tests deploy one beside the loop's) is scheduled rather than left pending."""
    from nicheloop.settings import Settings
    from services.gateway import gateway_deployment
    from services.inference import candidate_deployment, predictor_deployment

    s = Settings()
    parts = (gateway_deployment(s), predictor_deployment(s), candidate_deployment(s))
    assert sum(d.ray_actor_options["num_cpus"] for d in parts) <= s.ray_num_cpus / 2


@pytest.mark.parametrize("mode", ["split", "fused"])
def test_no_secret_travels_in_the_deployments_arguments(tmp_path: Path, mode: str) -> None:
    """Serve keeps a deployment's arguments in the cluster's state: the signing key stays out of
    them (replicas read it from their file or their own environment)."""
    secret = "ef" * 32
    app = build_app(Settings(home=tmp_path, secret_key=secret, serving_mode=mode))  # type: ignore[arg-type]
    ensure_serialization_context()
    frozen = pickle_dumps(app, error_msg="the application does not pickle")
    assert secret.encode() not in frozen and str(tmp_path.resolve()).encode() in frozen
    config = app._bound_deployment.init_args[1]  # the gateway's settings: no masked stand-in either
    assert "secret_key" not in config and config["home"] == str(tmp_path.resolve())
