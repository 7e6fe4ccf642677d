"""Promotion: the candidate becomes champion only when every offline gate passes."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from nicheloop.contracts import CANDIDATE, CHAMPION
from nicheloop.errors import GateRefused
from nicheloop.registry import VersionInfo
from nicheloop.rollouts import Rollouts
from rollout.gates import Evidence, GateResult, evaluate

log = logging.getLogger(__name__)

PREVIOUS = "previous-champion"


class AliasRegistry(Protocol):
    """The registry operations promotion needs (:class:`nicheloop.registry.Registry` has them)."""

    def resolve(self, alias: str) -> VersionInfo: ...
    def run_metrics(self, run_id: str) -> dict[str, float]: ...
    def set_alias(self, alias: str, version: str) -> None: ...


@dataclass(frozen=True)
class Promotion:
    previous: str
    promoted: str
    gates: tuple[GateResult, ...]

    @property
    def candidate_accuracy(self) -> float | None:
        return self._figure("candidate_accuracy")

    @property
    def champion_accuracy(self) -> float | None:
        return self._figure("champion_accuracy")

    def _figure(self, name: str) -> float | None:
        return next((g.figures[name] for g in self.gates if name in g.figures), None)

    def summary(self) -> dict[str, object]:
        """A JSON-ready account: the versions and every gate's verdict, reason and figures."""
        return {
            "previous": self.previous,
            "promoted": self.promoted,
            "gates": [
                {"gate": g.gate, "verdict": g.verdict, "reason": g.reason, **g.figures} for g in self.gates
            ],
        }


def offline_gates(
    registry: AliasRegistry,
    *,
    tolerance: float = 0.0,
    alpha: float | None = None,
    max_drop_points: float = 0.5,
    max_ece_increase: float = 0.01,
    refuse: bool = True,
) -> Promotion:
    """Run the offline gates on the candidate against the champion, moving no alias.

    ``tolerance``: held-out accuracy (a fraction) a retrained candidate may lose; ``alpha``: a loss
    beyond it is refused only when significant on the paired hold-out (None: always); ``max_drop_points``
    and ``max_ece_increase``: what a compressed candidate may lose against its source.
    ``refuse=False`` returns every verdict, failed ones too (a preview).

    Raises:
        GateRefused: a gate failed or held (with ``refuse``); the message is its reason.
    """
    champ, cand = registry.resolve(CHAMPION), registry.resolve(CANDIDATE)
    evidence = Evidence(
        registry,
        champ,
        cand,
        accuracy_tolerance=tolerance,
        accuracy_alpha=alpha,
        compression_max_accuracy_drop_points=max_drop_points,
        compression_max_ece_increase=max_ece_increase,
    )
    results = evaluate(evidence, "offline")
    for result in results:
        if refuse and not result.passed:
            raise GateRefused(f"{result.gate} gate: {result.reason}; not promoted")
    return Promotion(champ.version, cand.version, tuple(results))


def promote(
    registry: AliasRegistry,
    rollouts: Rollouts,
    *,
    actor: str,
    tolerance: float = 0.0,
    max_drop_points: float = 0.5,
    max_ece_increase: float = 0.01,
) -> Promotion:
    """Make the candidate champion on the offline gates alone (no shadow, no canary): recorded as
    ``actor``'s promotion first, then the alias follows; serving picks it up by itself. A gated
    rollout (`nicheloop rollout start`) is the way that looks at live traffic.

    Raises:
        GateRefused: as :func:`offline_gates`. Conflict: a rollout is live.
    """
    result = offline_gates(
        registry, tolerance=tolerance, max_drop_points=max_drop_points, max_ece_increase=max_ece_increase
    )
    passed = ", ".join(g.gate for g in result.gates)
    rollouts.record_champion(
        result.promoted,
        previous=result.previous,
        actor=actor,
        reason=f"promoted on the offline gates alone ({passed} passed)",
        now=time.time(),
    )
    registry.set_alias(PREVIOUS, result.previous)
    registry.set_alias(CHAMPION, result.promoted)
    log.info("promoted version %s to champion (was %s)", result.promoted, result.previous)
    return result
