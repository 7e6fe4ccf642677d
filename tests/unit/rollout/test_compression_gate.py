"""A compressed candidate is promoted only within the accuracy and calibration it may lose to its source."""

from __future__ import annotations

import pytest

from nicheloop.errors import GateRefused
from nicheloop.rollouts import Rollouts
from rollout.promote import offline_gates, promote
from tests.unit.rollout.test_promote import FakeRegistry


def _compressed(acc: float, ece: float, *, champion: str = "1") -> FakeRegistry:
    """Candidate 2 compiled from version 1, whose held-out accuracy was 0.95 and ECE 0.020."""
    return FakeRegistry(
        {"champion": champion, "candidate": "2"},
        "1",
        {
            "holdout_accuracy": acc,
            "parent_holdout_accuracy": 0.95,
            "holdout_ece": ece,
            "parent_holdout_ece": 0.020,
        },
        tags={"compressed_from": "1"},
    )


def test_a_compressed_candidate_within_tolerance_is_promoted_with_its_figures(rollouts: Rollouts) -> None:
    reg = _compressed(0.946, 0.028)  # 0.4 points and 0.008 ECE lost, under 0.5 and 0.01
    result = promote(reg, rollouts, actor="t")  # type: ignore[arg-type]
    assert result.promoted == "2" and ("champion", "2") in reg.moves
    fidelity, accuracy = result.summary()["gates"]  # type: ignore[misc]
    assert fidelity["gate"] == "compression_fidelity" and fidelity["verdict"] == "pass"
    assert fidelity["accuracy_drop_points"] == pytest.approx(0.4)
    assert fidelity["ece_increase"] == pytest.approx(0.008)
    # the retraining gate's zero tolerance would refuse the lost 0.4 points: it defers
    assert accuracy["verdict"] == "pass" and "held to compression_fidelity" in accuracy["reason"]


@pytest.mark.parametrize(
    ("acc", "ece", "words"), [(0.944, 0.020, "loses 0.60 accuracy points"), (0.950, 0.031, r"\+0.0110 ECE")]
)
def test_a_compressed_candidate_beyond_tolerance_is_refused_and_says_what_to_try(
    acc: float, ece: float, words: str, rollouts: Rollouts
) -> None:
    reg = _compressed(acc, ece)
    with pytest.raises(GateRefused, match=f"compression_fidelity gate: .*{words}.*--precision fp32"):
        promote(reg, rollouts, actor="t")  # type: ignore[arg-type]
    assert reg.moves == []


def test_the_operator_sets_the_tolerances(rollouts: Rollouts) -> None:
    reg = _compressed(0.944, 0.031)
    assert promote(reg, rollouts, actor="t", max_drop_points=1.0, max_ece_increase=0.02).promoted == "2"  # type: ignore[arg-type]


def test_a_preview_returns_failed_verdicts_without_raising() -> None:
    reg = _compressed(0.90, 0.020)
    verdicts = {g.gate: g.verdict for g in offline_gates(reg, refuse=False).gates}  # type: ignore[arg-type]
    assert verdicts == {"compression_fidelity": "fail", "offline_accuracy": "pass"}
    assert reg.moves == []


def test_missing_figures_and_a_stale_source_are_refused(rollouts: Rollouts) -> None:
    reg = _compressed(0.95, 0.02)
    reg.metrics.pop("parent_holdout_ece")
    with pytest.raises(GateRefused, match="no held-out comparison with version 1"):
        promote(reg, rollouts, actor="t")  # type: ignore[arg-type]
    with pytest.raises(GateRefused, match="offline_accuracy gate: .*stale"):
        promote(_compressed(0.95, 0.02, champion="3"), rollouts, actor="t")  # type: ignore[arg-type]
