"""Drift of the candidate's traffic against the champion's over the same window. Prediction drift (in
shadow and canary): requests reach an arm by a hash of their key, so both arms see the same kind of
images, and a candidate whose class shares stray far from the champion's before any label arrives
(a broken preprocessing step, a class it never says) is caught here first. Input drift (canary):
when the key is a device or a customer, one cohort may send other images than the other, and then
no figure of the two arms compares like with like."""

from __future__ import annotations

import math
from typing import ClassVar

from rollout.gates import Evidence, GateResult, Phase, register_gate
from rollout.stats import accuracy_interval


@register_gate
class PredictionDrift:
    """The arms' predicted-class shares: fails when one class's share in the candidate's predictions
    is more than the plan's ``max_prediction_shift`` from its share in the champion's beyond doubt
    (anytime intervals on both shares, the plan's ``alpha`` split over classes and arms), so reading
    it every tick keeps its level and a retrained candidate's small, real differences pass."""

    name: ClassVar[str] = "prediction_drift"
    phases: ClassVar[tuple[Phase, ...]] = ("shadow", "canary")

    def __call__(self, evidence: Evidence) -> GateResult:
        live, plan = evidence.need_live(), evidence.plan
        cand, champ = live.candidate.predicted, live.champion.predicted
        n_cand, n_champ = sum(cand.values()), sum(champ.values())
        if min(n_cand, n_champ) < plan.min_requests:
            counts = f"{n_cand} candidate and {n_champ} champion predictions"
            return GateResult(self.name, "hold", f"{counts}; need {plan.min_requests}")
        classes = sorted(set(cand) | set(champ))
        shifts = {k: abs(cand.get(k, 0) / n_cand - champ.get(k, 0) / n_champ) for k in classes}
        worst = max(classes, key=shifts.__getitem__)
        said, was = cand.get(worst, 0) / n_cand, champ.get(worst, 0) / n_champ
        figures = {
            "largest_shift": shifts[worst],
            "candidate_predictions": float(n_cand),
            "champion_predictions": float(n_champ),
        }
        passed = GateResult(
            self.name,
            "pass",
            f"class shares at most {shifts[worst]:.2f} apart ({worst!r}: {said:.0%} against {was:.0%})",
            figures,
        )
        if shifts[worst] <= plan.max_prediction_shift:  # each interval holds its share: no need to look
            return passed
        level = plan.alpha / (2 * len(classes))
        gaps = {}  # class -> the least its two shares can be apart, given the evidence
        for k in classes:
            c_low, c_high = accuracy_interval(cand.get(k, 0), n_cand, level)
            h_low, h_high = accuracy_interval(champ.get(k, 0), n_champ, level)
            gaps[k] = max(c_low - h_high, h_low - c_high, 0.0)
        figures["largest_shift_low"] = max(gaps.values())
        if max(gaps.values()) > plan.max_prediction_shift:
            k = max(gaps, key=gaps.__getitem__)
            reason = (
                f"the candidate says {k!r} for {cand.get(k, 0) / n_cand:.0%} of its images against the "
                f"champion's {champ.get(k, 0) / n_champ:.0%} (at least {gaps[k]:.2f} apart; at most "
                f"{plan.max_prediction_shift:.2f} allowed)"
            )
            return GateResult(self.name, "fail", reason, figures)
        return passed


@register_gate
class InputDrift:
    """Canary: the images each arm answered, statistic by statistic (brightness, sharpness, size...).
    Holds, so an operator decides after ``max_step_s``, while some statistic's distributions in the
    two cohorts are more than the plan's ``max_input_shift`` apart beyond doubt (each arm's empirical
    distribution is within the DKW bound of its truth, ``alpha`` split over arms and statistics)."""

    name: ClassVar[str] = "input_drift"
    phases: ClassVar[tuple[Phase, ...]] = ("canary",)

    def __call__(self, evidence: Evidence) -> GateResult:
        inputs, plan = evidence.need_live().inputs, evidence.plan
        n_cand, n_champ = inputs.candidate, inputs.champion
        if min(n_cand, n_champ) < plan.min_requests:
            counts = f"{n_cand} candidate and {n_champ} champion images with statistics"
            return GateResult(self.name, "hold", f"{counts}; need {plan.min_requests}")
        worst = max(inputs.distances, key=inputs.distances.__getitem__, default=None)
        gap = 0.0 if worst is None else inputs.distances[worst]
        # Dvoretzky-Kiefer-Wolfowitz: each arm's empirical CDF is within this of its own, at once
        # for every statistic, with probability 1 - alpha
        tests = 2 * max(1, len(inputs.distances))
        slack = math.sqrt(math.log(2 * tests / plan.alpha) / 2) * (n_cand**-0.5 + n_champ**-0.5)
        figures = {
            "largest_distance": gap,
            "largest_distance_low": max(0.0, gap - slack),
            "candidate_images": float(n_cand),
            "champion_images": float(n_champ),
        }
        if gap - slack > plan.max_input_shift:
            reason = (
                f"the cohorts' images differ in {worst}: distributions at least {gap - slack:.2f} apart "
                f"(at most {plan.max_input_shift:.2f} allowed); the arms' figures are not comparable, "
                "so the step waits for an operator"
            )
            return GateResult(self.name, "hold", reason, figures)
        where = "" if worst is None else f" (largest in {worst})"
        return GateResult(
            self.name, "pass", f"the cohorts' images differ by at most {gap:.2f}{where}", figures
        )
