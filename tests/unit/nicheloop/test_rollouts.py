"""Rollouts on the SQL store: moves are compare-and-set, every move leaves an audit line, one live
rollout at a time, one controller at a time, and a silent controller routes the candidate nothing
(SQLite here; PostgreSQL under the integration mark)."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from nicheloop.errors import Conflict, NotFound
from nicheloop.rollouts import Rollout, Rollouts
from nicheloop.store import Store

PLAN = {"steps": [0.05, 0.5]}


@pytest.fixture
def rollouts(any_store: Store) -> Rollouts:
    return Rollouts(any_store)


def _started(rollouts: Rollouts, candidate: str = "2", now: float = 100.0) -> Rollout:
    first = Rollout(candidate, "1", "shadow", mirror=0.2, entered_at=now)
    return rollouts.create(first, plan=PLAN, actor="ops", reason="new candidate", now=now)


def _canary(r: Rollout, share: float) -> Rollout:
    return dataclasses.replace(r, state="canary", share=share, mirror=0.0, revision=r.revision + 1)


def test_a_move_is_stored_with_its_audit_line(rollouts: Rollouts) -> None:
    r = _started(rollouts)
    moved = rollouts.record(
        r, _canary(r, 0.05), actor="controller", reason="gates passed", figures=[{"g": 1}]
    )
    assert rollouts.get(r.id or 0) == moved and rollouts.live() == moved
    trail = rollouts.history(r.id)
    assert [(e.from_state, e.to_state, e.to_share, e.actor) for e in trail] == [
        (None, "shadow", 0.0, "ops"),
        ("shadow", "canary", 0.05, "controller"),
    ]
    assert trail[1].figures == [{"g": 1}] and trail[1].reason == "gates passed"
    assert rollouts.plan(r.id or 0) == PLAN


def test_a_move_decided_from_a_stale_read_is_refused(rollouts: Rollouts) -> None:
    r = _started(rollouts)
    rollouts.record(r, _canary(r, 0.05), actor="controller", reason="first")
    with pytest.raises(Conflict, match="moved since revision 0"):
        rollouts.record(r, _canary(r, 0.25), actor="controller", reason="second, from the old read")
    assert rollouts.get(r.id or 0).share == 0.05 and len(rollouts.history(r.id)) == 2


def test_two_controllers_racing_on_one_move_store_it_once(rollouts: Rollouts) -> None:
    r = _started(rollouts)
    outcomes: list[str] = []

    def move(share: float) -> None:
        try:
            rollouts.record(r, _canary(r, share), actor=f"c{share}", reason="race")
            outcomes.append("stored")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=move, args=(s,)) for s in (0.05, 0.25, 0.5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict", "conflict", "stored"]
    assert len(rollouts.history(r.id)) == 2


def test_one_live_rollout_at_a_time(rollouts: Rollouts) -> None:
    r = _started(rollouts)
    with pytest.raises(Conflict, match="roll it back first"):
        _started(rollouts, "3")
    rollouts.record(
        r, dataclasses.replace(r, state="rolled_back", mirror=0.0, revision=1), actor="ops", reason="x"
    )
    assert rollouts.live() is None
    assert _started(rollouts, "3").candidate == "3" and rollouts.latest() == rollouts.live()


def test_a_silent_controller_routes_the_candidate_nothing(rollouts: Rollouts) -> None:
    r = _started(rollouts, now=100.0)
    r = rollouts.record(r, _canary(r, 0.25), actor="controller", reason="x")
    assert rollouts.routing(110.0, stale_s=30) is not None
    assert (rollouts.routing(110.0, stale_s=30).share, rollouts.routing(131.0, stale_s=30).share) == (
        0.25,
        0.0,
    )  # type: ignore[union-attr]
    rollouts.beat(r.id or 0, 130.0)
    assert rollouts.routing(131.0, stale_s=30).share == 0.25  # type: ignore[union-attr]


def test_one_controller_holds_the_lease_until_it_expires_or_is_released(rollouts: Rollouts) -> None:
    assert rollouts.acquire("a", 0.0, ttl_s=10)
    assert not rollouts.acquire("b", 5.0, ttl_s=10)
    assert rollouts.acquire("a", 5.0, ttl_s=10)  # renewal
    assert not rollouts.acquire("b", 14.0, ttl_s=10) and rollouts.acquire("b", 15.1, ttl_s=10)
    rollouts.release("b")
    assert rollouts.acquire("c", 16.0, ttl_s=10)


def test_unknown_ids_say_so(rollouts: Rollouts) -> None:
    with pytest.raises(NotFound, match="no rollout 42"):
        rollouts.get(42)
    assert rollouts.live() is None and rollouts.routing(0.0, stale_s=1) is None and rollouts.history() == []
