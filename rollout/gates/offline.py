"""The offline gate: the candidate descends from today's champion and is not worse on held-out labels."""

from __future__ import annotations

from typing import ClassVar

from rollout.gates import Evidence, GateResult, Phase, register_gate


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
        parent = cand.tags.get("parent_version")
        if parent != champ.version:
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
        if acc < base - evidence.accuracy_tolerance:
            return self._fail(
                f"candidate {cand.version} held-out accuracy {acc:.4f} is below the champion "
                f"{champ.version}'s {base:.4f} (tolerance {evidence.accuracy_tolerance})",
                figures,
            )
        return GateResult(self.name, "pass", f"held-out accuracy {acc:.4f} against {base:.4f}", figures)

    def _fail(self, reason: str, figures: dict[str, float] | None = None) -> GateResult:
        return GateResult(self.name, "fail", reason, figures or {})
