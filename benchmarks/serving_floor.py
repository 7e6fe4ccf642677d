"""The floor under the endpoint's added latency: what one call between two Ray processes costs on this
machine when the callee does nothing.

The gateway hands each image to the predictor by a Ray Serve handle call (split mode, the default).
``make bench-serving`` reports ``added_p50_ms_at_c1``; this measures how much of it no code of ours
can remove: on a fresh local Ray (2 CPUs, Ray Serve's throughput flag as ``nicheloop stack up`` sets
it for the HAProxy ingress), a caller deployment awaits, one at a time, a callee that answers at
once what the predictor answers (six probabilities and a 1,280-float embedding) for what the gateway
sends (one uint8 image at 128 x 128, 49 KB):

- ``serve_handle_p50_ms`` / ``serve_handle_p90_ms``: a Ray Serve handle call between deployments;
- ``actor_call_p50_ms``: a plain Ray actor call between two actors, the same argument and answer.

Last line: one JSON object. About a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

CALLS, WARM_UP = 500, 50
THROUGHPUT_FLAG = "RAY_SERVE_THROUGHPUT_OPTIMIZED"


def _image() -> list[np.ndarray]:
    return [np.zeros((128, 128, 3), np.uint8)]


class _Echo:
    """Answers at once what the predictor answers, in size: probabilities and an embedding an image."""

    async def predict_many(self, items: list[np.ndarray]) -> list[dict[str, Any]]:
        return [{"probs": [1 / 6] * 6, "embedding": np.zeros(1280, np.float32)} for _ in items]


async def _timed_calls(callee: Any, calls: int) -> tuple[float, float]:
    """p50 and p90 milliseconds of ``calls`` awaited one at a time (a Serve or a Ray actor handle),
    the first :data:`WARM_UP` left out."""
    ms = []
    for _ in range(calls):
        start = time.perf_counter()
        await callee.predict_many.remote(_image())
        ms.append((time.perf_counter() - start) * 1000)
    kept = ms[WARM_UP:]
    return statistics.median(kept), statistics.quantiles(kept, n=10)[-1]


Callee = serve.deployment(max_ongoing_requests=32)(_Echo)
PlainCallee = ray.remote(_Echo)


@serve.deployment
class Caller:
    def __init__(self, callee: DeploymentHandle) -> None:
        self.callee = callee

    async def __call__(self, calls: int) -> tuple[float, float]:
        return await _timed_calls(self.callee, calls)


@ray.remote
class PlainCaller:
    async def run(self, callee: Any, calls: int) -> tuple[float, float]:
        return await _timed_calls(callee, calls)


def main() -> None:
    flag = os.environ.get(THROUGHPUT_FLAG, "1")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {THROUGHPUT_FLAG: flag}},
    )
    try:
        handle = serve.run(Caller.bind(Callee.bind()), name="floor", route_prefix=None)
        serve_p50, serve_p90 = handle.remote(CALLS).result()
        actor_p50, _ = ray.get(PlainCaller.remote().run.remote(PlainCallee.remote(), CALLS))
    finally:
        serve.shutdown()
        ray.shutdown()
    print(
        json.dumps(
            {
                "benchmark": "serving_floor",
                "throughput_flag": flag,
                "calls": CALLS - WARM_UP,
                "serve_handle_p50_ms": round(serve_p50, 2),
                "serve_handle_p90_ms": round(serve_p90, 2),
                "actor_call_p50_ms": round(actor_p50, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
