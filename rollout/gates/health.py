"""Service health in shadow and canary: the candidate's failed calls and p99 latency against the
champion's over the same window. Hard gates: a candidate that errs or stalls is rolled back at once."""

from __future__ import annotations

from typing import ClassVar

from rollout.gates import Evidence, GateResult, Phase, register_gate
from rollout.stats import accuracy_interval


def _too_few_calls(gate: str, evidence: Evidence) -> GateResult | None:
    """A hold while either arm has fewer than the plan's ``min_requests`` calls in the window."""
    live, need = evidence.need_live(), evidence.plan.min_requests
    if min(live.candidate.calls, live.champion.calls) >= need:
        return None
    calls = f"{live.candidate.calls} candidate and {live.champion.calls} champion calls"
    return GateResult(gate, "hold", f"{calls}; need {need}")


@register_gate
class ErrorRate:
    """The share of the candidate's calls that failed, against the champion's: it fails only once the
    candidate's rate is above the champion's plus the allowance beyond doubt (anytime intervals at
    the plan's ``alpha``), because it is read every tick and one failed call in 80 reads 1.2 %."""

    name: ClassVar[str] = "error_rate"
    phases: ClassVar[tuple[Phase, ...]] = ("shadow", "canary")

    def __call__(self, evidence: Evidence) -> GateResult:
        live, plan = evidence.need_live(), evidence.plan
        cand, champ = live.candidate, live.champion
        if (few := _too_few_calls(self.name, evidence)) is not None:
            return few
        cand_rate, champ_rate = cand.errors / cand.calls, champ.errors / champ.calls
        figures = {
            "candidate_error_rate": cand_rate,
            "champion_error_rate": champ_rate,
            "calls": float(cand.calls),
        }
        passed = GateResult(
            self.name, "pass", f"errors {cand_rate:.2%} against {champ_rate:.2%}", figures, hard=True
        )
        if cand_rate - champ_rate <= plan.max_error_rate_increase:  # the intervals hold the rates
            return passed
        # the rate of failed calls is a proportion like accuracy: the same anytime interval holds
        cand_low = accuracy_interval(cand.errors, cand.calls, plan.alpha / 2)[0]
        champ_high = accuracy_interval(champ.errors, champ.calls, plan.alpha / 2)[1]
        figures |= {"candidate_error_rate_low": cand_low, "champion_error_rate_high": champ_high}
        if cand_low > champ_high + plan.max_error_rate_increase:
            reason = (
                f"{cand_rate:.1%} of the candidate's calls failed (at least {cand_low:.1%}) against "
                f"{champ_rate:.1%} of the champion's (at most {champ_high:.1%}; "
                f"{plan.max_error_rate_increase:.1%} more allowed)"
            )
            return GateResult(self.name, "fail", reason, figures, hard=True)
        return passed


@register_gate
class Latency:
    """The candidate's p99 latency against the champion's."""

    name: ClassVar[str] = "latency_p99"
    phases: ClassVar[tuple[Phase, ...]] = ("shadow", "canary")

    def __call__(self, evidence: Evidence) -> GateResult:
        live, plan = evidence.need_live(), evidence.plan
        cand, champ = live.candidate, live.champion
        if (few := _too_few_calls(self.name, evidence)) is not None:
            return few
        if cand.p99_ms is None or champ.p99_ms is None:
            return GateResult(self.name, "hold", "no p99 latency measured for one of the arms yet")
        ratio = cand.p99_ms / max(champ.p99_ms, 1e-9)
        figures = {"candidate_p99_ms": cand.p99_ms, "champion_p99_ms": champ.p99_ms, "ratio": ratio}
        if ratio > plan.max_p99_ratio:
            reason = (
                f"p99 {cand.p99_ms:.0f} ms against the champion's {champ.p99_ms:.0f} ms "
                f"({ratio:.2f}x; at most {plan.max_p99_ratio:.2f}x allowed)"
            )
            return GateResult(self.name, "fail", reason, figures, hard=True)
        return GateResult(self.name, "pass", f"p99 {ratio:.2f}x the champion's", figures, hard=True)
