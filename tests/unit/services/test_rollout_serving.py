"""The gateway during a rollout, on a plain FastAPI client: the candidate answers its share, shadow
mirrors under a bound and pairs its events with the champion's, each arm's calls are counted and
flushed to the store, a failing candidate is shielded by the champion, and a silent controller
gives the candidate nothing. Real models and SQLite; the Kafka publisher is a recorder."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from nicheloop.contracts import PredictionEvent
from nicheloop.errors import UpstreamTimeout
from nicheloop.http import Gatekeeper
from nicheloop.keys import ApiKeys
from nicheloop.latency import quantile_ms
from nicheloop.rollouts import NO_ROLLOUT, ArmCalls, Rollout, Rollouts
from services.api import api
from services.deps import GatewayResources, get_resources
from services.inference import ModelOutput, ModelSlot, Pixels
from services.routing import QUIET_FLUSH_S, RoutingWatch
from tests.unit.services.fakes import LocalPredictor, OneVersion, ready


class Broken(LocalPredictor):
    async def predict(self, pixels: Pixels) -> ModelOutput:
        raise UpstreamTimeout("the candidate predictor did not answer")


class Buggy(LocalPredictor):
    async def predict(self, pixels: Pixels) -> ModelOutput:
        raise RuntimeError("Sizes of tensors must match")  # a model's own bug, not a domain error


def _with_rollout(
    res: GatewayResources,
    registry: OneVersion,
    *,
    candidate: LocalPredictor | None = None,
    **settings: object,
) -> GatewayResources:
    ready(res, registry)
    slot = ModelSlot(registry, lambda: "2")  # the same weights, as version 2
    slot.reload_if_changed()
    return dataclasses.replace(
        res,
        settings=res.settings.model_copy(update=settings),
        candidate=candidate or LocalPredictor(slot),
        rollout=RoutingWatch(Rollouts(res.store), refresh_s=0.05, stale_s=60.0),
    )


KEYS: dict[str, dict[str, str]] = {}  # the headers of each role's caller, set by ``serve``


@pytest.fixture
def serve(res: GatewayResources, as_role: dict[str, dict[str, str]]) -> Iterator[list[GatewayResources]]:
    """Serve whatever resources the test puts in the list, on one event loop for the whole test."""
    holder: list[GatewayResources] = []
    api.dependency_overrides[get_resources] = lambda: holder[0]
    api.state.gatekeeper = Gatekeeper(ApiKeys(res.store))
    KEYS.update(as_role)
    yield holder
    api.dependency_overrides.clear()
    del api.state.gatekeeper


def _events(res: GatewayResources, arm: str) -> list[PredictionEvent]:
    return [e for _, _, e in res.publisher.events if isinstance(e, PredictionEvent) and e.arm == arm]  # type: ignore[attr-defined]


def _eventually(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_candidate_answers_its_share_by_key_and_each_arm_is_counted(
    serve: list[GatewayResources], res: GatewayResources, registry: OneVersion, png: bytes
) -> None:
    rollouts = Rollouts(res.store)
    live = rollouts.create(
        Rollout("2", "1", state="canary", share=0.5), plan={}, actor="t", reason="", now=time.time()
    )
    serve.append(_with_rollout(res, registry))
    with TestClient(api, raise_server_exceptions=False, headers=KEYS["app"]) as client:
        versions = {
            key: client.post("/v1/predict", content=png, headers={"X-Request-Key": key}).json()[
                "model_version"
            ]
            for key in (f"device-{i}" for i in range(40))
        }
        again = client.post("/v1/predict", content=png, headers={"X-Request-Key": "device-7"}).json()
    assert again["model_version"] == versions["device-7"]  # one caller meets one model
    assert 8 <= sum(v == "2" for v in versions.values()) <= 32
    answered = _events(serve[0], "candidate")
    assert {e.model_version for e in answered} == {"2"} and all(e.paired_with is None for e in answered)
    assert not _events(serve[0], "shadow")
    counted = serve[0].rollout.counter.take()  # type: ignore[union-attr]
    flushed = rollouts.arm_calls(live.id or 0, since=0.0)
    both = {
        arm: flushed.get(arm, ArmCalls()).calls + counted.get((live.id or 0, arm), ArmCalls()).calls
        for arm in ("champion", "candidate")
    }
    assert both["champion"] + both["candidate"] == 41 and both["candidate"] == len(answered)


def test_shadow_pairs_with_the_champions_answer_and_drops_beyond_its_bound(
    serve: list[GatewayResources], res: GatewayResources, registry: OneVersion, png: bytes
) -> None:
    Rollouts(res.store).create(Rollout("2", "1", mirror=1.0), plan={}, actor="t", reason="", now=time.time())
    serve.append(_with_rollout(res, registry))
    with TestClient(api, raise_server_exceptions=False, headers=KEYS["app"]) as client:
        ids = [client.post("/v1/predict", content=png).json()["prediction_id"] for _ in range(3)]
        _eventually(lambda: len(_events(serve[0], "shadow")) == 3)
        shadows = _events(serve[0], "shadow")
        assert {e.paired_with for e in shadows} == set(ids) and {e.model_version for e in shadows} == {"2"}
        assert {e.model_version for e in _events(serve[0], "champion")} == {"1"}
        assert (
            "nicheloop_shadow_calls_dropped_total 0.0"
            in client.get("/metrics", headers=KEYS["operator"]).text
        )
        serve[0] = dataclasses.replace(
            serve[0], settings=serve[0].settings.model_copy(update={"shadow_max_concurrency": 0})
        )
        client.post("/v1/predict", content=png)
        metrics = client.get("/metrics", headers=KEYS["operator"]).text
        assert "nicheloop_shadow_calls_dropped_total 1.0" in metrics
    assert len(_events(serve[0], "shadow")) == 3
    by_arm = 'nicheloop_model_calls_total{arm="%s",model_version="%s",outcome="ok"} %s'
    assert by_arm % ("champion", "1", "4.0") in metrics and by_arm % ("shadow", "2", "3.0") in metrics
    assert 'nicheloop_model_call_seconds_count{arm="shadow",model_version="2"} 3.0' in metrics


@pytest.mark.parametrize("priority", ["idle", "normal"])
def test_idle_shadow_calls_go_untimed_and_a_starved_one_is_dropped_not_failed(
    serve: list[GatewayResources], res: GatewayResources, registry: OneVersion, png: bytes, priority: str
) -> None:
    live = Rollouts(res.store).create(
        Rollout("2", "1", mirror=1.0), plan={}, actor="t", reason="", now=time.time()
    )
    serve.append(_with_rollout(res, registry, shadow_priority=priority))
    key = (live.id or 0, "shadow")

    def shadow_counts() -> ArmCalls:
        with TestClient(api, raise_server_exceptions=False, headers=KEYS["app"]) as client:
            assert client.post("/v1/predict", content=png).status_code == 200
            _eventually(lambda: not serve[0].rollout.shadows)  # type: ignore[union-attr]
        return serve[0].rollout.counter.take().get(key, ArmCalls())  # type: ignore[union-attr]

    answered = shadow_counts()
    assert (answered.calls, answered.errors) == (1, 0)
    assert sum(answered.latency.values()) == (0 if priority == "idle" else 1)  # the wait is not the model's
    serve[0] = dataclasses.replace(serve[0], shadow=Broken(ModelSlot(registry, lambda: "2")))  # times out
    starved = shadow_counts()
    dropped = serve[0].rollout.counter.dropped  # type: ignore[union-attr]
    if priority == "idle":  # it waited for spare CPU: not the candidate's failure
        assert (starved.calls, dropped) == (0, 1)
    else:
        assert (starved.calls, starved.errors, dropped) == (1, 1, 0)


def test_a_failing_candidate_is_counted_and_the_champion_answers(
    serve: list[GatewayResources], res: GatewayResources, registry: OneVersion, png: bytes
) -> None:
    live = Rollouts(res.store).create(
        Rollout("2", "1", state="canary", share=1.0), plan={}, actor="t", reason="", now=time.time()
    )
    serve.append(_with_rollout(res, registry, candidate=Broken(ModelSlot(registry, lambda: "2"))))
    with TestClient(api, raise_server_exceptions=False, headers=KEYS["app"]) as client:
        answer = client.post("/v1/predict", content=png)
        metrics = client.get("/metrics", headers=KEYS["operator"]).text
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"
    by_arm = 'nicheloop_model_calls_total{arm="%s",model_version="%s",outcome="%s"} 1.0'
    assert by_arm % ("candidate", "2", "failed") in metrics and by_arm % ("champion", "1", "ok") in metrics
    counted = serve[0].rollout.counter.take()  # type: ignore[union-attr]
    flushed = Rollouts(res.store).arm_calls(live.id or 0, since=0.0)
    failed = counted.get((live.id or 0, "candidate"), flushed.get("candidate"))
    assert failed is not None and (failed.calls, failed.errors) == (1, 1)


def test_a_silent_controller_gets_the_candidate_nothing(
    serve: list[GatewayResources], res: GatewayResources, registry: OneVersion, png: bytes
) -> None:
    old = time.time() - 600  # the controller's last heartbeat, beyond rollout_stale_s
    Rollouts(res.store).create(
        Rollout("2", "1", state="canary", share=1.0, mirror=1.0), plan={}, actor="t", reason="", now=old
    )
    serve.append(_with_rollout(res, registry))
    with TestClient(api, raise_server_exceptions=False, headers=KEYS["app"]) as client:
        assert client.post("/v1/predict", content=png).json()["model_version"] == "1"
    assert not _events(serve[0], "candidate") and not _events(serve[0], "shadow")


def test_arm_counts_are_flushed_to_the_store_and_kept_when_it_fails(tmp_path: Path) -> None:
    from nicheloop.store import Store

    rollouts = Rollouts(Store(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    live = rollouts.create(Rollout("2", "1", mirror=0.5), plan={}, actor="t", reason="", now=time.time())
    watch = RoutingWatch(rollouts, refresh_s=0.0, stale_s=60.0)

    async def scenario() -> None:
        assert (await watch.current()) is not None
        for ms in (10.0, 20.0, 400.0):
            watch.counter.record(live.id or 0, "shadow", ms, ok=ms < 100)
        watch.rollouts = None  # type: ignore[assignment]  # the store is unreachable: counts stay
        await watch._read()
        watch.rollouts = rollouts
        await watch._read()

    asyncio.run(scenario())
    shadow = rollouts.arm_calls(live.id or 0, since=0.0)["shadow"]
    assert (shadow.calls, shadow.errors) == (3, 1)
    p50, p99 = quantile_ms(shadow.latency, 0.5), quantile_ms(shadow.latency, 0.99)
    assert p50 is not None and 20 <= p50 <= 22 and p99 is not None and 400 <= p99 <= 440


def test_a_models_own_bug_is_a_502_that_names_it_and_a_candidates_is_shielded(
    serve: list[GatewayResources], res: GatewayResources, registry: OneVersion, png: bytes
) -> None:
    Rollouts(res.store).create(
        Rollout("2", "1", state="canary", share=1.0), plan={}, actor="t", reason="", now=time.time()
    )
    serve.append(_with_rollout(res, registry, candidate=Buggy(ModelSlot(registry, lambda: "2"))))
    with TestClient(api, raise_server_exceptions=False, headers=KEYS["app"]) as client:
        shielded = client.post("/v1/predict", content=png)
        serve[0] = dataclasses.replace(serve[0], predictor=Buggy(ModelSlot(registry, lambda: "1")))
        failed = client.post("/v1/predict", content=png)
    assert shielded.status_code == 200 and shielded.json()["model_version"] == "1"
    assert (
        failed.status_code == 502 and "champion model failed" in failed.text and "RuntimeError" in failed.text
    )
    assert "Sizes of tensors" not in failed.text  # the log has it; callers get the kind


def test_with_no_rollout_the_champions_calls_are_counted_and_flushed_seldom(
    serve: list[GatewayResources], res: GatewayResources, registry: OneVersion, png: bytes
) -> None:
    serve.append(_with_rollout(res, registry))
    with TestClient(api, raise_server_exceptions=False, headers=KEYS["app"]) as client:
        assert all(client.post("/v1/predict", content=png).status_code == 200 for _ in range(3))
    watch = serve[0].rollout
    assert watch is not None
    # the flushes made while serving held them back (QUIET_FLUSH_S); one after the window carries all
    rollouts = Rollouts(res.store)
    assert rollouts.arm_calls(NO_ROLLOUT, since=0.0) == {}
    assert watch.counter.take(now=time.monotonic()) == {}
    later = watch.counter.take(now=time.monotonic() + QUIET_FLUSH_S + 1)
    assert set(later) == {(NO_ROLLOUT, "champion")} and later[(NO_ROLLOUT, "champion")].calls == 3
    assert watch.counter.take(now=time.monotonic() + QUIET_FLUSH_S + 2) == {}  # a new window began
    watch._sync(later)
    stored = rollouts.arm_calls(NO_ROLLOUT, since=0.0)["champion"]
    assert (stored.calls, stored.errors, sum(stored.latency.values())) == (3, 0, 3)
