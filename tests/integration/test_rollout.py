"""Gated rollouts on the real stack (Kafka, MLflow, Ray Serve, the SQL store, the controller
process): a candidate that looks right offline but disagrees with the champion live is rolled back
in shadow and never answers anyone; an equal candidate survives its controller being killed in
canary (its share lapses, the restarted controller resumes without a double move) and is promoted;
an alias moved by hand in MLflow is not served, and the controller puts it back; the images a
candidate in shadow answers otherwise are queued for review ahead of the rest. (The whole loop's
test promotes a trained candidate through shadow and canary too: tests/integration/test_loop.py.)"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from cli.demo import DEMO_PLAN, drive_rollout, send_labeled, stream, wait_for
from deploy.local import stack
from nicheloop.contracts import CHAMPION, utcnow
from nicheloop.registry import Registry
from nicheloop.rollouts import Rollouts
from nicheloop.settings import Settings
from nicheloop.store import Prediction, ReviewItem, Store
from nicheloop.synthetic import SyntheticStream, png_bytes
from rollout.operations import Operations
from rollout.plan import load_plan
from tests.integration.conftest import register_candidate, role

pytestmark = pytest.mark.integration


@pytest.fixture
def parts(live: Settings) -> Iterator[tuple[Registry, Operations, httpx.Client]]:
    """The registry, the operators' verbs and a client; the champion the test found is put back."""
    registry = Registry(live.tracking_uri, live.model_name)
    ops = Operations(Rollouts(Store(live.db_url)), registry)
    before = registry.resolve(CHAMPION).version
    with httpx.Client(base_url=live.serve_url, timeout=60, headers=role(live, "app")) as client:
        yield registry, ops, client
    if ops.status()["state"] in ("shadow", "canary", "hold", "promoted"):
        ops.act("rollback", actor="test", reason="test cleanup")
    if ops.rollouts.champion() != before:
        ops.adopt(actor="test", reason="test cleanup", version=before)


def _served(client: httpx.Client, n: int = 20) -> set[str]:
    """The versions that answer ``n`` requests with distinct keys."""
    image = png_bytes(SyntheticStream(seed=5, size=64).take(1)[0][0])
    return {
        client.post("/v1/predict", content=image, headers={"X-Request-Key": f"k{i}"}).json()["model_version"]
        for i in range(n)
    }


def test_a_candidate_that_disagrees_live_is_rolled_back_in_shadow(
    live: Settings, parts: tuple[Registry, Operations, httpx.Client]
) -> None:
    registry, ops, client = parts
    champion = registry.resolve(CHAMPION).version
    bad = register_candidate(live, registry, trained=False)
    started = ops.start(actor="test", plan=load_plan(DEMO_PLAN))
    assert (started["state"], started["candidate"]) == ("shadow", bad.version)
    final = drive_rollout(client, ops, SyntheticStream(seed=11, size=live.image_size), batch=30, timeout=300)
    assert final["state"] == "rolled_back"
    trail = ops.history(final["rollout_id"])
    assert _path(trail) == ["shadow", "rolled_back"]  # never answered anyone
    # its live answers decided: agreement, McNemar on the labeled pairs or calibration (which of them
    # is beyond doubt at the last check depends on how many pairs and labels have come in by then)
    assert any(gate in trail[-1]["reason"] for gate in ("agreement", "paired_accuracy", "calibration"))
    assert trail[-1]["figures"]
    assert ops.rollouts.champion() == champion and registry.resolve(CHAMPION).version == champion
    assert _served(client) == {champion}


def test_an_equal_candidate_survives_its_controller_dying_in_canary_and_is_promoted(
    live: Settings, parts: tuple[Registry, Operations, httpx.Client]
) -> None:
    registry, ops, client = parts
    champion = registry.resolve(CHAMPION).version
    good = register_candidate(live, registry, trained=True)
    ops.start(actor="test", plan=load_plan(DEMO_PLAN))
    images = SyntheticStream(seed=12, size=live.image_size)
    canary = ops.status()
    deadline = time.monotonic() + 300
    while canary["state"] != "canary":  # labeled traffic until the shadow step passes
        assert canary["state"] == "shadow" and time.monotonic() < deadline, canary
        send_labeled(client, images, 30)
        canary = ops.status()
    wait_for("both models to answer", lambda: _served(client) == {champion, good.version}, timeout=60)

    stack.kill_process(live, "controller")  # mid-canary: its heartbeat stops
    wait_for(
        "the candidate's share to lapse",
        lambda: _served(client) == {champion},
        timeout=live.rollout_stale_s + 4 * live.rollout_refresh_s + 30,
    )
    stack.start_controller(live)
    final = drive_rollout(client, ops, images, batch=30, timeout=300)
    assert final["state"] == "baked"
    trail = ops.history(final["rollout_id"])
    assert _path(trail) == ["shadow", "canary", "promoted", "baked"]
    assert [e["revision"] for e in trail] == list(range(len(trail)))  # resumed without a double move
    wait_for("the new champion to serve", lambda: _served(client) == {good.version}, timeout=60)

    # an alias moved by hand does not reach users, and the controller moves it back
    registry.set_alias(CHAMPION, champion)
    time.sleep(3 * live.reload_interval_s)
    assert _served(client) == {good.version}
    wait_for("the alias to follow the record", lambda: registry.resolve(CHAMPION).version == good.version)


def test_images_the_candidate_in_shadow_answers_otherwise_are_reviewed_first(
    live: Settings, parts: tuple[Registry, Operations, httpx.Client]
) -> None:
    registry, ops, client = parts
    store = Store(live.db_url)
    register_candidate(live, registry, trained=False)  # an untrained network: it disagrees often
    # no labels come, so the plan's paired gates hold and the candidate stays in shadow
    ops.start(actor="test", plan=load_plan(DEMO_PLAN, ["min_agreement=0"]))
    images, began = SyntheticStream(seed=23, size=live.image_size), utcnow()

    def queued() -> list[tuple[str, float, str, str | None]]:
        """Items the sampler queued since the test began: priority, the champion's label and the
        shadow's (None: not mirrored)."""
        shadow = aliased(Prediction)
        with Session(store.engine) as s:
            return [
                (pid, priority, champion, mirrored)
                for pid, priority, champion, mirrored in s.execute(
                    select(ReviewItem.prediction_id, ReviewItem.priority, Prediction.label, shadow.label)
                    .join(Prediction, Prediction.prediction_id == ReviewItem.prediction_id)
                    .outerjoin(shadow, shadow.paired_with == ReviewItem.prediction_id)
                    .where(ReviewItem.created_at >= began)
                ).all()
            ]

    def queued_disputes() -> bool:
        stream(client, images.take(live.sampling_every), {})  # unlabeled traffic, mirrored in shadow
        return sum(priority >= 1.0 for _, priority, _, _ in queued()) >= 3

    wait_for("the sampler to queue images the shadow disputes", queued_disputes, timeout=240, every=0.5)
    assert ops.status()["state"] == "shadow"
    items = queued()
    first = [(champion, mirrored) for _, priority, champion, mirrored in items if priority >= 1.0]
    # each item ranked above the sampler's usual [0, 1] is one the two models answered differently
    assert all(mirrored is not None and mirrored != champion for champion, mirrored in first)


def _path(trail: list[dict[str, object]]) -> list[object]:
    """The states a rollout went through (a counted failure is a move that stays in its state)."""
    return [e["to_state"] for i, e in enumerate(trail) if i == 0 or e["to_state"] != trail[i - 1]["to_state"]]
