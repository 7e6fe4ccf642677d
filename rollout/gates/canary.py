"""Canary gates on delayed labels: accuracy not worse than the champion's beyond the plan's margin
(a sequential test: label counts, not wall time, decide when it may pass), and calibration."""

from __future__ import annotations

import math
from typing import ClassVar

from rollout.gates import Evidence, GateResult, Phase, register_gate
from rollout.stats import non_inferior


@register_gate
class Accuracy:
    """Accuracy of each arm's labeled predictions, compared with anytime-valid intervals."""

    name: ClassVar[str] = "accuracy"
    phases: ClassVar[tuple[Phase, ...]] = ("canary",)

    def __call__(self, evidence: Evidence) -> GateResult:
        live, plan = evidence.need_live(), evidence.plan
        result = non_inferior(
            (live.candidate.correct, live.candidate.labels),
            (live.champion.correct, live.champion.labels),
            margin=plan.accuracy_margin,
            alpha=plan.alpha,
            min_labels=plan.min_labels,
        )
        return GateResult(self.name, result.verdict, result.reason, result.figures())


CALIBRATION_Z = 3.0  # standard deviations of sampling noise a failing increase must clear


@register_gate
class Calibration:
    """Expected calibration error of the candidate's labeled predictions against the champion's, at
    equal label counts, each less what sampling alone would give a calibrated model at that count
    (ECE reads high on few labels). Fails when the increase exceeds the plan's allowance by more
    than ``CALIBRATION_Z`` standard deviations of that noise, so re-reading it every tick does not
    wear an equal candidate down (benchmarks/rollout.py measures the rates)."""

    name: ClassVar[str] = "calibration"
    phases: ClassVar[tuple[Phase, ...]] = ("shadow", "canary")

    def __call__(self, evidence: Evidence) -> GateResult:
        live, plan = evidence.need_live(), evidence.plan
        cand, champ = live.candidate, live.champion
        if cand.ece is None or champ.ece is None or cand.labels < plan.min_labels:
            return GateResult(self.name, "hold", f"{cand.labels} candidate labels; need {plan.min_labels}")
        increase = (cand.ece - cand.ece_bias) - (champ.ece - champ.ece_bias)
        allowance = plan.max_ece_increase + CALIBRATION_Z * math.hypot(cand.ece_sd, champ.ece_sd)
        figures = {
            "candidate_ece": cand.ece,
            "champion_ece": champ.ece,
            "ece_increase": increase,
            "allowance": allowance,
            "labels": float(cand.labels),
        }
        if increase > allowance:
            reason = (
                f"ECE {cand.ece:.3f} against the champion's {champ.ece:.3f}: {increase:+.3f} beyond sampling "
                f"noise, more than the {allowance:.3f} allowed at {cand.labels} labels"
            )
            return GateResult(self.name, "fail", reason, figures)
        return GateResult(
            self.name, "pass", f"ECE {cand.ece:.3f} against {champ.ece:.3f} ({increase:+.3f})", figures
        )
