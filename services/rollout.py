"""Promotion through gates. The first gate: the candidate is not worse on the held-out split."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nicheloop.contracts import CANDIDATE, CHAMPION
from nicheloop.errors import GateRefused
from nicheloop.registry import Registry

log = logging.getLogger(__name__)

PREVIOUS = "previous-champion"


@dataclass(frozen=True)
class Promotion:
    previous: str
    promoted: str
    candidate_accuracy: float
    champion_accuracy: float


def offline_gate(registry: Registry, tolerance: float = 0.0) -> Promotion:
    """Check the candidate against the champion without moving any alias.

    Raises:
        GateRefused: no fresh candidate, a candidate trained from another champion, or a
            held-out accuracy below the champion's by more than ``tolerance``.
    """
    champ, cand = registry.resolve(CHAMPION), registry.resolve(CANDIDATE)
    if cand.version == champ.version:
        raise GateRefused(f"candidate version {cand.version} is already the champion; run `nicheloop train`")
    parent = cand.tags.get("parent_version")
    if parent != champ.version:
        raise GateRefused(f"candidate {cand.version} was trained from version {parent}, but the champion is "
                          f"now {champ.version}: its comparison is stale; run `nicheloop train` again")
    metrics = registry.run_metrics(cand.run_id)
    acc, base = metrics.get("holdout_accuracy"), metrics.get("parent_holdout_accuracy")
    if acc is None or base is None:
        raise GateRefused(f"candidate {cand.version} has no held-out comparison with the champion; retrain it")
    if acc < base - tolerance:
        raise GateRefused(f"offline gate: candidate {cand.version} held-out accuracy {acc:.4f} is below the "
                          f"champion {champ.version}'s {base:.4f} (tolerance {tolerance}); not promoted")
    return Promotion(champ.version, cand.version, acc, base)


def promote(registry: Registry, tolerance: float = 0.0) -> Promotion:
    """Move ``champion`` to the candidate if it passes the gate; serving picks it up by itself."""
    result = offline_gate(registry, tolerance)
    registry.set_alias(PREVIOUS, result.previous)
    registry.set_alias(CHAMPION, result.promoted)
    log.info("promoted version %s to champion (was %s)", result.promoted, result.previous)
    return result
