"""What operators do with rollouts, the same from the command line and over HTTP: start one, read
its status and history, pause, resume, roll back, force a promotion, adopt a champion by hand.

Every action is stored with its actor and reason in the audit trail; the controller process sends
the trail on ``nicheloop.rollouts.v1`` (:meth:`rollout.controller.Controller.publish_pending`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from nicheloop.rollouts import NO_ROLLOUT, Rollouts
from rollout.controller import Action, AliasRegistry, adopt, operate, start_rollout
from rollout.plan import RolloutPlan
from rollout.status import arm_traffic, describe


class Operations:
    """The operator's verbs over one model's rollout record and registry; answers are JSON-ready."""

    def __init__(self, rollouts: Rollouts, registry: AliasRegistry) -> None:
        self.rollouts, self.registry = rollouts, registry

    def status(self) -> dict[str, Any]:
        """The live rollout (else the latest) described, and the recorded champion."""
        now = time.time()
        r = self.rollouts.live() or self.rollouts.latest()
        base = {"champion": self.rollouts.champion()}
        if r is None:
            return base | {
                "state": "none",
                "waiting_for": "a candidate: `nicheloop rollout start`",
                "arms": arm_traffic(self.rollouts, NO_ROLLOUT, now),
            }
        return base | describe(self.rollouts, r, now)

    def history(self, rollout_id: int | None = None, *, limit: int = 200) -> list[dict[str, Any]]:
        """Audit events, oldest first (``at`` as ISO 8601)."""
        if rollout_id is not None:
            self.rollouts.get(rollout_id)  # NotFound for an unknown id
        return [
            dataclasses.asdict(e) | {"at": e.at.isoformat()}
            for e in self.rollouts.history(rollout_id, limit=limit)
        ]

    def start(
        self, *, actor: str, version: str | None = None, plan: RolloutPlan | None = None
    ) -> dict[str, Any]:
        """Start the candidate (``version``, or the candidate alias's) in shadow.

        Raises:
            GateRefused: an offline gate refused it. Conflict: a rollout is live. NotFound: no such version.
        """
        started = start_rollout(
            self.rollouts, self.registry, plan or RolloutPlan(), now=time.time(), actor=actor, version=version
        )
        return describe(self.rollouts, started, time.time())

    def act(self, action: Action, *, actor: str, reason: str) -> dict[str, Any]:
        """``pause``, ``resume``, ``rollback`` or ``promote`` (forced) the live rollout.

        Raises:
            NotFound: no rollout is live. Conflict: the action does not apply now (the message says
            why), or the controller moved it meanwhile.
        """
        after = operate(self.rollouts, self.registry, action, now=time.time(), actor=actor, reason=reason)
        return describe(self.rollouts, after, time.time())

    def adopt(self, *, actor: str, reason: str, version: str | None = None) -> dict[str, Any]:
        """Record ``version`` (default: the champion alias's) as champion without a rollout."""
        stored = adopt(
            self.rollouts, self.registry, now=time.time(), actor=actor, reason=reason, version=version
        )
        return {"champion": stored.candidate, "rollout_id": stored.id, "previous": stored.champion}
