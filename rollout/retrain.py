"""The retraining policy on live evidence: what :func:`rollout.policy.decide` weighs, read from the
store (labels, users' verdicts on the champion, the review budget, the live rollout), the drift log
(alarms and since when) and the registry (the champion's snapshot manifest, age and held-out
accuracy, the newest run)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Protocol

from nicheloop.contracts import CHAMPION, PolicyDecided
from nicheloop.driftlog import DriftLog
from nicheloop.keys import Audit, Caller
from nicheloop.registry import MANIFEST, VersionInfo, manifest_images
from nicheloop.review import ReviewQueue
from nicheloop.rollouts import Rollouts
from nicheloop.store import Store
from rollout.policy import Decision, Evidence, RetrainPolicy, decide

log = logging.getLogger(__name__)

POLICY_LEASE = "retrain-policy"  # one process at a time weighs the evidence and says the verdict
POLICY = Caller(name="policy", role="operator")  # who the audit log says decided


class PolicyRegistry(Protocol):
    """The registry reads the policy needs (:class:`nicheloop.registry.Registry` has them)."""

    def resolve(self, alias: str) -> VersionInfo: ...
    def run_metrics(self, run_id: str) -> dict[str, float]: ...
    def artifact_text(self, run_id: str, name: str) -> str | None: ...
    def newest_at(self) -> float | None: ...


class PolicyEvidence:
    """Gathers :class:`rollout.policy.Evidence` at a moment. A champion's manifest is read once
    (it never changes) and kept by run id."""

    def __init__(self, store: Store, registry: PolicyRegistry) -> None:
        self.store, self.registry = store, registry
        self.drift, self.queue, self.rollouts = DriftLog(store), ReviewQueue(store), Rollouts(store)
        self._snapshots: dict[str, frozenset[str]] = {}

    def gather(self, now: float) -> Evidence:
        """The evidence at ``now`` (seconds since the epoch) for the champion of the moment."""
        champion = self.registry.resolve(CHAMPION)
        trained_on = self._snapshot(champion.run_id)
        new = [r for r in self.store.labeled_examples() if r.image_sha256 not in trained_on]
        alarm = self.drift.alarm_since(champion.version)
        after_alarm = 0
        if alarm is not None and new:
            served = self.store.served_at([r.prediction_id for r in new])
            after_alarm = sum(
                1 for r in new if r.prediction_id in served and served[r.prediction_id] >= alarm
            )
        hits, user_labels = self.store.user_label_hits(champion.version)
        held_out = self.registry.run_metrics(champion.run_id).get("holdout_accuracy")
        drop = (
            round(100.0 * (held_out - hits / user_labels), 2)
            if held_out is not None and user_labels
            else None
        )
        budget = self.queue.stats()["budget"]
        return Evidence(
            now=now,
            champion=champion.version,
            new_labels=len(new),
            alarm_since=alarm.timestamp() if alarm is not None else None,
            labels_after_alarm=after_alarm,
            accuracy_drop_points=drop,
            user_labels=user_labels,
            rollout_live=self.rollouts.live() is not None,
            last_run_at=self.registry.newest_at(),
            champion_since=champion.created_at,
            budget_left_hour=int(budget["left_hour"]) if isinstance(budget, dict) else None,
        )

    def _snapshot(self, run_id: str) -> frozenset[str]:
        """The images the run's manifest names (none where it has no readable manifest: a champion
        registered by hand trained on nothing the store knows)."""
        if run_id not in self._snapshots:
            text = self.registry.artifact_text(run_id, MANIFEST)
            try:
                self._snapshots[run_id] = manifest_images(text) if text else frozenset()
            except ValueError as exc:
                log.warning(
                    "run %s has an unreadable %s (%s): every label counts as new", run_id, MANIFEST, exc
                )
                self._snapshots[run_id] = frozenset()
        return self._snapshots[run_id]


def explain(evidence: Evidence, policy: RetrainPolicy) -> dict[str, Any]:
    """The decision at the evidence's moment, with the evidence, as one JSON-able object."""
    decision: Decision = decide(evidence, policy)
    return {"decision": asdict(decision), "evidence": asdict(evidence), "policy": policy.model_dump()}


class PolicyLoop:
    """Weighs the evidence every ``every_s`` seconds (while this process holds the policy's lease)
    and says each new verdict, a changed action or rule, on Kafka (``announce``) and in the audit
    log; :attr:`latest` keeps the last explanation for the metrics and the HTTP API. A verdict that
    could not be announced is said again at the next look."""

    def __init__(
        self,
        evidence: PolicyEvidence,
        policy: RetrainPolicy,
        *,
        holder: str,
        model_name: str,
        announce: Callable[[PolicyDecided], None] | None = None,
        audit: Audit | None = None,
        every_s: float = 30.0,
    ) -> None:
        self.evidence, self.policy, self.holder, self.model_name = evidence, policy, holder, model_name
        self.announce, self.audit, self.every_s = announce, audit, every_s
        self.latest: dict[str, Any] | None = None
        self._due, self._said = 0.0, ("", "", "")

    def step(self, now: float) -> dict[str, Any] | None:
        """Look once if a look is due at ``now`` and the lease is ours; the explanation, if looked."""
        if now < self._due:
            return None
        self._due = now + self.every_s
        if not self.evidence.rollouts.acquire(self.holder, now, ttl_s=3 * self.every_s, name=POLICY_LEASE):
            return None
        out = explain(self.evidence.gather(now), self.policy)
        self.latest = out
        d, champion = out["decision"], str(out["evidence"].get("champion") or "")
        said = (champion, d["action"], d["rule"])
        if said != self._said and self._say(out, champion, now):
            self._said = said
        return out

    def _say(self, out: dict[str, Any], champion: str, now: float) -> bool:
        """Announce and audit one verdict; False if it could not be announced (tried again next look)."""
        d = out["decision"]
        figures = {k: v for k, v in d["figures"].items() if isinstance(v, int | float) and k != "now"}
        event = PolicyDecided(
            model_name=self.model_name,
            champion=champion,
            action=d["action"],
            rule=d["rule"],
            reason=d["reason"][:4000],
            figures=figures,
            created_at=datetime.fromtimestamp(now, UTC),
        )
        try:
            if self.announce is not None:
                self.announce(event)
        except Exception as exc:  # noqa: BLE001  the controller's ticks must go on while Kafka is away
            log.warning("policy decision not announced yet (%s); saying it again next look", exc)
            return False
        if self.audit is not None:
            self.audit.record(
                actor=POLICY,
                action=f"policy.{d['action']}",
                target=f"champion {champion}",
                source="controller",
                detail={"rule": d["rule"], "reason": d["reason"], "decision_id": event.decision_id},
            )
        log.info("retraining policy: %s (%s): %s", d["action"], d["rule"], d["reason"])
        return True
