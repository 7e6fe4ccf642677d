"""What an operator sees of a rollout: where it is, what every gate said last, and what it waits for."""

from __future__ import annotations

from typing import Any

from nicheloop.latency import quantile_ms
from nicheloop.rollouts import NO_ROLLOUT, Rollout, Rollouts
from rollout.plan import RolloutPlan


def describe(rollouts: Rollouts, r: Rollout, now: float) -> dict[str, Any]:
    """A JSON-ready account of ``r``: state and shares, the plan's step, the last tick's gates, the
    controller's heartbeat age, and in words what would move it next."""
    assert r.id is not None, "describe() takes a stored rollout"
    plan = RolloutPlan(**rollouts.plan(r.id))
    checks, checked_at, heartbeat_at = rollouts.checks(r.id)
    where = r.held if r.state == "hold" else r.state
    step = (
        f"canary {r.step + 1} of {len(plan.steps)} at {plan.steps[r.step]:.0%}"
        if where == "canary"
        else where
    )
    return {
        "rollout_id": r.id,
        "candidate": r.candidate,
        "champion": r.champion,
        "state": r.state,
        "step": step,
        "share": r.share,
        "mirror": r.mirror,
        "in_state_s": round(now - r.entered_at, 1),
        "failures": r.failures,
        "max_failures": plan.max_failures,
        "heartbeat_age_s": round(now - heartbeat_at, 1),
        "checked_at": checked_at,
        "gates": checks,
        "waiting_for": waiting_for(r, plan, checks, now),
        "revision": r.revision,
        "arms": arm_traffic(rollouts, r.id if r.live else NO_ROLLOUT, now),
    }


TRAFFIC_WINDOW_S = 300.0  # the arms' traffic figures are of the last five minutes


def arm_traffic(rollouts: Rollouts, rollout_id: int, now: float) -> dict[str, dict[str, Any]]:
    """Each arm's calls, errors, error rate, requests per second and p50/p99 latency over the last
    :data:`TRAFFIC_WINDOW_S` seconds, as the gateways flushed them (the champion's alone for
    :data:`~nicheloop.rollouts.NO_ROLLOUT`: serving while no rollout is live)."""
    out: dict[str, dict[str, Any]] = {}
    for arm, c in sorted(rollouts.arm_calls(rollout_id, since=now - TRAFFIC_WINDOW_S).items()):
        p50, p99 = quantile_ms(c.latency, 0.5), quantile_ms(c.latency, 0.99)
        out[arm] = {
            "calls": c.calls,
            "errors": c.errors,
            "error_rate": round(c.errors / c.calls, 4) if c.calls else None,
            "rps": round(c.calls / TRAFFIC_WINDOW_S, 2),
            "p50_ms": round(p50, 1) if p50 is not None else None,
            "p99_ms": round(p99, 1) if p99 is not None else None,
        }
    return out


def waiting_for(r: Rollout, plan: RolloutPlan, checks: list[dict[str, Any]], now: float) -> str:
    """What must happen before ``r`` moves by itself, in a sentence."""
    if r.state == "hold":
        return "an operator: `nicheloop rollout resume`, `rollback` or `promote --force --reason`"
    if r.state == "promoted":
        return f"baking: {max(0.0, plan.bake_s - (now - r.entered_at)):.0f}s more as champion"
    if not r.live:
        return "nothing: this rollout has ended"
    waits = [f"{c['gate']}: {c['reason']}" for c in checks if c.get("verdict") == "hold"]
    left = plan.min_step_s - (now - r.entered_at)
    if left > 0:
        waits.append(f"{left:.0f}s more in this step (min_step_s)")
    if not checks:
        waits.append("the controller's first check")
    return "; ".join(waits) or "the next check (every gate passes)"
