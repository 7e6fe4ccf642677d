"""Promotion through the offline gate, around a stand-in registry."""

from dataclasses import dataclass, field

import pytest

from nicheloop.errors import Conflict, GateRefused
from nicheloop.registry import VersionInfo
from nicheloop.rollouts import Rollout, Rollouts
from rollout.promote import PREVIOUS, promote


@dataclass
class FakeRegistry:
    """Stands in for MLflow around the gate logic (the real registry is tested in integration)."""

    aliases: dict[str, str]
    parent: str
    metrics: dict[str, float]
    moves: list[tuple[str, str]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)  # every version's, besides its parent

    def resolve(self, alias: str) -> VersionInfo:
        v = self.aliases[alias]
        return VersionInfo("m", v, f"run{v}", {"parent_version": self.parent, **self.tags}, [alias])

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return self.metrics

    def set_alias(self, alias: str, version: str) -> None:
        self.moves.append((alias, version))
        self.aliases[alias] = version


def test_promotes_a_candidate_that_is_not_worse(rollouts: Rollouts) -> None:
    reg = FakeRegistry(
        {"champion": "1", "candidate": "2"}, "1", {"holdout_accuracy": 0.9, "parent_holdout_accuracy": 0.8}
    )
    result = promote(reg, rollouts, actor="t")  # type: ignore[arg-type]
    assert (result.previous, result.promoted) == ("1", "2")
    assert reg.moves == [(PREVIOUS, "1"), ("champion", "2")]
    assert rollouts.champion() == "2"  # recorded: serving follows the record, not the alias
    [event] = rollouts.history()
    assert (event.actor, event.to_state, event.candidate, event.champion) == ("t", "baked", "2", "1")
    assert "offline gates alone" in event.reason


def test_an_offline_promotion_is_refused_while_a_rollout_is_live(rollouts: Rollouts) -> None:
    rollouts.create(Rollout("5", "1"), plan={}, actor="ops", reason="gated", now=0.0)
    reg = FakeRegistry(
        {"champion": "1", "candidate": "2"}, "1", {"holdout_accuracy": 0.9, "parent_holdout_accuracy": 0.8}
    )
    with pytest.raises(Conflict, match="roll it back first"):
        promote(reg, rollouts, actor="t")  # type: ignore[arg-type]
    assert reg.moves == [] and rollouts.champion() == "1"


@pytest.mark.parametrize(
    "aliases, parent, metrics, words",
    [
        ({"champion": "2", "candidate": "2"}, "1", {}, "already the champion"),
        (
            {"champion": "3", "candidate": "2"},
            "1",
            {"holdout_accuracy": 1, "parent_holdout_accuracy": 0},
            "stale",
        ),
        (
            {"champion": "1", "candidate": "2"},
            "1",
            {"holdout_accuracy": 0.7, "parent_holdout_accuracy": 0.8},
            "below",
        ),
        ({"champion": "1", "candidate": "2"}, "1", {}, "no held-out comparison"),
    ],
)
def test_refuses_and_says_why(aliases, parent, metrics, words, rollouts: Rollouts) -> None:
    reg = FakeRegistry(dict(aliases), parent, metrics)
    with pytest.raises(GateRefused, match=words):
        promote(reg, rollouts, actor="t")  # type: ignore[arg-type]
    assert reg.moves == [] and rollouts.champion() is None


def test_a_plan_may_let_a_candidate_start_within_its_offline_tolerance(rollouts: Rollouts) -> None:
    from rollout.controller import start_rollout
    from rollout.plan import RolloutPlan
    from tests.unit.rollout.test_controller import Registry

    class OnePointWorse(Registry):
        def run_metrics(self, run_id: str) -> dict[str, float]:
            return {"holdout_accuracy": 0.9835, "parent_holdout_accuracy": 0.9917}  # one image in 121

    with pytest.raises(GateRefused, match="offline_accuracy"):
        start_rollout(rollouts, OnePointWorse(), RolloutPlan(), now=0.0, actor="t")
    started = start_rollout(
        rollouts, OnePointWorse(), RolloutPlan(offline_tolerance=0.02), now=0.0, actor="t"
    )
    assert started.state == "shadow"


@pytest.mark.parametrize(
    ("candidate_only", "parent_only", "starts"), [(0, 1, True), (2, 4, True), (0, 12, False), (1, 15, False)]
)
def test_a_rollout_refuses_a_held_out_loss_only_when_the_paired_test_finds_it(
    candidate_only: int, parent_only: int, starts: bool, rollouts: Rollouts
) -> None:
    from rollout.controller import start_rollout
    from rollout.plan import RolloutPlan
    from tests.unit.rollout.test_controller import Registry

    n = 121  # the same hold-out, paired: accuracy follows from the discordant counts

    class Paired(Registry):
        def run_metrics(self, run_id: str) -> dict[str, float]:
            return {
                "holdout_accuracy": (n - 20 + candidate_only) / n,
                "parent_holdout_accuracy": (n - 20 + parent_only) / n,
                "holdout_candidate_only": float(candidate_only),
                "holdout_parent_only": float(parent_only),
            }

    if starts:
        assert start_rollout(rollouts, Paired(), RolloutPlan(), now=0.0, actor="t").state == "shadow"
    else:
        with pytest.raises(GateRefused, match=f"{parent_only} images only the parent got right"):
            start_rollout(rollouts, Paired(), RolloutPlan(), now=0.0, actor="t")
    # promoting on the offline gates alone has no live evidence after it: any loss is refused
    reg = FakeRegistry({"champion": "1", "candidate": "2"}, "1", Paired().run_metrics("r"))
    with pytest.raises(GateRefused, match="below"):
        promote(reg, rollouts, actor="t")  # type: ignore[arg-type]
