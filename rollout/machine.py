"""The rollout state machine: pure decisions from a rollout's state, its gates' verdicts and the time.

    shadow -> canary 1 .. canary k -> promoted -> baked
        any of them -> rolled_back (a hard gate failed, or statistical checks failed max_failures times)
        shadow, canary -> hold (paused by an operator, or no verdict within max_step_s) -> back on resume
        any live one -> aborted (a newer candidate replaced this one)

A step advances only when every gate of its phase passes and it has lasted ``min_step_s``; a gate
that holds (too little evidence) keeps it where it is. Nothing here reads a clock or a database:
the controller passes ``now`` and stores what comes back, so a test drives it with numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from nicheloop.errors import Conflict
from nicheloop.rollouts import Rollout, State
from rollout.gates import GateResult, Phase
from rollout.plan import RolloutPlan

GATED: dict[str, Phase] = {"shadow": "shadow", "canary": "canary"}


def start(candidate: str, champion: str, plan: RolloutPlan, now: float) -> Rollout:
    """A new rollout of ``candidate`` against ``champion``: in shadow, mirroring ``plan.shadow_share``."""
    return Rollout(candidate, champion, "shadow", mirror=plan.shadow_share, entered_at=now)


def placement(state: State, step: int, held: State | None, plan: RolloutPlan) -> tuple[float, float]:
    """(share answered by the candidate, share mirrored to it) in ``state``; a hold keeps the share
    of the state it froze and mirrors nothing."""
    where = held if state == "hold" else state
    share = plan.steps[step] if where == "canary" else 1.0 if where in ("promoted", "baked") else 0.0
    return share, plan.shadow_share if state == "shadow" else 0.0


@dataclass(frozen=True)
class Transition:
    """A decided move: the rollout after it, and why (what the audit trail records)."""

    before: Rollout
    after: Rollout
    reason: str
    actor: str = "controller"
    gates: tuple[GateResult, ...] = field(default_factory=tuple)

    @property
    def moved(self) -> bool:
        return self.after.state != self.before.state or self.after.step != self.before.step


def _to(
    r: Rollout,
    state: State,
    now: float,
    plan: RolloutPlan,
    *,
    step: int | None = None,
    held: State | None = None,
    failures: int | None = None,
) -> Rollout:
    step = r.step if step is None else step
    share, mirror = placement(state, step, held, plan)
    return dataclasses.replace(
        r, state=state, step=step, held=held, share=share, mirror=mirror, entered_at=now,
        failures=r.failures if failures is None else failures, revision=r.revision + 1,
    )  # fmt: skip


def decide(r: Rollout, results: Sequence[GateResult], plan: RolloutPlan, now: float) -> Transition | None:
    """The controller's move for ``r`` given its phase's gate ``results`` at time ``now``; None: stay.

    A failed gate whose ``hard`` flag is set rolls back at once; other failures count, and roll back
    at ``plan.max_failures``. Only ``shadow`` and ``canary`` are gated; ``promoted`` bakes after
    ``plan.bake_s``; ``hold`` and the ends never move by themselves.
    """
    if r.state == "promoted":
        if now - r.entered_at >= plan.bake_s:
            return Transition(r, _to(r, "baked", now, plan), f"served as champion for {plan.bake_s:.0f}s")
        return None
    if r.state not in GATED:
        return None
    failed = [g for g in results if g.verdict == "fail"]
    hard = [g for g in failed if g.hard]
    if hard:
        reason = "; ".join(f"{g.gate}: {g.reason}" for g in hard)
        return Transition(
            r, _to(r, "rolled_back", now, plan), f"hard gate failed: {reason}", gates=tuple(results)
        )
    if failed:
        failures = r.failures + 1
        reason = "; ".join(f"{g.gate}: {g.reason}" for g in failed)
        if failures >= plan.max_failures:
            after = _to(r, "rolled_back", now, plan, failures=failures)
            return Transition(r, after, f"{failures} failed checks: {reason}", gates=tuple(results))
        after = dataclasses.replace(r, failures=failures, revision=r.revision + 1)
        return Transition(
            r, after, f"failed check {failures} of {plan.max_failures}: {reason}", gates=tuple(results)
        )
    waited = now - r.entered_at
    if any(g.verdict == "hold" for g in results) or not results:
        if waited >= plan.max_step_s:
            after = _to(r, "hold", now, plan, held=r.state)
            return Transition(
                r, after, f"no verdict after {waited:.0f}s; an operator decides", gates=tuple(results)
            )
        return None
    if waited < plan.min_step_s:
        return None
    return Transition(
        r, _advance(r, plan, now), f"{_where(r, plan)}: every gate passed", gates=tuple(results)
    )


def _advance(r: Rollout, plan: RolloutPlan, now: float) -> Rollout:
    if r.state == "shadow":
        return _to(r, "canary", now, plan, step=0)
    if r.step + 1 < len(plan.steps):
        return _to(r, "canary", now, plan, step=r.step + 1)
    return _to(r, "promoted", now, plan)


def _where(r: Rollout, plan: RolloutPlan) -> str:
    return f"canary at {plan.steps[r.step]:.0%}" if r.state == "canary" else r.state


class NotAllowed(Conflict):
    """An operator's action that does not apply to the rollout's state (the message says why)."""


def pause(r: Rollout, plan: RolloutPlan, now: float, *, actor: str, reason: str) -> Transition:
    """Freeze a rollout in shadow or canary at its current share until :func:`resume`."""
    if r.state not in GATED:
        raise NotAllowed(f"only a rollout in shadow or canary can be paused; this one is {r.state}")
    return Transition(r, _to(r, "hold", now, plan, held=r.state), reason, actor)


def resume(r: Rollout, plan: RolloutPlan, now: float, *, actor: str, reason: str) -> Transition:
    """Back to the state a hold froze; that step's time and evidence count again from now."""
    if r.state != "hold" or r.held is None:
        raise NotAllowed(f"only a held rollout can be resumed; this one is {r.state}")
    return Transition(r, _to(r, r.held, now, plan), reason, actor)


def rollback(r: Rollout, plan: RolloutPlan, now: float, *, actor: str, reason: str) -> Transition:
    """End a live rollout: the candidate's share goes to 0 (after promotion, the champion reverts)."""
    if not r.live:
        raise NotAllowed(f"only a live rollout can be rolled back; this one is {r.state}")
    return Transition(r, _to(r, "rolled_back", now, plan), reason, actor)


def force_promote(r: Rollout, plan: RolloutPlan, now: float, *, actor: str, reason: str) -> Transition:
    """Promote without the remaining steps; only with a reason, which the audit trail keeps."""
    if r.state not in (*GATED, "hold"):
        raise NotAllowed(f"only a rollout in shadow, canary or hold can be promoted; this one is {r.state}")
    if not reason.strip():
        raise NotAllowed("a forced promotion needs a reason (--reason)")
    return Transition(r, _to(r, "promoted", now, plan), f"forced: {reason}", actor)


def retire(r: Rollout, plan: RolloutPlan, now: float, *, actor: str, reason: str) -> Transition:
    """A retrained candidate replaces a live stopgap's rollout: one still in shadow, canary or hold
    is rolled back; a promoted one is baked at once (it serves until the new candidate is promoted)."""
    if not r.live:
        raise NotAllowed(f"only a live rollout can be retired; this one is {r.state}")
    return Transition(
        r, _to(r, "baked" if r.state == "promoted" else "rolled_back", now, plan), reason, actor
    )


def supersede(r: Rollout, candidate: str, plan: RolloutPlan, now: float) -> tuple[Transition, Rollout]:
    """A newer candidate replaces a live rollout's: the old one is aborted, the new one starts in
    shadow against the same champion (its analysis starts over)."""
    if not r.live or r.state == "promoted":
        raise NotAllowed(f"only a rollout in shadow, canary or hold can be superseded; this one is {r.state}")
    aborted = Transition(r, _to(r, "aborted", now, plan), f"superseded by version {candidate}")
    return aborted, start(candidate, r.champion, plan, now)
