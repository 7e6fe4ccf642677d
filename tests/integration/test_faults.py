"""No event lost or counted twice under broker and consumer kills (real broker, real joiner)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.conftest import postgres_database
from tests.integration.faults import FaultRig, replay_into, run

pytestmark = pytest.mark.integration

EVENTS = int(os.environ.get("NICHELOOP_FAULT_EVENTS", "300"))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultRig]:
    url = postgres_database("faults") if request.param == "postgresql" else None
    rig = FaultRig(tmp_path_factory.mktemp("faults"), base_port=24092, database_url=url)
    try:
        rig.start_broker()
        rig.start_joiner()
        yield rig
    finally:
        rig.down()


def test_broker_killed_five_times_while_feedback_flows(rig: FaultRig) -> None:
    report = run(rig, EVENTS, broker_kills=5, consumer_kills=0, prefix="bk-")
    print(json.dumps(asdict(report)))
    assert report.broker_kills == 5
    assert (report.events_acked, report.joined, report.lost, report.duplicated) == (EVENTS, EVENTS, 0, 0)


def test_join_consumer_killed_three_times_mid_batch(rig: FaultRig) -> None:
    report = run(rig, EVENTS, broker_kills=0, consumer_kills=3, prefix="ck-")
    print(json.dumps(asdict(report)))
    assert report.consumer_kills == 3
    assert (report.events_acked, report.joined, report.lost, report.duplicated) == (EVENTS, EVENTS, 0, 0)


def test_replaying_both_topics_rebuilds_an_identical_store(rig: FaultRig, tmp_path: Path) -> None:
    url = (
        f"sqlite:///{tmp_path / 'replayed.db'}"
        if rig.store.engine.dialect.name == "sqlite"
        else postgres_database("faults_replayed")
    )
    fresh = replay_into(rig, url, group=f"replay-{rig.store.engine.dialect.name}")
    assert fresh.counts()["labeled_examples"] == rig.store.counts()["labeled_examples"] > 0
    assert fresh.content_hash() == rig.store.content_hash()
