"""Shadow gates: the same images through both models. Agreement says whether the candidate is the
same kind of model; McNemar's test on the labeled disagreements says whether it is worse."""

from __future__ import annotations

from typing import ClassVar

from rollout.gates import Evidence, GateResult, Phase, register_gate
from rollout.plan import RolloutPlan
from rollout.stats import accuracy_interval, mcnemar


@register_gate
class Agreement:
    """The share of shadowed images on which both models give the same label."""

    name: ClassVar[str] = "agreement"
    phases: ClassVar[tuple[Phase, ...]] = ("shadow",)

    def __call__(self, evidence: Evidence) -> GateResult:
        paired, plan = evidence.need_live().paired, evidence.plan
        if paired.pairs < plan.min_requests:
            return GateResult(self.name, "hold", f"{paired.pairs} shadowed images; need {plan.min_requests}")
        share = paired.agree / paired.pairs
        low, high = accuracy_interval(paired.agree, paired.pairs, plan.alpha)
        figures = {
            "agreement": share,
            "agreement_low": low,
            "agreement_high": high,
            "pairs": float(paired.pairs),
        }
        if high < plan.min_agreement:
            reason = (
                f"the models agree on at most {high:.1%} of images (at least {plan.min_agreement:.0%} needed)"
            )
            return GateResult(self.name, "fail", reason, figures)
        if share < plan.min_agreement:
            reason = f"agreement {share:.1%} is below {plan.min_agreement:.0%}, not yet beyond doubt"
            return GateResult(self.name, "hold", reason, figures)
        return GateResult(self.name, "pass", f"the models agree on {share:.1%} of images", figures)


def not_won(candidate_only: int, champion_only: int, plan: RolloutPlan) -> str | None:
    """Why a candidate whose plan says it must win (``min_wins``: a label-free stopgap) has not, on
    its labeled disagreements with the champion; None when it won by ``min_wins`` and beyond chance
    (one-sided McNemar at the plan's ``alpha``). Read once, at ``min_labels``: on 20 labels a net
    win of 3 is a coin's luck as often as not, and a stopgap changes every answer it changes for
    one reason, so a lucky one is wrong on much of the traffic."""
    if not plan.min_wins:
        return None
    wins = candidate_only - champion_only
    p = mcnemar(candidate_only, champion_only, alternative="greater")
    if wins >= plan.min_wins and p < plan.alpha:
        return None
    return (
        f"the candidate alone got {candidate_only} right, the champion alone {champion_only}: it must "
        f"win by {plan.min_wins} and beyond chance (one-sided McNemar p = {p:.3g}, needs < {plan.alpha:g})"
    )


@register_gate
class PairedAccuracy:
    """On shadowed images that got a delayed label: does the candidate get fewer right? Exact McNemar,
    read once the step has ``min_labels`` labeled pairs (a fixed-sample test, so not before). A plan
    with ``min_wins`` (a label-free stopgap's) also needs the candidate to win that many more, beyond
    chance (:func:`not_won`)."""

    name: ClassVar[str] = "paired_accuracy"
    phases: ClassVar[tuple[Phase, ...]] = ("shadow",)

    def __call__(self, evidence: Evidence) -> GateResult:
        paired, plan = evidence.need_live().paired, evidence.plan
        if paired.labeled < plan.min_labels:
            return GateResult(self.name, "hold", f"{paired.labeled} labeled pairs; need {plan.min_labels}")
        p = mcnemar(paired.candidate_only, paired.champion_only)
        figures = {
            "candidate_only": float(paired.candidate_only),
            "champion_only": float(paired.champion_only),
            "labeled": float(paired.labeled),
            "p_value": p,
        }
        if paired.champion_only > paired.candidate_only and p < plan.alpha:
            reason = (
                f"of {paired.labeled} labeled images the champion alone got {paired.champion_only} right, "
                f"the candidate alone {paired.candidate_only} (McNemar p = {p:.3g})"
            )
            return GateResult(self.name, "fail", reason, figures)
        refused = not_won(paired.candidate_only, paired.champion_only, plan)
        if refused is not None:  # a stopgap that does not win only adds risk: out at once
            reason = f"of {paired.labeled} labeled images {refused}"
            return GateResult(self.name, "fail", reason, figures, hard=True)
        reason = f"{paired.candidate_only} against {paired.champion_only} labeled disagreements (p = {p:.3g})"
        return GateResult(self.name, "pass", reason, figures)
