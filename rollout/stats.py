"""The statistics the live rollout gates decide on: tests that stay valid however often they are read.

A rollout controller looks at its figures every interval and stops as soon as they are clear, so a
fixed-sample test read repeatedly would reject far more often than its level says. Accuracy on
delayed labels is judged here with confidence sequences instead: intervals that hold at every
label count at once (with probability 1 - alpha over the whole stream), so the controller may look
after each label and still keep its error rates. Paired shadow comparisons use McNemar's exact test
on the disagreements, once, at the step's planned label count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.special import betaln
from scipy.stats import binomtest

if TYPE_CHECKING:
    from rollout.gates import Verdict

PRIOR = (1.0, 1.0)  # the mixing distribution over accuracies: uniform (Beta(1, 1))


def log_evidence(p: float, successes: np.ndarray | int, trials: np.ndarray | int) -> np.ndarray:
    """log of the Beta-mixture likelihood ratio against an accuracy of ``p`` (elementwise over counts).

    Under labels that are right with probability ``p`` it is a martingale with mean 1 in the label
    count, so by Ville's inequality it ever exceeds 1/alpha with probability at most alpha.
    """
    a, b = PRIOR
    s = np.asarray(successes, np.float64)
    f = np.asarray(trials, np.float64) - s
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 * log(0) is 0 here
        log_null = np.where(s > 0, s * np.log(p), 0.0) + np.where(f > 0, f * np.log1p(-p), 0.0)
    return np.asarray(betaln(s + a, f + b) - betaln(a, b) - log_null)


def accuracy_interval(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """An anytime-valid ``1 - alpha`` confidence interval for an accuracy from ``successes`` of
    ``trials`` labels: the accuracies the evidence has not yet rejected at level ``alpha``.

    Raises:
        ValueError: counts out of range, or ``alpha`` not in (0, 1).
    """
    if not 0 <= successes <= trials or not 0 < alpha < 1:
        raise ValueError(
            f"need 0 <= successes <= trials and 0 < alpha < 1, got {successes}, {trials}, {alpha}"
        )
    if trials == 0:
        return 0.0, 1.0
    bound = math.log(1 / alpha)
    centre = (successes + PRIOR[0]) / (trials + sum(PRIOR))  # inside the interval: evidence < 0 there
    a, b = PRIOR
    s, f = successes, trials - successes
    mixture = float(betaln(s + a, f + b) - betaln(a, b))  # log_evidence's part that p leaves alone

    def inside(p: float) -> bool:  # log_evidence(p, s, trials) < bound, in scalar arithmetic
        log_null = (s * math.log(p) if s else 0.0) + (f * math.log1p(-p) if f else 0.0)
        return mixture - log_null < bound

    def edge(out: float) -> float:
        """The interval's end between ``centre`` (inside) and ``out``, by bisection."""
        if inside(out):
            return out
        lo, hi = centre, out
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if inside(mid) else (lo, mid)
        return lo

    return edge(0.0 if successes == 0 else 1e-12), edge(1.0 if successes == trials else 1 - 1e-12)


@dataclass(frozen=True)
class Comparison:
    """A sequential non-inferiority verdict on two arms' delayed labels, with its figures."""

    verdict: Verdict
    reason: str
    candidate: tuple[float, float]  # the candidate's anytime interval
    champion: tuple[float, float]
    candidate_labels: int
    champion_labels: int

    def figures(self) -> dict[str, float]:
        return {
            "candidate_accuracy_low": self.candidate[0],
            "candidate_accuracy_high": self.candidate[1],
            "champion_accuracy_low": self.champion[0],
            "champion_accuracy_high": self.champion[1],
            "candidate_labels": float(self.candidate_labels),
            "champion_labels": float(self.champion_labels),
        }


def non_inferior(
    candidate: tuple[int, int], champion: tuple[int, int], *, margin: float, alpha: float, min_labels: int = 0
) -> Comparison:
    """Is the candidate's accuracy at most ``margin`` below the champion's? Each arm is ``(correct,
    labelled)``; the two arms' labels may come from different requests (a canary split).

    ``fail`` once the candidate is worse than the champion beyond doubt; ``pass`` once it is within
    ``margin`` of it beyond doubt and has at least ``min_labels`` labels; ``hold`` until then. Each
    arm's interval holds at every label count with probability ``1 - alpha/2``, so reading this after
    every label wrongly fails a candidate as good as the champion, or wrongly passes one more than
    ``margin`` worse, with probability at most ``alpha`` each.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    cand = accuracy_interval(*candidate, alpha / 2)
    champ = accuracy_interval(*champion, alpha / 2)
    n_cand, n_champ = candidate[1], champion[1]
    if cand[1] < champ[0]:
        verdict: Verdict = "fail"
        reason = f"accuracy at most {cand[1]:.3f} against the champion's at least {champ[0]:.3f}"
    elif cand[0] > champ[1] - margin and n_cand >= min_labels:
        verdict = "pass"
        reason = (
            f"accuracy at least {cand[0]:.3f}, within {margin:.3f} of the champion's at most {champ[1]:.3f}"
        )
    else:
        verdict = "hold"
        reason = (
            f"{n_cand} candidate and {n_champ} champion labels do not yet settle it "
            f"(candidate {cand[0]:.3f}-{cand[1]:.3f}, champion {champ[0]:.3f}-{champ[1]:.3f})"
        )
    return Comparison(verdict, reason, cand, champ, n_cand, n_champ)


def mcnemar(
    candidate_only: int, champion_only: int, *, alternative: Literal["two-sided", "greater"] = "two-sided"
) -> float:
    """Exact McNemar p-value on paired labels: ``candidate_only`` images only the candidate got right,
    ``champion_only`` only the champion (the pairs both got right or wrong say nothing); two-sided,
    or ``greater``: one-sided, that the candidate is the better (a sign test on the disagreements)."""
    if candidate_only < 0 or champion_only < 0:
        raise ValueError(f"counts must be >= 0, got {candidate_only} and {champion_only}")
    discordant = candidate_only + champion_only
    if discordant == 0:
        return 1.0
    return float(binomtest(candidate_only, discordant, 0.5, alternative=alternative).pvalue)
