"""The retraining policy on live evidence: what :func:`rollout.policy.decide` weighs, read from the
store (labels, users' verdicts on the champion, the review budget, the live rollout), the drift log
(alarms and since when) and the registry (the champion's snapshot manifest, age and held-out
accuracy, the newest run)."""

from __future__ import annotations

import json
import logging
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from nicheloop.contracts import CHAMPION, PolicyDecided
from nicheloop.driftlog import INPUT_MONITORS, DriftLog
from nicheloop.errors import Conflict, GateRefused, NicheloopError, NotFound
from nicheloop.keys import Audit, Caller
from nicheloop.registry import MANIFEST, STOPGAP_OF, VersionInfo, manifest_images, world_since
from nicheloop.review import ReviewQueue
from nicheloop.rollouts import Rollouts
from nicheloop.store import Store
from rollout.controller import is_stopgap
from rollout.operations import Operations
from rollout.plan import RolloutPlan
from rollout.policy import Decision, Evidence, RetrainPolicy, decide, load_policy, stopgap_due

log = logging.getLogger(__name__)

POLICY_LEASE = "retrain-policy"  # one process at a time weighs the evidence and says the verdict
POLICY = Caller(name="policy", role="operator")  # who the audit log says decided


class PolicyRegistry(Protocol):
    """The registry reads the policy needs (:class:`nicheloop.registry.Registry` has them)."""

    def resolve(self, alias: str) -> VersionInfo: ...
    def version(self, version: str) -> VersionInfo: ...
    def stopgap_of(self, version: str) -> VersionInfo | None: ...
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

    def gather(self, now: float, *, training: bool = False, run_ended_at: float | None = None) -> Evidence:
        """The evidence at ``now`` (seconds since the epoch) for the champion of the moment;
        ``training``: a run is going on; ``run_ended_at``: when the last run ended, registered or
        not (a failed run must cool down too)."""
        champion = self.registry.resolve(CHAMPION)
        trained_on = self._snapshot(champion.run_id)
        new = [r for r in self.store.labeled_examples() if r.image_sha256 not in trained_on]
        # a stopgap champion is a patch of the version it recalibrated: that version's alarm stands
        patched = champion.tags.get(STOPGAP_OF)
        versions = [v for v in (champion.version, patched) if v]
        alarm = self.drift.earliest_alarm(versions)
        # the window that raised the alarm was served in the new world already: its labels confirm too
        began = self.drift.earliest_alarm(versions, window_start=True)
        inputs = self.drift.alarm_since(champion.version, INPUT_MONITORS)
        stopgap = champion if patched else self.registry.stopgap_of(champion.version)
        live = self.rollouts.live()
        # the version whose training the champion is (a stopgap's: the one it patches) and the new
        # world that training was for
        trained = self.registry.version(patched) if patched else champion
        since = world_since(trained, self.registry.version)
        # when each new label's image was served: only an alarm's or a new world's count needs it
        timed = new and (began is not None or since is not None)
        served = self.store.served_at([r.prediction_id for r in new]) if timed else {}
        # the labels of the alarm's traffic
        after_alarm = [
            r.label for r in new if began is not None and _served_since(served, r.prediction_id, began)
        ]
        world_labels = world_new = 0
        if since is not None:  # the recovery rule's counts
            world_labels = int(self.registry.run_metrics(trained.run_id).get("world_labels", 0))
            start = datetime.fromtimestamp(since, UTC)
            world_new = sum(_served_since(served, r.prediction_id, start) for r in new)
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
            labels_after_alarm=len(after_alarm),
            accuracy_drop_points=drop,
            user_labels=user_labels,
            holdout_accuracy=held_out,
            # a stopgap's rollout does not hold a run back: a trained candidate ends it
            rollout_live=live is not None and not is_stopgap(self.registry, live.candidate),
            training=training,
            last_run_at=max(
                (t for t in (self.registry.newest_at(), run_ended_at) if t is not None), default=None
            ),
            champion_since=champion.created_at,
            budget_left_hour=int(budget["left_hour"]) if isinstance(budget, dict) else None,
            input_alarm_since=inputs.timestamp() if inputs is not None else None,
            stopgap=stopgap.version if stopgap is not None else None,
            new_by_class=dict(sorted(Counter(r.label for r in new).items())),
            after_alarm_by_class=dict(sorted(Counter(after_alarm).items())),
            world_since=since,
            world_labels=world_labels,
            world_new_labels=world_new,
        )

    def explained(
        self, now: float, policy: RetrainPolicy, *, training: bool = False, run_ended_at: float | None = None
    ) -> dict[str, Any]:
        """:func:`explain` on the evidence at ``now``, with who paused the policy (None: nobody)
        and ``acted`` False (the loop sets it when it starts a run)."""
        evidence = self.gather(now, training=training, run_ended_at=run_ended_at)
        return explain(evidence, policy) | {"paused": self.rollouts.policy_pause(), "acted": False}

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


def _served_since(served: dict[str, datetime], prediction_id: str, at: datetime) -> bool:
    """Whether the prediction was served at ``at`` or later (one the store does not know: no)."""
    return prediction_id in served and served[prediction_id] >= at


def switch_policy(
    rollouts: Rollouts, audit: Audit, *, pause: bool, who: Caller, reason: str, source: str
) -> bool:
    """Pause the policy (it decides but starts no run) or let it act again, audited as ``who``'s;
    False if it already was so (nothing recorded)."""
    new = rollouts.pause_policy(by=who.name, reason=reason) if pause else rollouts.resume_policy()
    if new:
        audit.record(
            actor=who,
            action="policy.pause" if pause else "policy.resume",
            target="retraining policy",
            source=source,
            detail={"reason": reason},
        )
    return new


def explain(evidence: Evidence, policy: RetrainPolicy) -> dict[str, Any]:
    """The decision at the evidence's moment, with the evidence and why a stopgap is due (None: it
    is not), as one JSON-able object."""
    decision: Decision = decide(evidence, policy)
    return {
        "decision": asdict(decision),
        "evidence": asdict(evidence),
        "policy": policy.model_dump(),
        "stopgap_due": stopgap_due(evidence, policy),
    }


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
        runs: PolicyRuns | None = None,
        stopgaps: PolicyRuns | None = None,
        policy_file: Path | None = None,
    ) -> None:
        self.evidence, self.policy, self.holder, self.model_name = evidence, policy, holder, model_name
        self.announce, self.audit, self.every_s, self.runs = announce, audit, every_s, runs
        self.stopgaps = stopgaps
        self._stopgap_tried: dict[str, float] = {}  # champion -> when a stopgap run last began
        self.policy_file = policy_file
        self.latest: dict[str, Any] | None = None
        self._due, self._said = 0.0, ("", "", "")
        self._mtime = _mtime(policy_file)

    def step(self, now: float) -> dict[str, Any] | None:
        """Look once if a look is due at ``now`` and the lease is ours; the explanation, if looked."""
        if now < self._due:
            return None
        self._due = now + self.every_s
        if not self.evidence.rollouts.acquire(self.holder, now, ttl_s=3 * self.every_s, name=POLICY_LEASE):
            return None
        self._reload()
        runs = self.runs
        for each in (runs, self.stopgaps):
            if each is not None:
                each.poll(now)
        out = self.evidence.explained(
            now,
            self.policy,
            training=any(r is not None and r.running for r in (runs, self.stopgaps)),
            run_ended_at=runs.ended_at if runs is not None else None,
        )
        d, champion = out["decision"], str(out["evidence"].get("champion") or "")
        said = (champion, d["action"], d["rule"])
        if said != self._said and self._say(out, champion, now):
            self._said = said
        if d["action"] == "train" and runs is not None and out["paused"] is None:
            runs.start(rule=d["rule"], reason=d["reason"], champion=champion, now=now)
            out["acted"] = True
        elif out["paused"] is None and self._stopgap(out, champion, now):
            out["acted"] = True
        self.latest = out
        return out

    def _stopgap(self, out: dict[str, Any], champion: str, now: float) -> bool:
        """Start a stopgap run when one is due (at most one try every ten minutes per champion: a run
        that failed tries again later); whether one started."""
        why = out["stopgap_due"]
        if self.stopgaps is None or why is None or now - self._stopgap_tried.get(champion, -1e18) < 600:
            return False
        self._stopgap_tried[champion] = now
        self.stopgaps.start(
            rule="stopgap",
            reason=why,
            champion=champion,
            now=now,
            args=["--images", str(self.policy.stopgap_images)],
        )
        return True

    def _reload(self) -> None:
        """Read the policy file again once it changed (an operator edited it); a file that does not
        load keeps the policy in force, and says why."""
        mtime = _mtime(self.policy_file)
        if self.policy_file is None or mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            fresh = load_policy(self.policy_file)
        except NicheloopError as exc:
            log.warning("kept the retraining policy in force: %s does not load (%s)", self.policy_file, exc)
            return
        if fresh != self.policy:
            before, self.policy = self.policy.model_dump(), fresh
            changed = {k: [before[k], v] for k, v in fresh.model_dump().items() if before[k] != v}
            log.info("retraining policy reloaded from %s: %s", self.policy_file, changed)
            if self.audit is not None:
                self.audit.record(
                    actor=POLICY,
                    action="policy.reload",
                    target=str(self.policy_file),
                    source="controller",
                    detail={"changed": changed},
                )

    def _say(self, out: dict[str, Any], champion: str, now: float) -> bool:
        """Announce and audit one verdict; False if it could not be announced (tried again next look)."""
        d = out["decision"]
        figures = {k: v for k, v in d["figures"].items() if isinstance(v, int | float) and k != "now"}
        figures |= {  # per class, flat: "new_by_class.crazing"
            f"{k}.{c}": n for k, v in d["figures"].items() if isinstance(v, dict) for c, n in v.items()
        }
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
                action="policy.decided",
                target=f"champion {champion}",
                source="controller",
                detail={
                    "action": d["action"],
                    "rule": d["rule"],
                    "reason": d["reason"],
                    "decision_id": event.decision_id,
                },
            )
        log.info("retraining policy: %s (%s): %s", d["action"], d["rule"], d["reason"])
        return True


def _mtime(path: Path | None) -> float | None:
    try:
        return path.stat().st_mtime if path is not None else None
    except OSError:
        return None


class PolicyRuns:
    """The runs the policy starts, one at a time: ``command`` (``nicheloop train``) in a child
    process whose output goes to ``log_dir``, then the rollout of the version it registered with
    ``plan``. Each step is audited as the policy's. A child outlives no controller: :meth:`stop`
    ends it."""

    def __init__(
        self,
        ops: Operations,
        *,
        command: Sequence[str],
        log_dir: Path,
        plan: RolloutPlan,
        env: dict[str, str] | None = None,
        audit: Audit | None = None,
    ) -> None:
        self.ops, self.command, self.log_dir, self.plan = ops, list(command), log_dir, plan
        self.env, self.audit = env, audit
        self.ended_at: float | None = None
        self.last: dict[str, Any] | None = None  # the last run's outcome
        self._proc: subprocess.Popen[bytes] | None = None
        self._run: dict[str, Any] = {}

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, *, rule: str, reason: str, champion: str, now: float, args: Sequence[str] = ()) -> None:
        """Start a run, the command with ``args`` (nothing while one runs)."""
        if self._proc is not None:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        stem = self.log_dir / f"policy-run-{int(now)}"
        out, err = stem.with_suffix(".out"), stem.with_suffix(".log")
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self._proc = subprocess.Popen([*self.command, *args], stdout=stdout, stderr=stderr, env=self.env)
        self._run = {
            "rule": rule,
            "reason": reason,
            "champion": champion,
            "started_at": now,
            "out": str(out),
            "log": str(err),
        }
        log.info("retraining policy started a run (%s): %s; its log: %s", rule, reason, err)
        self._audit("policy.run", f"champion {champion}", {"rule": rule, "reason": reason, "log": str(err)})

    def poll(self, now: float) -> dict[str, Any] | None:
        """Once the run has ended: roll its candidate out (or say why not); the outcome, else None."""
        if self._proc is None or self._proc.poll() is None:
            return None
        rc, run = self._proc.returncode, self._run
        self._proc, self.ended_at = None, now
        version = _registered(Path(run["out"])) if rc == 0 else None
        outcome = run | {"ended_at": now, "returncode": rc, "version": version, "rollout": None}
        if version is None:
            outcome["error"] = f"the run failed (exit {rc}): {_tail(Path(run['log']))}"
            log.warning("retraining policy: %s", outcome["error"])
            self._audit("policy.run.failed", f"champion {run['champion']}", outcome)
        else:
            self._audit("policy.run.done", f"version {version}", outcome)
            try:
                started = self.ops.start(actor=POLICY.name, version=version, plan=self.plan)
                outcome["rollout"] = started.get("rollout_id")
            except (GateRefused, Conflict, NotFound) as exc:
                outcome["error"] = f"version {version} was not rolled out: {exc}"
                log.warning("retraining policy: %s", outcome["error"])
                self._audit("policy.rollout.refused", f"version {version}", outcome)
        self.last = outcome
        return outcome

    def stop(self, timeout_s: float = 10.0) -> None:
        """End a run going on (the controller is stopping)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()

    def _audit(self, action: str, target: str, detail: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.record(actor=POLICY, action=action, target=target, source="controller", detail=detail)


def _registered(out: Path) -> str | None:
    """The version ``nicheloop train`` registered: its last stdout line is its JSON result."""
    try:
        lines = [line for line in out.read_text().splitlines() if line.strip()]
        version = json.loads(lines[-1]).get("version") if lines else None
    except (OSError, ValueError, AttributeError):
        return None
    return str(version) if version is not None else None


def _tail(path: Path, lines: int = 5) -> str:
    """The last ``lines`` lines of a run's log, for the audit log and the warning."""
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])[-2000:]
    except OSError:
        return "(no log)"
