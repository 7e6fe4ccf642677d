"""Service health in shadow and canary: the candidate's failed calls and p99 latency against the
champion's over the same window. Hard gates: a candidate that errs or stalls is rolled back at once."""

from __future__ import annotations

from typing import ClassVar

from nicheloop.latency import upper_ms
from rollout.gates import Evidence, GateResult, Phase, register_gate
from rollout.stats import accuracy_interval

TAIL = 0.01  # the share of calls slower than a p99


def _too_few_calls(gate: str, evidence: Evidence) -> GateResult | None:
    """A hold while either arm has fewer than the plan's ``min_requests`` calls in the window."""
    live, need = evidence.need_live(), evidence.plan.min_requests
    if min(live.candidate.calls, live.champion.calls) >= need:
        return None
    calls = f"{live.candidate.calls} candidate and {live.champion.calls} champion calls"
    return GateResult(gate, "hold", f"{calls}; need {need}")


@register_gate
class ErrorRate:
    """The share of the candidate's calls that failed, against the champion's, judged on anytime
    intervals of both rates at the plan's ``alpha`` (it is read every tick, and one failed call in 80
    reads 1.2 %): it fails once the candidate's rate is above the champion's plus the allowance
    beyond doubt, passes once it is below the champion's upper bound plus the allowance, and holds
    in between (a step may not advance on too few calls to tell a 5 % failure rate from none)."""

    name: ClassVar[str] = "error_rate"
    phases: ClassVar[tuple[Phase, ...]] = ("shadow", "canary")

    def __call__(self, evidence: Evidence) -> GateResult:
        live, plan = evidence.need_live(), evidence.plan
        cand, champ = live.candidate, live.champion
        if (few := _too_few_calls(self.name, evidence)) is not None:
            return few
        cand_rate, champ_rate = cand.errors / cand.calls, champ.errors / champ.calls
        # the rate of failed calls is a proportion like accuracy: the same anytime interval holds
        cand_low, cand_high = accuracy_interval(cand.errors, cand.calls, plan.alpha / 2)
        champ_high = accuracy_interval(champ.errors, champ.calls, plan.alpha / 2)[1]
        allowed = champ_high + plan.max_error_rate_increase
        figures = {
            "candidate_error_rate": cand_rate,
            "champion_error_rate": champ_rate,
            "candidate_error_rate_low": cand_low,
            "candidate_error_rate_high": cand_high,
            "champion_error_rate_high": champ_high,
            "calls": float(cand.calls),
        }
        rates = f"{cand_rate:.1%} of the candidate's calls failed against {champ_rate:.1%} of the champion's"
        if cand_low > allowed:
            reason = (
                f"{rates} (the candidate's at least {cand_low:.1%}, the champion's at most "
                f"{champ_high:.1%}; {plan.max_error_rate_increase:.1%} more allowed)"
            )
            return GateResult(self.name, "fail", reason, figures, hard=True)
        if cand_high > allowed:
            reason = f"{rates}; not yet clear that it is within {allowed:.1%} (at most {cand_high:.1%})"
            return GateResult(self.name, "hold", reason, figures, hard=True)
        return GateResult(
            self.name, "pass", f"errors {cand_rate:.2%} against {champ_rate:.2%}", figures, hard=True
        )


@register_gate
class Latency:
    """The candidate's p99 latency against ``max_p99_ratio`` times the champion's, judged on an
    anytime interval of the share of its calls slower than that (over 1 % beyond doubt: its p99 is
    above it; a p99 of 100 calls is nearly their slowest, so the point ratio alone only holds). From
    the first canary step when shadow calls run at idle priority, and so go untimed."""

    name: ClassVar[str] = "latency_p99"
    phases: ClassVar[tuple[Phase, ...]] = ("shadow", "canary")

    def __call__(self, evidence: Evidence) -> GateResult:
        live, plan = evidence.need_live(), evidence.plan
        cand, champ = live.candidate, live.champion
        if (few := _too_few_calls(self.name, evidence)) is not None:
            return few
        if cand.p99_ms is None and champ.p99_ms is not None:
            # calls counted untimed: shadow calls at idle priority (Settings.shadow_priority), whose
            # latency is the wait for spare CPU; the candidate's own is judged when it answers
            reason = (
                f"{cand.calls} shadow calls ran on spare CPU, untimed; latency is judged from the "
                "first canary step"
            )
            return GateResult(self.name, "pass", reason, {"calls": float(cand.calls)}, hard=True)
        if cand.p99_ms is None or champ.p99_ms is None:
            return GateResult(self.name, "hold", "no p99 latency measured for one of the arms yet")
        ratio = cand.p99_ms / max(champ.p99_ms, 1e-9)
        limit_ms = plan.max_p99_ratio * champ.p99_ms
        timed = sum(cand.latency.values())
        slower = sum(n for k, n in cand.latency.items() if upper_ms(k - 1) >= limit_ms)  # whole bucket above
        low = accuracy_interval(slower, timed, plan.alpha)[0] if timed else 0.0
        figures = {
            "candidate_p99_ms": cand.p99_ms,
            "champion_p99_ms": champ.p99_ms,
            "ratio": ratio,
            "slower_share": slower / timed if timed else 0.0,
            "slower_share_low": low,
        }
        p99s = f"p99 {cand.p99_ms:.0f} ms against the champion's {champ.p99_ms:.0f} ms ({ratio:.2f}x)"
        if low > TAIL:
            reason = (
                f"{p99s}: {slower} of {timed} calls took over {limit_ms:.0f} ms "
                f"({plan.max_p99_ratio:.2f}x the champion's p99), at least {low:.1%} beyond doubt"
            )
            return GateResult(self.name, "fail", reason, figures, hard=True)
        if ratio > plan.max_p99_ratio:
            reason = (
                f"{p99s}; not yet beyond doubt over {plan.max_p99_ratio:.2f}x ({slower} of {timed} calls)"
            )
            return GateResult(self.name, "hold", reason, figures, hard=True)
        return GateResult(self.name, "pass", f"p99 {ratio:.2f}x the champion's", figures, hard=True)
