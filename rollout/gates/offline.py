"""The offline gate: the candidate descends from today's champion and is not worse on held-out labels
(beyond a tolerance, and, when the caller gives a level, beyond chance on the paired hold-out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from nicheloop.registry import STOPGAP_OF
from rollout.gates import Evidence, GateResult, Phase, register_gate
from rollout.stats import mcnemar


@register_gate
class OfflineAccuracy:
    """Held-out accuracy of the candidate against its parent's, measured on the same split at training."""

    name: ClassVar[str] = "offline_accuracy"
    phases: ClassVar[tuple[Phase, ...]] = ("offline",)

    def __call__(self, evidence: Evidence) -> GateResult:
        champ, cand = evidence.champion, evidence.candidate
        if cand.version == champ.version:
            return self._fail(
                f"candidate version {cand.version} is already the champion; run `nicheloop train`"
            )
        if STOPGAP_OF in cand.tags:
            if cand.tags[STOPGAP_OF] != champ.version:
                return self._fail(
                    f"stopgap {cand.version} recalibrates version {cand.tags[STOPGAP_OF]}, but the "
                    f"champion is now {champ.version}: it is stale"
                )
            return GateResult(
                self.name,
                "pass",
                f"a label-free stopgap of champion {champ.version}: judged by its shadow wins",
            )
        parent = cand.tags.get("parent_version")
        # a stopgap champion only moved its parent's statistics: a version trained from that parent
        # compares with it as it would have
        if parent not in (champ.version, champ.tags.get(STOPGAP_OF)):
            return self._fail(
                f"candidate {cand.version} was trained from version {parent}, but the champion is "
                f"now {champ.version}: its comparison is stale; run `nicheloop train` again"
            )
        if "compressed_from" in cand.tags:
            return GateResult(
                self.name, "pass", f"compressed from champion {champ.version}: held to compression_fidelity"
            )
        metrics = evidence.registry.run_metrics(cand.run_id)
        acc, base = metrics.get("holdout_accuracy"), metrics.get("parent_holdout_accuracy")
        if acc is None or base is None:
            return self._fail(
                f"candidate {cand.version} has no held-out comparison with the champion; retrain it"
            )
        figures = {
            "candidate_accuracy": acc,
            "champion_accuracy": base,
            "tolerance": evidence.accuracy_tolerance,
        }
        pairs = _discordant(metrics)
        verdict = held_out_verdict(
            acc, base, tolerance=evidence.accuracy_tolerance, alpha=evidence.accuracy_alpha, pairs=pairs
        )
        if pairs is not None and verdict.p_value is not None:
            mine, theirs = pairs
            figures |= {"candidate_only": mine, "champion_only": theirs, "p_value": verdict.p_value}
        if verdict.passed:
            return GateResult(self.name, "pass", verdict.reason, figures)
        return self._fail(
            f"candidate {cand.version} against champion {champ.version}: {verdict.reason}", figures
        )

    def _fail(self, reason: str, figures: dict[str, float] | None = None) -> GateResult:
        return GateResult(self.name, "fail", reason, figures or {})


def _discordant(metrics: dict[str, float]) -> tuple[int, int] | None:
    """The hold-out images only the candidate and only its parent got right, as training logged
    them (None for a version trained before it logged them)."""
    mine, theirs = metrics.get("holdout_candidate_only"), metrics.get("holdout_parent_only")
    return None if mine is None or theirs is None else (int(mine), int(theirs))


@dataclass(frozen=True)
class HeldOutVerdict:
    """Whether a retrained candidate may start against its parent on the same held-out labels, and why."""

    passed: bool
    reason: str
    p_value: float | None = None  # McNemar's, where a loss beyond the tolerance was tested


def held_out_verdict(
    accuracy: float, parent: float, *, tolerance: float, alpha: float | None, pairs: tuple[int, int] | None
) -> HeldOutVerdict:
    """The offline gate's rule: a candidate whose held-out ``accuracy`` is not under its ``parent``'s
    by more than ``tolerance`` passes; one that is fails, unless ``alpha`` is given with the paired
    counts (``pairs``: images only the candidate, only the parent got right) and McNemar's test
    does not call the loss beyond chance at that level: on a hundred images two of them are a point.
    The benchmark of the closed loop judges its candidates by the same rule."""
    if accuracy >= parent - tolerance:
        return HeldOutVerdict(True, f"held-out accuracy {accuracy:.4f} against {parent:.4f}")
    worse = f"held-out accuracy {accuracy:.4f} is below its parent's {parent:.4f} (tolerance {tolerance})"
    if alpha is None or pairs is None:
        return HeldOutVerdict(False, worse)
    mine, theirs = pairs
    p = mcnemar(mine, theirs)
    counts = f"{theirs} images only the parent got right, {mine} only the candidate (McNemar p = {p:.3g}"
    if p < alpha:
        return HeldOutVerdict(False, f"{worse}: {counts} < {alpha})", p)
    return HeldOutVerdict(
        True, f"held-out accuracy {accuracy:.4f} against {parent:.4f}, within noise: {counts})", p
    )
