"""The controller on a real (SQLite) store, a stand-in registry and scripted evidence, on a fake
clock: a good candidate is promoted step by step, a bad one rolled back, a crashed controller's
successor resumes without a double move, and the champion alias follows only recorded moves."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from pydantic import BaseModel

from nicheloop.contracts import ROLLOUTS_TOPIC, RolloutMoved
from nicheloop.errors import Conflict, GateRefused, NotFound, NotReady
from nicheloop.keys import Audit
from nicheloop.latency import bucket
from nicheloop.registry import STOPGAP_OF, VersionInfo
from nicheloop.rollouts import ArmCalls, Rollout, RolloutEvent, Rollouts
from rollout.controller import Controller, adopt, kafka_announce, operate, start_rollout, sync_champion
from rollout.gates import Arm, Inputs, Live, Paired
from rollout.machine import NotAllowed
from rollout.plan import RolloutPlan
from rollout.promote import PREVIOUS
from rollout.status import describe
from tests.unit.rollout.arms import CHAMPION
from tests.unit.rollout.arms import GOOD as GOOD_ARM

PLAN = RolloutPlan(
    steps=(0.05, 0.5), min_step_s=60, max_step_s=3600, bake_s=120, interval_s=10, min_labels=200
)
GOOD = Live(
    CHAMPION,
    GOOD_ARM,
    Paired(pairs=500, agree=480, labeled=300, candidate_only=9, champion_only=8),
    Inputs(4000, 40000, {"brightness": 0.02}),  # both cohorts send the same kind of images
)
ERRS = Live(
    CHAMPION, Arm(calls=4000, errors=400, p99_ms=80.0, labels=10, correct=9), Paired(pairs=500, agree=480)
)


@dataclass
class Registry:
    """Stands in for MLflow (the real one: tests/integration); versions 1..9 exist."""

    aliases: dict[str, str] = field(default_factory=lambda: {"champion": "1", "candidate": "2"})
    moves: list[tuple[str, str]] = field(default_factory=list)
    stopgaps: dict[str, str] = field(default_factory=dict)  # stopgap version -> the version it patches
    parents: dict[str, str] = field(default_factory=dict)  # else a version's parent is the one before

    def version(self, version: str) -> VersionInfo:
        if version not in {str(i) for i in range(1, 10)}:
            raise NotFound(f"no version {version}")
        if version in self.stopgaps:
            patched = self.stopgaps[version]
            return VersionInfo(
                "m", version, f"run{version}", {"parent_version": patched, STOPGAP_OF: patched}, []
            )
        parent = self.parents.get(version, str(int(version) - 1))
        return VersionInfo("m", version, f"run{version}", {"parent_version": parent}, [])

    def resolve(self, alias: str) -> VersionInfo:
        if alias not in self.aliases:  # as MLflow's registry says it
            raise NotReady(f"no version has alias {alias!r}")
        return self.version(self.aliases[alias])

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return {"holdout_accuracy": 0.9, "parent_holdout_accuracy": 0.88}

    def set_alias(self, alias: str, version: str) -> None:
        self.moves.append((alias, version))
        self.aliases[alias] = version


@dataclass
class Scripted:
    """Live evidence as the test says; counts how often it was read."""

    live_now: Live = GOOD
    reads: int = 0

    def live(self, rollout: Rollout, plan: RolloutPlan, now: float) -> Live:
        self.reads += 1
        return self.live_now


def _ticks(controller: Controller, start: float, end: float, every: float = 10.0) -> list[str]:
    moves, now = [], start
    while now <= end:
        move = controller.tick(now)
        if move is not None:
            moves.append(f"{move.after.state}:{move.after.share:g}")
        now += every
    return moves


def test_a_good_candidate_is_promoted_step_by_step_and_the_alias_follows_the_record(
    rollouts: Rollouts,
) -> None:
    reg = Registry()
    first = start_rollout(rollouts, reg, PLAN, now=0.0, actor="ops")
    assert (first.state, first.candidate, first.champion, first.mirror) == (
        "shadow",
        "2",
        "1",
        PLAN.shadow_share,
    )
    controller = Controller(rollouts, reg, Scripted(), holder="c1")
    assert _ticks(controller, 0.0, 400.0) == ["canary:0.05", "canary:0.5", "promoted:1", "baked:1"]
    assert reg.aliases["champion"] == "2" and (PREVIOUS, "1") in reg.moves
    trail = rollouts.history(first.id)
    assert [e.to_state for e in trail] == ["shadow", "canary", "canary", "promoted", "baked"]
    assert {g["gate"] for g in trail[1].figures} >= {"agreement", "paired_accuracy", "error_rate"}
    assert "offline gates passed" in trail[0].reason and trail[0].actor == "ops"


def test_a_candidate_that_errs_is_rolled_back_and_never_champion(rollouts: Rollouts) -> None:
    reg, source = Registry(), Scripted()
    start_rollout(rollouts, reg, PLAN, now=0.0, actor="ops")
    controller = Controller(rollouts, reg, source, holder="c1", audit=Audit(rollouts.store))
    assert _ticks(controller, 0.0, 60.0) == ["canary:0.05"]
    source.live_now = ERRS
    assert _ticks(controller, 70.0, 100.0) == ["rolled_back:0"]  # at the first failing check
    logged = Audit(rollouts.store).read()  # the controller's own moves, in the audit log too
    assert [(e.action, e.actor, e.role, e.source) for e in logged] == [
        ("rollout.rolled_back", "controller", "operator", "c1"),
        ("rollout.canary", "controller", "operator", "c1"),
    ]
    assert "10.0% of the candidate's calls failed" in logged[0].detail["reason"]
    assert logged[0].detail["from"] == "canary"
    assert reg.aliases["champion"] == "1" and ("champion", "2") not in reg.moves
    assert (
        rollouts.live() is None and "10.0% of the candidate's calls failed" in rollouts.history()[-1].reason
    )


class Unreadable:
    def live(self, rollout: Rollout, plan: RolloutPlan, now: float) -> Live:
        raise OSError("the store is unreachable")


def test_a_controller_that_cannot_read_evidence_lets_the_share_lapse(rollouts: Rollouts) -> None:
    reg = Registry()
    start_rollout(rollouts, reg, PLAN, now=0.0, actor="ops")
    assert _ticks(Controller(rollouts, reg, Scripted(), holder="c1"), 0.0, 60.0) == ["canary:0.05"]
    broken = Controller(rollouts, reg, Unreadable(), holder="c1")
    for now in (70.0, 80.0, 150.0):
        with pytest.raises(OSError):
            broken.tick(now)
    routing = rollouts.routing(155.0, stale_s=90.0)
    assert routing is not None and routing.share == 0.0 and routing.mirror == 0.0
    assert rollouts.routing(100.0, stale_s=90.0).share == 0.05  # type: ignore[union-attr]


def test_a_successor_resumes_after_the_lease_expires_without_a_double_move(rollouts: Rollouts) -> None:
    reg = Registry()
    start_rollout(rollouts, reg, PLAN, now=0.0, actor="ops")
    first, second = (Controller(rollouts, reg, Scripted(), holder=h) for h in ("c1", "c2"))
    assert _ticks(first, 0.0, 110.0) == ["canary:0.05"]  # then c1 dies, its lease good until 140
    stale = rollouts.live()
    assert second.tick(125.0) is None  # the step is due, but c1 may still be alive
    assert rollouts.live() == stale
    move = second.tick(141.0)
    assert move is not None and move.after.share == 0.5 and move.before.share == 0.05
    with pytest.raises(Conflict):  # what c1 would have stored from its last read
        rollouts.record(stale, stale, actor="c1", reason="late")  # type: ignore[arg-type]
    assert [e.to_share for e in rollouts.history()] == [0.0, 0.05, 0.5]


def test_an_alias_left_behind_by_a_crash_is_repaired_from_the_record(rollouts: Rollouts) -> None:
    reg = Registry()
    r = start_rollout(rollouts, reg, PLAN, now=0.0, actor="ops")
    promoted = Rollout("2", "1", "promoted", share=1.0, entered_at=5.0, revision=1)
    rollouts.record(r, promoted, actor="controller", reason="every gate passed")  # crash before the alias
    assert reg.aliases["champion"] == "1"
    Controller(rollouts, reg, Scripted(), holder="c2").tick(10.0)
    assert reg.aliases["champion"] == "2"
    sync_champion(reg, rollouts.live())  # type: ignore[arg-type]
    assert reg.moves.count(("champion", "2")) == 1  # idempotent


def test_the_first_version_adopted_becomes_champion_with_no_previous(rollouts: Rollouts) -> None:
    reg = Registry(aliases={"source": "3"})  # a fresh registry: no version is champion yet
    stored = adopt(rollouts, reg, now=0.0, actor="benchmark", reason="serve it", version="3")
    assert (stored.state, stored.candidate) == ("baked", "3")
    assert reg.moves == [("champion", "3")]
    adopt(rollouts, reg, now=1.0, actor="benchmark", reason="serve it", version="4")
    assert reg.moves[1:] == [(PREVIOUS, "3"), ("champion", "4")]


def test_a_newer_candidate_aborts_the_live_rollout_and_starts_over(rollouts: Rollouts) -> None:
    reg = Registry()
    start_rollout(rollouts, reg, PLAN, now=0.0, actor="ops")
    reg.aliases["candidate"] = "3"
    move = Controller(rollouts, reg, Scripted(), holder="c1", audit=Audit(rollouts.store)).tick(20.0)
    assert move is not None and move.after.state == "aborted" and "version 3" in move.reason
    logged = [(e.action, e.target.split()[-1], e.detail["from"]) for e in Audit(rollouts.store).read()]
    assert logged == [("rollout.shadow", "3", "none"), ("rollout.aborted", "2", "shadow")]
    fresh = rollouts.live()
    assert fresh is not None and (fresh.candidate, fresh.state, fresh.entered_at) == ("3", "shadow", 20.0)


def test_operators_pause_resume_force_and_roll_back_with_the_alias_following(rollouts: Rollouts) -> None:
    reg = Registry()
    start_rollout(rollouts, reg, PLAN, now=0.0, actor="ops")
    assert operate(rollouts, reg, "pause", now=1.0, actor="ann", reason="look").state == "hold"
    assert Controller(rollouts, reg, Scripted(), holder="c1").tick(5000.0) is None  # a hold stays
    assert operate(rollouts, reg, "resume", now=2.0, actor="ann", reason="ok").state == "shadow"
    assert operate(rollouts, reg, "promote", now=3.0, actor="ann", reason="hotfix").state == "promoted"
    assert reg.aliases["champion"] == "2"
    assert operate(rollouts, reg, "rollback", now=4.0, actor="bob", reason="bad").state == "rolled_back"
    assert reg.aliases["champion"] == "1"
    assert [e.actor for e in rollouts.history()] == ["ops", "ann", "ann", "ann", "bob"]
    with pytest.raises(NotFound, match="no rollout is live"):
        operate(rollouts, reg, "pause", now=5.0, actor="ann", reason="x")


def test_starting_needs_the_offline_gates_and_a_known_version(rollouts: Rollouts) -> None:
    reg = Registry()
    with pytest.raises(NotFound):
        start_rollout(rollouts, reg, PLAN, now=0.0, actor="ops", version="x")
    reg.aliases["candidate"] = "5"  # trained from 4, not from the champion
    with pytest.raises(GateRefused, match="offline_accuracy"):
        start_rollout(rollouts, reg, PLAN, now=0.0, actor="ops")
    assert rollouts.live() is None
    start_rollout(rollouts, reg, PLAN, now=0.0, actor="ops", version="2")
    with pytest.raises(NotAllowed, match="only a held rollout"):
        operate(rollouts, reg, "resume", now=1.0, actor="ann", reason="x")


def test_status_shows_the_step_every_gate_and_what_it_waits_for(rollouts: Rollouts) -> None:
    reg, source = Registry(), Scripted()
    r = start_rollout(rollouts, reg, PLAN, now=0.0, actor="ops")
    assert "the controller's first check" in describe(rollouts, r, 0.0)["waiting_for"]
    source.live_now = Live(
        CHAMPION, Arm(calls=4000, errors=8, p99_ms=80.0, labels=20, correct=19), GOOD.paired
    )
    Controller(rollouts, reg, source, holder="c1").tick(30.0)
    status = describe(rollouts, rollouts.live(), 45.0)  # type: ignore[arg-type]
    assert (status["state"], status["step"], status["heartbeat_age_s"], status["in_state_s"]) == (
        "shadow", "shadow", 15.0, 45.0,
    )  # fmt: skip
    assert {g["gate"]: g["verdict"] for g in status["gates"]}["paired_accuracy"] == "pass"
    assert "calibration: 20 candidate labels; need 200" in status["waiting_for"]
    assert "15s more in this step" in status["waiting_for"]
    # what each arm's traffic looked like over the last five minutes, as the gateways flushed it
    rid = r.id or 0
    rollouts.add_calls(
        {(rid, "champion"): ArmCalls(600, 6, {bucket(40.0): 590, bucket(900.0): 10})}, now=40.0
    )
    rollouts.add_calls({(rid, "shadow"): ArmCalls(300, 0, {bucket(70.0): 300})}, now=-400.0)  # too old
    arms = describe(rollouts, rollouts.live(), 45.0)["arms"]  # type: ignore[arg-type]
    champion = arms["champion"]
    assert set(arms) == {"champion"} and (champion["rps"], champion["error_rate"]) == (2.0, 0.01)
    assert champion["p50_ms"] == pytest.approx(40, rel=0.15)
    assert champion["p99_ms"] == pytest.approx(900, rel=0.15)
    held = operate(rollouts, reg, "pause", now=50.0, actor="ann", reason="look")
    assert "an operator" in describe(rollouts, held, 60.0)["waiting_for"]


@dataclass
class Sent:
    """Stands in for the durable Kafka publisher (the real one: tests/integration)."""

    events: list[tuple[str, str, BaseModel]] = field(default_factory=list)

    def publish_durable(self, topic: str, key: str, event: BaseModel, ack_timeout_s: float = 5.0) -> None:
        self.events.append((topic, key, event))


def test_every_stored_move_is_announced_on_the_rollouts_topic_from_the_trail(rollouts: Rollouts) -> None:
    reg, sent = Registry(), Sent()
    r = start_rollout(rollouts, reg, PLAN, now=0.0, actor="ops")
    controller = Controller(rollouts, reg, Scripted(), holder="c1", announce=kafka_announce(sent, "m"))
    controller.tick(60.0)  # sends the start, then stores the first canary step
    operate(rollouts, reg, "rollback", now=70.0, actor="ann", reason="changed my mind")  # from a CLI
    controller.tick(80.0)
    controller.tick(90.0)  # nothing new: nothing sent twice
    assert [(t, k) for t, k, _ in sent.events] == [(ROLLOUTS_TOPIC, str(r.id))] * 3
    moves = [e for _, _, e in sent.events]
    assert [(m.from_state, m.to_state, m.to_share, m.actor) for m in moves] == [  # type: ignore[attr-defined]
        (None, "shadow", 0.0, "ops"),
        ("shadow", "canary", 0.05, "controller"),
        ("canary", "rolled_back", 0.0, "ann"),
    ]
    assert RolloutMoved.model_validate_json(moves[2].model_dump_json()).reason == "changed my mind"
    assert len({m.event_id for m in moves}) == 3 and rollouts.unpublished() == []


def test_a_failed_send_is_sent_again_on_the_next_tick(rollouts: Rollouts) -> None:
    reg, sent, down = Registry(), Sent(), [True]
    start_rollout(rollouts, reg, PLAN, now=0.0, actor="ops")

    def flaky(event: RolloutEvent) -> None:
        if down[0]:
            raise OSError("broker down")
        kafka_announce(sent, "m")(event)

    controller = Controller(rollouts, reg, Scripted(), holder="c1", announce=flaky)
    controller.tick(10.0)  # the tick itself goes on
    routing = rollouts.routing(15.0, stale_s=10.0)
    assert sent.events == [] and routing is not None and routing.mirror > 0  # it beat at 10
    down[0] = False
    controller.tick(20.0)
    assert [e.to_state for _, _, e in sent.events] == ["shadow"]  # type: ignore[attr-defined]


def test_a_trained_candidate_retires_a_stopgaps_rollout_which_no_newer_candidate_supersedes(
    rollouts: Rollouts,
) -> None:
    """Version 2 is a stopgap of champion 1: it starts without held-out figures (its shadow wins
    judge it); a newer candidate alias does not abort it (it would inherit the stopgap's plan); a
    trained version 3 started from 1 rolls it back and takes its place."""
    reg = Registry(stopgaps={"2": "1"})
    stopgap = start_rollout(rollouts, reg, PLAN, now=0.0, actor="policy")
    assert (stopgap.state, stopgap.candidate) == ("shadow", "2")
    assert "offline_accuracy" in rollouts.history(stopgap.id)[0].reason
    reg.aliases["candidate"] = "3"
    assert Controller(rollouts, reg, Scripted(), holder="c1").tick(10.0) is None
    assert rollouts.live() == rollouts.get(stopgap.id or 0)
    reg.stopgaps["3"] = "1"  # a second stopgap does not retire the first
    with pytest.raises(Conflict):
        start_rollout(rollouts, reg, PLAN, now=20.0, actor="policy", version="3")
    del reg.stopgaps["3"]
    reg.aliases["candidate"] = "2"
    with pytest.raises(GateRefused, match="trained from version 2"):  # 3's parent is 2, not champion 1
        start_rollout(rollouts, reg, PLAN, now=30.0, actor="policy", version="3")
    reg.stopgaps["3"] = "9"  # 9 is no champion: the stopgap is stale
    with pytest.raises(GateRefused, match="stale"):
        start_rollout(rollouts, reg, PLAN, now=35.0, actor="policy", version="3")
    del reg.stopgaps["3"]
    reg.parents["4"] = "1"
    trained = start_rollout(rollouts, reg, PLAN, now=40.0, actor="policy", version="4")
    assert (trained.candidate, trained.champion, trained.state) == ("4", "1", "shadow")
    assert rollouts.get(stopgap.id or 0).state == "rolled_back" and reg.aliases["champion"] == "1"
    assert "trained version 4 replaces the stopgap" in rollouts.history(stopgap.id)[-1].reason


def test_a_version_trained_from_the_version_a_champion_stopgap_patches_compares_with_it(
    rollouts: Rollouts,
) -> None:
    """Stopgap 2 of version 1 is champion; version 3, trained from 1 while 2 was in its rollout,
    is not stale: 2 only moved 1's statistics."""
    reg = Registry(aliases={"champion": "2", "candidate": "3"}, stopgaps={"2": "1"}, parents={"3": "1"})
    started = start_rollout(rollouts, reg, PLAN, now=0.0, actor="policy")
    assert (started.candidate, started.champion) == ("3", "2")
