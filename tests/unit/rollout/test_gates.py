"""Rollout gates are plug-ins: a registered gate takes part in promotion with its verdict and reason."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import pytest

from nicheloop.errors import GateRefused
from nicheloop.rollouts import Rollouts
from rollout.gates import GATES, Evidence, GateResult, Phase, gates, register_gate
from rollout.promote import promote
from tests.unit.rollout.test_promote import FakeRegistry


class Holds:
    """A test gate that never has enough evidence."""

    name: ClassVar[str] = "always_holds"
    phases: ClassVar[tuple[Phase, ...]] = ("offline",)

    def __call__(self, evidence: Evidence) -> GateResult:
        return GateResult(self.name, "hold", "too few labels yet", {"labels": 3.0})


@pytest.fixture
def with_holding_gate() -> Iterator[None]:
    gates()
    before = GATES.snapshot()
    register_gate(Holds)
    yield
    GATES.restore(before)


def _good() -> FakeRegistry:
    return FakeRegistry(
        {"champion": "1", "candidate": "2"}, "1", {"holdout_accuracy": 0.9, "parent_holdout_accuracy": 0.8}
    )


def test_the_offline_gates_are_registered() -> None:
    assert list(gates("offline")) == ["compression_fidelity", "offline_accuracy"]
    assert "offline_accuracy" not in gates("canary")  # each gate decides its own phases


def test_promotion_reports_every_gate_with_its_figures(rollouts: Rollouts) -> None:
    result = promote(_good(), rollouts, actor="t")  # type: ignore[arg-type]
    fidelity, gate = result.summary()["gates"]  # type: ignore[misc]
    assert fidelity["verdict"] == "pass" and "not a compressed version" in fidelity["reason"]
    assert gate["gate"] == "offline_accuracy" and gate["verdict"] == "pass"
    assert (gate["candidate_accuracy"], gate["champion_accuracy"]) == (0.9, 0.8)
    assert (result.candidate_accuracy, result.champion_accuracy) == (0.9, 0.8)


def test_a_registered_gate_that_holds_stops_promotion_and_says_why(
    with_holding_gate: None, rollouts: Rollouts
) -> None:
    reg = _good()
    with pytest.raises(GateRefused, match="always_holds gate: too few labels yet"):
        promote(reg, rollouts, actor="t")  # type: ignore[arg-type]
    assert reg.moves == []


def test_two_gates_of_one_name_are_refused(with_holding_gate: None) -> None:
    with pytest.raises(ValueError, match="two rollout gates are named 'always_holds'"):
        register_gate(type("Holds", (Holds,), {}))


@pytest.mark.parametrize(
    ("accuracy", "parent", "tolerance", "alpha", "pairs", "passed", "tested"),
    [
        (0.90, 0.90, 0.0, 0.05, (3, 3), True, False),  # not worse: no test needed
        (0.89, 0.90, 0.02, None, None, True, False),  # within the tolerance
        (0.976, 0.992, 0.0, None, (0, 2), False, False),  # worse, and nothing to test it with
        (0.976, 0.992, 0.0, 0.05, (0, 2), True, True),  # two images of 125: within chance
        (0.84, 0.96, 0.0, 0.05, (0, 15), False, True),  # fifteen: beyond it
    ],
)
def test_the_held_out_rule_refuses_a_loss_beyond_the_tolerance_only_when_it_is_beyond_chance(
    accuracy: float,
    parent: float,
    tolerance: float,
    alpha: float | None,
    pairs: tuple[int, int] | None,
    passed: bool,
    tested: bool,
) -> None:
    from rollout.gates.offline import held_out_verdict

    verdict = held_out_verdict(accuracy, parent, tolerance=tolerance, alpha=alpha, pairs=pairs)
    assert verdict.passed is passed
    assert (verdict.p_value is not None) is tested
    assert f"{accuracy:.4f}" in verdict.reason
    if tested:
        assert f"{pairs[1]} images only the parent got right" in verdict.reason  # type: ignore[index]
