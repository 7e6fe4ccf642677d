"""Drift monitors as plug-ins: the interface, the result, and the registry.

A monitor is one class in :mod:`monitoring.drift.monitors`, registered with
:func:`register_monitor`. It is built once per model version from that version's reference and
scores one window of traffic (:class:`Inputs`, from predictions) or of outcomes
(:class:`Outcomes`, from user labels). The drift stage, the metrics, the events and the reports
iterate :func:`monitors`; nothing else lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol, Self

import numpy as np

from monitoring.drift.twosample import bonferroni
from nicheloop.plugins import PluginRegistry
from nicheloop.reference import MIN_ROWS, Reference
from nicheloop.settings import EmbeddingMethod

MIN_REFERENCE = MIN_ROWS  # reference rows a monitor needs (novelty splits them in two halves)
Status = Literal["ok", "insufficient_data"]
Feed = Literal["inputs", "outcomes"]


@dataclass(frozen=True)
class MonitorResult:
    """One monitor's verdict on one window. ``p_value`` is None where the method gives none."""

    monitor: str
    status: Status
    n: int
    drifted: bool = False
    p_value: float | None = None
    score: float | None = None  # the method's statistic: larger is further from the reference
    details: dict[str, float] = field(default_factory=dict)

    @classmethod
    def combined(
        cls,
        monitor: str,
        n: int,
        p_values: dict[str, float],
        alpha: float,
        figures: dict[str, float] | None = None,
    ) -> MonitorResult:
        """The verdict of several tests at once (Bonferroni): drifted when the combined p < ``alpha``;
        the details hold every test's p-value (``p_<test>``) and the ``figures``."""
        combined = bonferroni(p_values)
        details = {f"p_{k}": v for k, v in p_values.items()} | (figures or {})
        return cls(monitor, "ok", n, combined < alpha, combined, 1.0 - combined, details)

    @classmethod
    def insufficient(cls, monitor: str, n: int) -> MonitorResult:
        return cls(monitor, "insufficient_data", n)


@dataclass(frozen=True)
class Inputs:
    """One window of predictions: image statistics (of the rows that carry them) with the class
    predicted for each of those rows, every row's embedding and probabilities, and the early-stage
    features of the rows that carry them."""

    stats: np.ndarray  # (n_stats, S) in IMAGE_STATS order
    stats_predicted: np.ndarray  # (n_stats,) class index
    embeddings: np.ndarray  # (n, D)
    probs: np.ndarray  # (n, C)
    early: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (n_early, E): rows that carry them

    def __len__(self) -> int:
        return len(self.probs)


@dataclass(frozen=True)
class Outcomes:
    """One window of user labels: the true class and the predicted class of each labeled prediction."""

    truth: np.ndarray  # (n,) class index
    predicted: np.ndarray  # (n,) class index

    def __len__(self) -> int:
        return len(self.truth)


@dataclass(frozen=True)
class MonitorConfig:
    """The knobs every monitor gets (from ``NICHELOOP_DRIFT_*``)."""

    alpha: float = 0.01  # false-alarm level per monitor and evaluation
    min_samples: int = 50  # fewer rows: "insufficient data", never a score
    embedding_method: EmbeddingMethod = "mean_shift"


class Monitor(Protocol):
    """A drift monitor: ``name`` keys its metrics, alarms and events; ``feeds`` names the window
    it scores."""

    name: ClassVar[str]
    feeds: ClassVar[Feed]

    @classmethod
    def for_reference(cls, reference: Reference, config: MonitorConfig) -> Monitor: ...

    def evaluate(self, window: Inputs | Outcomes) -> MonitorResult: ...


MONITORS: PluginRegistry[Monitor] = PluginRegistry("drift monitor", "monitoring.drift.monitors")
register_monitor = MONITORS.register


def monitors(feeds: Feed | None = None) -> dict[str, type[Monitor]]:
    """Every registered monitor (that ``feeds`` on that window, when given), by name, sorted."""
    return dict(sorted(MONITORS.all(lambda m: feeds is None or m.feeds == feeds).items()))


def inputs_of(window: Inputs | Outcomes, monitor: str) -> Inputs:
    """``window`` as a window of predictions. Raises TypeError for one of labels."""
    if not isinstance(window, Inputs):
        raise TypeError(f"the {monitor} monitor scores windows of predictions (Inputs)")
    return window


def outcomes_of(window: Inputs | Outcomes, monitor: str) -> Outcomes:
    """``window`` as a window of user labels. Raises TypeError for one of predictions."""
    if not isinstance(window, Outcomes):
        raise TypeError(f"the {monitor} monitor scores windows of user labels (Outcomes)")
    return window


class ReferenceMonitor:
    """A base for monitors that keep the version's reference and knobs and score in ``evaluate``."""

    def __init__(self, reference: Reference, config: MonitorConfig) -> None:
        self.reference, self.config = reference, config

    @classmethod
    def for_reference(cls, reference: Reference, config: MonitorConfig) -> Self:
        return cls(reference, config)
