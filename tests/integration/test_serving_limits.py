"""The request path's bounds on the real stack: a second app beside the loop's, the model in its own
deployment, with limits small enough to hit: overload is shed with 503 and Retry-After (never a
500), a predictor slower than its deadline answers 504 naming it, and /readyz still answers; a
replacement for a killed predictor replica takes calls only once its model is loaded; and the loop's
app serves a compressed (int8 ONNX Runtime) champion."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import ray
from ray import serve

from nicheloop.contracts import CHAMPION
from nicheloop.registry import Registry
from nicheloop.rollouts import Rollouts
from nicheloop.settings import Settings
from nicheloop.store import Store
from rollout.controller import adopt
from services.app import deploy
from tests.integration.conftest import role
from training.compress import CompressConfig, compress

pytestmark = pytest.mark.integration

TIGHT = "tight"


@pytest.fixture
def tight(live: Settings, request: pytest.FixtureRequest) -> Iterator[str]:
    """The app deployed with the test's settings under /tight; deleted afterwards."""
    knobs = {"serving_mode": "split", **request.param}
    try:
        yield deploy(live.model_copy(update=knobs), name=TIGHT, route_prefix=f"/{TIGHT}")
    finally:
        serve.delete(TIGHT)


@pytest.mark.parametrize(
    "tight",
    [{"max_inflight_predictions": 1, "gateway_max_ongoing": 4, "gateway_max_queued": 2}],
    indirect=True,
)
def test_overload_is_shed_with_503_and_retry_after_never_a_500(
    live: Settings, tight: str, png: bytes
) -> None:
    with httpx.Client(base_url=tight, timeout=60, headers=role(live, "app")) as client:

        def post(_: int) -> httpx.Response:
            return client.post("/v1/predict", content=png)

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(post, range(48)))
        codes = [a.status_code for a in answers]
        assert set(codes) <= {200, 503}, codes
        shed = [a for a in answers if a.status_code == 503]
        assert codes.count(200) >= 1 and shed, codes
        assert all(a.headers.get("retry-after") == "1" for a in shed)
        # the gateway's own door (the mounted app's path, not Serve's queue bound) refused some
        assert any("1 predictions in progress" in a.json()["detail"] for a in shed), [a.text for a in shed]
        served = next(a for a in answers if a.status_code == 200)
        assert {"prepare", "model", "predictor", "forward", "publish"} <= {
            p.split(";")[0] for p in served.headers["server-timing"].split(", ")
        }
        metrics = client.get("/metrics", headers=role(live, "operator")).text
        assert "nicheloop_predictions_in_flight_limit 1.0" in metrics


@pytest.mark.parametrize("tight", [{"predict_timeout_s": 0.001}], indirect=True)
def test_a_predictor_slower_than_its_deadline_answers_504_naming_it(
    live: Settings, tight: str, png: bytes
) -> None:
    with httpx.Client(base_url=tight, timeout=60, headers=role(live, "app")) as client:
        answer = client.post("/v1/predict", content=png)
        assert answer.status_code == 504
        assert (
            "predictor" in answer.json()["detail"]
            and "NICHELOOP_PREDICT_TIMEOUT_S" in answer.json()["detail"]
        )
        assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize("tight", [{}], indirect=True)
def test_a_replacement_predictor_replica_takes_calls_only_once_its_model_is_loaded(
    live: Settings, tight: str, png: bytes
) -> None:
    """Serve routes to a new replica as soon as it is constructed: one that loaded its model later
    answered 503 with a remote traceback. While none serves, callers get a 503 or 504 that names
    the part; then 200s."""
    with httpx.Client(base_url=tight, timeout=60, headers=role(live, "app")) as client:
        assert client.post("/v1/predict", content=png).status_code == 200
        (name,) = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if f"{TIGHT}#predictor#" in a["name"]
        ]
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        answers: list[httpx.Response] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and [a.status_code for a in answers[-5:]] != [200] * 5:
            answers.append(client.post("/v1/predict", content=png))
    codes = [a.status_code for a in answers]
    assert codes[-5:] == [200] * 5 and set(codes) <= {200, 503, 504}, codes
    refusals = [a.json()["detail"] for a in answers if a.status_code != 200]
    assert not [d for d in refusals if "no model loaded" in d or "ray::" in d], refusals


def _served_version(client: httpx.Client, png: bytes, want: str, within_s: float = 60) -> httpx.Response:
    """The first answer from ``want`` (the predictor swaps models when it next reads the alias)."""
    deadline = time.monotonic() + within_s
    while True:
        answer = client.post("/v1/predict", content=png)
        assert answer.status_code == 200, answer.text
        if answer.json()["model_version"] == want or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


def test_a_compressed_champion_serves_through_the_endpoint(live: Settings, png: bytes) -> None:
    registry, rollouts = Registry(live.tracking_uri, live.model_name), Rollouts(Store(live.db_url))
    before = registry.resolve(CHAMPION).version
    int8 = compress(live, CompressConfig(calibration_images=48)).version
    assert int8.tags["compressed_from"] == before and int8.tags["precision"] == "int8"
    try:
        # past the gates: this test is about serving it
        adopt(rollouts, registry, version=int8.version, actor="test", reason="serve int8", now=time.time())
        with httpx.Client(base_url=live.serve_url, timeout=60, headers=role(live, "app")) as client:
            answer = _served_version(client, png, int8.version)
            assert answer.json()["model_version"] == int8.version
            assert sum(answer.json()["probs"].values()) == pytest.approx(1, abs=1e-4)
            assert client.get("/readyz").status_code == 200
    finally:
        adopt(rollouts, registry, version=before, actor="test", reason="back", now=time.time())
    with httpx.Client(base_url=live.serve_url, timeout=60, headers=role(live, "app")) as client:
        assert _served_version(client, png, before).json()["model_version"] == before
