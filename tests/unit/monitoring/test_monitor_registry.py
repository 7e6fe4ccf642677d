"""Drift monitors are plug-ins: one registered class is scored, alarmed, counted and announced."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import pytest

from monitoring.drift.monitor import (
    MONITORS,
    Feed,
    Inputs,
    MonitorConfig,
    MonitorResult,
    Outcomes,
    monitors,
    register_monitor,
)
from monitoring.drift.stage import DriftConfig, DriftStage, Transition
from monitoring.drift.windows import WindowSpec
from monitoring.metrics import MonitorMetrics
from nicheloop.reference import Reference
from tests.unit.monitoring.test_drift import _event, _reference


class BrightTail:
    """A test monitor: drifted when the window's mean top probability exceeds a bar."""

    name: ClassVar[str] = "bright_tail"
    feeds: ClassVar[Feed] = "inputs"

    def __init__(self, bar: float) -> None:
        self.bar = bar

    @classmethod
    def for_reference(cls, reference: Reference, config: MonitorConfig) -> BrightTail:
        return cls(float(reference.probs.max(1).mean()) + 0.2)

    def evaluate(self, window: Inputs | Outcomes) -> MonitorResult:
        assert isinstance(window, Inputs)
        top = float(window.probs.max(1).mean())
        return MonitorResult(
            self.name, "ok", len(window), top > self.bar, 0.0 if top > self.bar else 1.0, top
        )


@pytest.fixture
def with_bright_tail() -> Iterator[None]:
    monitors()  # the shipped ones first, as the monitor process has them
    before = MONITORS.snapshot()
    register_monitor(BrightTail)
    yield
    MONITORS.restore(before)


def test_the_shipped_monitors_are_registered_with_what_they_feed_on() -> None:
    assert {name: m.feeds for name, m in monitors().items()} == {
        "embedding": "inputs",
        "image": "inputs",
        "label": "outcomes",
        "prediction": "inputs",
    }
    assert list(monitors("outcomes")) == ["label"]


def test_two_monitors_of_one_name_are_refused(with_bright_tail: None) -> None:
    other = type("BrightTail", (BrightTail,), {})
    with pytest.raises(ValueError, match="two drift monitors are named 'bright_tail'"):
        register_monitor(other)


def test_a_registered_monitor_is_scored_alarmed_counted_and_announced(with_bright_tail: None) -> None:
    ref, rng = _reference(400, seed=3), np.random.default_rng(4)
    metrics, transitions = MonitorMetrics(), []
    stage = DriftStage(
        lambda v: ref,
        metrics,
        DriftConfig(window=WindowSpec("tumbling", size=60, step=60), monitors=MonitorConfig(min_samples=50)),
        transitions.append,
    )
    assert metrics.registry.get_sample_value("nicheloop_drift_detected", {"monitor": "bright_tail"}) == 0.0
    results = [r for i in range(60) for r in stage("t", _event(i, ref, rng))]
    assert {r.monitor for r in results} == {"bright_tail", "embedding", "image", "prediction"}
    certain = [1.0] + [0.0] * (len(ref.class_names) - 1)
    for i in range(60, 120):  # every prediction certain: the test monitor's statistic jumps
        stage("t", _event(i, ref, rng).model_copy(update={"probs": certain}))
    raised: list[Transition] = [t for t in transitions if t.result.monitor == "bright_tail"]
    assert [t.state for t in raised] == ["raised"]
    assert raised[0].event("m").monitor == "bright_tail"
    sample = metrics.registry.get_sample_value
    assert sample("nicheloop_drift_detected", {"monitor": "bright_tail"}) == 1.0
    assert sample("nicheloop_drift_score", {"monitor": "bright_tail"}) == pytest.approx(1.0)
