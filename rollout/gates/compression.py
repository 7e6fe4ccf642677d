"""The compression gate: a compressed version serves only as accurate and as calibrated as its source."""

from __future__ import annotations

from typing import ClassVar

from rollout.gates import Evidence, GateResult, Phase, register_gate


@register_gate
class CompressionFidelity:
    """Held-out accuracy and ECE of a compressed candidate against the version it was compiled from,
    measured on the same labels by `nicheloop compress`; other candidates pass untouched."""

    name: ClassVar[str] = "compression_fidelity"
    phases: ClassVar[tuple[Phase, ...]] = ("offline",)

    def __call__(self, evidence: Evidence) -> GateResult:
        cand = evidence.candidate
        source = cand.tags.get("compressed_from")
        if source is None:
            return GateResult(self.name, "pass", f"candidate {cand.version} is not a compressed version")
        m = evidence.registry.run_metrics(cand.run_id)
        keys = ("holdout_accuracy", "parent_holdout_accuracy", "holdout_ece", "parent_holdout_ece")
        if any(k not in m for k in keys):
            return GateResult(
                self.name,
                "fail",
                f"compressed candidate {cand.version} has no held-out comparison with version {source}; "
                "run `nicheloop compress` again",
            )
        drop = 100.0 * (m["parent_holdout_accuracy"] - m["holdout_accuracy"])
        rise = m["holdout_ece"] - m["parent_holdout_ece"]
        most_drop = evidence.compression_max_accuracy_drop_points
        most_rise = evidence.compression_max_ece_increase
        figures = {
            "accuracy_drop_points": drop,
            "ece_increase": rise,
            "max_accuracy_drop_points": most_drop,
            "max_ece_increase": most_rise,
        }
        said = f"{drop:.2f} accuracy points and {rise:+.4f} ECE against version {source}"
        if drop > most_drop or rise > most_rise:
            return GateResult(
                self.name,
                "fail",
                f"compressed candidate {cand.version} loses {said}; the limits are {most_drop} points "
                f"and {most_rise} ECE (NICHELOOP_COMPRESSION_MAX_*): try --precision fp32 or more "
                "--calibration-images",
                figures,
            )
        return GateResult(self.name, "pass", f"compressed candidate {cand.version} loses {said}", figures)
