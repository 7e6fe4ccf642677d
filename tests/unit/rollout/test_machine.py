"""The rollout state machine on a fake clock: steps advance only on passing gates and elapsed time,
evidence too thin holds, failures roll back, operators act only where it makes sense."""

from __future__ import annotations

from pathlib import Path

import pytest

from nicheloop.errors import InvalidInput
from nicheloop.rollouts import Rollout
from rollout.gates import GateResult
from rollout.machine import (
    NotAllowed,
    Transition,
    decide,
    force_promote,
    pause,
    resume,
    retire,
    rollback,
    start,
    supersede,
)
from rollout.plan import RolloutPlan, load_plan

PLAN = RolloutPlan(steps=(0.05, 0.25, 0.5), min_step_s=60, max_step_s=600, bake_s=120, max_failures=2)
PASS = [GateResult("accuracy", "pass", "fine"), GateResult("errors", "pass", "fine", hard=True)]
HOLD = [GateResult("accuracy", "hold", "12 labels"), GateResult("errors", "pass", "fine", hard=True)]
SOFT_FAIL = [GateResult("accuracy", "fail", "worse"), GateResult("errors", "pass", "fine", hard=True)]
HARD_FAIL = [GateResult("accuracy", "hold", "few"), GateResult("errors", "fail", "5% errors", hard=True)]


def _run(r: Rollout, results: list[GateResult], times: list[float]) -> list[Transition]:
    """Reconcile at each time in ``times`` with the same ``results``; the moves made."""
    moves = []
    for now in times:
        move = decide(r, results, PLAN, now)
        if move is not None:
            assert move.after.revision == r.revision + 1  # each stored move bumps the revision once
            moves.append(move)
            r = move.after
    return moves


def test_a_good_candidate_goes_through_every_step_in_order_then_bakes() -> None:
    first = start("2", "1", PLAN, 0.0)
    assert (first.state, first.share, first.mirror) == ("shadow", 0.0, PLAN.shadow_share)
    moves = _run(first, PASS, [float(t) for t in range(0, 1000, 30)])
    path = [(m.after.state, m.after.share) for m in moves]
    assert path == [("canary", 0.05), ("canary", 0.25), ("canary", 0.5), ("promoted", 1.0), ("baked", 1.0)]
    entered = [m.after.entered_at for m in moves]
    assert all(b - a >= PLAN.min_step_s for a, b in zip(entered, entered[1:]))  # no step shorter


def test_no_step_advances_before_its_minimum_time() -> None:
    assert decide(Rollout("2", "1", entered_at=100.0), PASS, PLAN, 159.0) is None
    assert decide(Rollout("2", "1", entered_at=100.0), PASS, PLAN, 160.0) is not None


def test_thin_evidence_holds_the_step_and_past_the_longest_wait_an_operator_decides() -> None:
    r = Rollout("2", "1", state="canary", step=1, share=0.25, entered_at=0.0)
    assert decide(r, HOLD, PLAN, 599.0) is None
    held = decide(r, HOLD, PLAN, 600.0)
    assert held is not None and held.after.state == "hold" and "an operator decides" in held.reason
    assert (held.after.share, held.after.mirror) == (0.25, 0.0)  # frozen where it was, not advanced
    assert decide(held.after, PASS, PLAN, 10_000.0) is None  # a hold never moves by itself
    back = resume(held.after, PLAN, 700.0, actor="ops", reason="labels are coming")
    assert (back.after.state, back.after.step, back.after.entered_at) == ("canary", 1, 700.0)


def test_a_hard_failure_rolls_back_at_once_and_the_share_goes_to_zero() -> None:
    move = decide(Rollout("2", "1", state="canary", step=2, entered_at=0.0), HARD_FAIL, PLAN, 5.0)
    assert move is not None and move.after.state == "rolled_back" and "5% errors" in move.reason
    assert move.after.share == 0.0 and move.gates == tuple(HARD_FAIL)


def test_statistical_failures_count_and_roll_back_at_the_limit() -> None:
    moves = _run(Rollout("2", "1", state="canary", entered_at=0.0), SOFT_FAIL, [10.0, 20.0, 30.0])
    assert [(m.after.state, m.after.failures) for m in moves] == [("canary", 1), ("rolled_back", 2)]
    assert not moves[0].moved and "failed check 1 of 2" in moves[0].reason


def test_the_ends_never_move() -> None:
    for state in ("baked", "rolled_back", "aborted"):
        assert decide(Rollout("2", "1", state=state), HARD_FAIL, PLAN, 1e9) is None  # type: ignore[arg-type]


def test_operators_act_only_where_it_makes_sense() -> None:
    canary = Rollout("2", "1", state="canary", step=0)
    paused = pause(canary, PLAN, 1.0, actor="ops", reason="look first")
    assert paused.after.state == "hold" and paused.actor == "ops"
    with pytest.raises(NotAllowed, match="only a held rollout"):
        resume(canary, PLAN, 1.0, actor="ops", reason="x")
    with pytest.raises(NotAllowed, match="needs a reason"):
        force_promote(canary, PLAN, 1.0, actor="ops", reason=" ")
    forced = force_promote(paused.after, PLAN, 2.0, actor="ops", reason="hotfix")
    assert forced.after.state == "promoted" and forced.reason == "forced: hotfix" and forced.after.share == 1
    done = rollback(forced.after, PLAN, 3.0, actor="ops", reason="bad")
    assert done.after.state == "rolled_back" and done.after.share == 0
    for act in (pause, rollback):
        with pytest.raises(NotAllowed):
            act(done.after, PLAN, 4.0, actor="ops", reason="again")


def test_a_retired_stopgap_is_rolled_back_before_promotion_and_baked_after() -> None:
    why = "trained version 3 replaces the stopgap"
    shadow = retire(Rollout("2", "1", state="shadow"), PLAN, 5.0, actor="policy", reason=why)
    assert (shadow.after.state, shadow.after.share, shadow.reason) == ("rolled_back", 0, why)
    held = retire(Rollout("2", "1", state="hold", held="canary"), PLAN, 5.0, actor="policy", reason=why)
    assert held.after.state == "rolled_back"
    promoted = retire(Rollout("2", "1", state="promoted"), PLAN, 5.0, actor="policy", reason=why)
    assert (promoted.after.state, promoted.after.share) == ("baked", 1)  # it serves until 3 is promoted
    with pytest.raises(NotAllowed):
        retire(shadow.after, PLAN, 6.0, actor="policy", reason=why)


def test_a_newer_candidate_aborts_the_old_rollout_and_starts_over_in_shadow() -> None:
    aborted, fresh = supersede(Rollout("2", "1", state="canary", step=2, failures=1), "3", PLAN, 50.0)
    assert aborted.after.state == "aborted" and "version 3" in aborted.reason
    assert (fresh.candidate, fresh.champion, fresh.state, fresh.failures, fresh.entered_at) == (
        "3",
        "1",
        "shadow",
        0,
        50.0,
    )
    assert fresh.mirror == PLAN.shadow_share and fresh.share == 0.0 and aborted.after.share == 0.0


def test_plans_load_from_yaml_with_defaults_and_refuse_nonsense(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("steps: [0.1, 0.5]\nmin_labels: 50\n")
    plan = load_plan(path, ["max_failures=5"])
    assert (plan.steps, plan.min_labels, plan.max_failures, plan.bake_s) == ((0.1, 0.5), 50, 5, 3600.0)
    for text, words in [
        ("steps: [0.5, 0.1]\n", "rising"),
        ("min_step_s: 10\nmax_step_s: 5\n", "below"),
        ("nope: 1\n", "nope"),
        ("min_labels: true\n", "not true or false"),  # pydantic alone would read it as 1
        ("steps: [0.1, true]\n", "not true or false"),
    ]:
        path.write_text(text)
        with pytest.raises(InvalidInput, match=words):
            load_plan(path)


def test_shipped_rollout_plans_load() -> None:
    shipped = sorted((Path(__file__).parents[3] / "recipes" / "rollouts").glob("*.yaml"))
    assert shipped and all(load_plan(path).steps for path in shipped)
