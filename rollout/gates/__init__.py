"""Rollout gates as plug-ins: a gate is one class in this package, registered with :func:`register_gate`.

A gate looks at the evidence about a candidate and answers a :class:`GateResult` (verdict, reason,
figures). Every module of this package is imported by :func:`gates`, so adding a gate touches one
file (plus its test); nothing lists gates by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol

from nicheloop.plugins import PluginRegistry
from nicheloop.registry import VersionInfo
from rollout.plan import RolloutPlan

Verdict = Literal["pass", "fail", "hold"]
Phase = Literal["offline", "shadow", "canary"]


@dataclass(frozen=True)
class GateResult:
    """One gate's answer: ``hold`` means too little evidence yet (never a pass). A ``hard`` gate's
    failure rolls a live rollout back at once; other failures count towards the plan's limit."""

    gate: str
    verdict: Verdict
    reason: str
    figures: dict[str, float] = field(default_factory=dict)
    hard: bool = False

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


class RegistryView(Protocol):
    """What gates read from the model registry (:class:`nicheloop.registry.Registry` has it)."""

    def run_metrics(self, run_id: str) -> dict[str, float]: ...


@dataclass(frozen=True)
class Arm:
    """One arm's traffic over the gates' window: its calls and how they went, what its predictions
    said, and their delayed labels (``ece`` on them, at the other arm's label count: ECE grows as n
    shrinks)."""

    calls: int = 0
    errors: int = 0
    p99_ms: float | None = None
    labels: int = 0
    correct: int = 0
    ece: float | None = None
    # what sampling alone gives a calibrated model's ECE at this count, and the spread of the ECE read
    # (nicheloop.calibration.ece_noise)
    ece_bias: float = 0.0
    ece_sd: float = 0.0
    predicted: dict[str, int] = field(default_factory=dict)  # class -> predictions of it, labeled or not
    latency: dict[int, int] = field(default_factory=dict)  # timed calls by bucket (nicheloop.latency)


@dataclass(frozen=True)
class Paired:
    """Shadow: the same images through both models (``labeled`` of them have a delayed label)."""

    pairs: int = 0
    agree: int = 0  # both gave the same label
    labeled: int = 0
    candidate_only: int = 0  # labeled images only the candidate got right
    champion_only: int = 0


@dataclass(frozen=True)
class Inputs:
    """Canary: how the images each arm answered compare, statistic by statistic (the largest gap
    between the two arms' distributions of it: the two-sample Kolmogorov-Smirnov distance)."""

    candidate: int = 0  # images with statistics the candidate answered
    champion: int = 0
    distances: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Live:
    """What the live gates look at: the two arms over one window, the shadow's pairs, and in canary
    how the images the two arms answered compare."""

    champion: Arm
    candidate: Arm
    paired: Paired = field(default_factory=Paired)
    inputs: Inputs = field(default_factory=Inputs)


@dataclass(frozen=True)
class Evidence:
    """What a gate may look at: the two versions, the registry, the operator's tolerances and, in
    shadow and canary, the live figures and the rollout's plan."""

    registry: RegistryView
    champion: VersionInfo
    candidate: VersionInfo
    accuracy_tolerance: float = 0.0  # accuracy (fraction) the candidate may lose against the champion
    # with it, a loss beyond the tolerance is refused only when significant on the paired hold-out
    # (McNemar at this level); without it (None), any such loss is refused
    accuracy_alpha: float | None = None
    # what a compressed candidate may lose against the version it was compiled from (Settings)
    compression_max_accuracy_drop_points: float = 0.5
    compression_max_ece_increase: float = 0.01
    live: Live | None = None
    plan: RolloutPlan = field(default_factory=RolloutPlan)

    def need_live(self) -> Live:
        """Raises ValueError when a live gate is run without live figures (a wiring error)."""
        if self.live is None:
            raise ValueError("a shadow or canary gate needs Evidence.live")
        return self.live


class Gate(Protocol):
    """A rollout gate: ``name`` is its key, ``phases`` the steps of a rollout it decides."""

    name: ClassVar[str]
    phases: ClassVar[tuple[Phase, ...]]

    def __call__(self, evidence: Evidence) -> GateResult: ...


GATES: PluginRegistry[Gate] = PluginRegistry("rollout gate", __name__)
register_gate = GATES.register


def gates(phase: Phase | None = None) -> dict[str, type[Gate]]:
    """Every registered gate (of ``phase`` when given), by name, in registration order."""
    return GATES.all(lambda g: phase is None or phase in g.phases)


def evaluate(evidence: Evidence, phase: Phase) -> list[GateResult]:
    """Every gate of ``phase`` on ``evidence``, in registration order."""
    runners: list[Callable[[Evidence], GateResult]] = [g() for g in gates(phase).values()]
    return [run(evidence) for run in runners]
