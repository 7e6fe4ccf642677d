"""The rollout controller: reconciles the live rollout on an interval, and the operators' actions.

Each :meth:`Controller.tick` takes the controller lease (one controller at a time), lets a newer
candidate supersede the live one, runs the gates of the rollout's phase on live evidence, beats the
heartbeat the gateways route by (only once the gates have run: a controller that cannot read its
evidence lets the candidate's share lapse), and stores what :func:`rollout.machine.decide` says,
with the gates' figures, as one compare-and-set move. The ``champion`` alias follows the stored record only:
a promotion moves it after the move is recorded, a rollback of a promoted candidate moves it back,
and a tick repairs an alias that a crash left behind the record.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from pydantic import BaseModel

from nicheloop.contracts import CANDIDATE, CHAMPION, ROLLOUTS_TOPIC, RolloutMoved
from nicheloop.errors import Conflict, NotFound, NotReady
from nicheloop.keys import Audit, Caller
from nicheloop.registry import STOPGAP_OF, VersionInfo
from nicheloop.rollouts import Rollout, RolloutEvent, Rollouts
from rollout.gates import Evidence, GateResult, Live, evaluate
from rollout.machine import (
    GATED,
    Transition,
    decide,
    force_promote,
    pause,
    resume,
    retire,
    rollback,
    start,
    supersede,
)
from rollout.plan import RolloutPlan
from rollout.promote import PREVIOUS, offline_gates

log = logging.getLogger(__name__)

Action = Literal["pause", "resume", "rollback", "promote"]
CONTROLLER = Caller(name="controller", role="operator")  # who the audit log says moved on its own
ACTIONS = {"pause": pause, "resume": resume, "rollback": rollback, "promote": force_promote}


class AliasRegistry(Protocol):
    """The registry operations rollouts need (:class:`nicheloop.registry.Registry` has them)."""

    def resolve(self, alias: str) -> VersionInfo: ...
    def version(self, version: str) -> VersionInfo: ...
    def run_metrics(self, run_id: str) -> dict[str, float]: ...
    def set_alias(self, alias: str, version: str) -> None: ...


class EvidenceSource(Protocol):
    """Where the live gates' figures come from: both arms over the current step's window."""

    def live(self, rollout: Rollout, plan: RolloutPlan, now: float) -> Live: ...


Announce = Callable[[RolloutEvent], None]  # sends one audit event on, e.g. to Kafka


class DurablePublisher(Protocol):
    """:class:`nicheloop.bus.Publisher`'s durable send (acknowledged, or fsynced into its spool)."""

    def publish_durable(self, topic: str, key: str, event: BaseModel, ack_timeout_s: float = 5.0) -> None: ...


def kafka_announce(publisher: DurablePublisher, model_name: str) -> Announce:
    """An :data:`Announce` that publishes an audit event on ``nicheloop.rollouts.v1``, durably (its
    id makes a resend after a crash recognisable)."""

    def announce(e: RolloutEvent) -> None:
        event = RolloutMoved(
            event_id=f"rollout-event-{e.id}",
            rollout_id=e.rollout_id,
            model_name=model_name,
            candidate=e.candidate,
            champion=e.champion,
            from_state=e.from_state,
            to_state=e.to_state,
            from_share=e.from_share,
            to_share=e.to_share,
            actor=e.actor,
            reason=e.reason,
            revision=e.revision,
            created_at=e.at,
        )
        publisher.publish_durable(ROLLOUTS_TOPIC, str(e.rollout_id), event)

    return announce


def _figures(gates: Sequence[GateResult]) -> list[dict[str, object]]:
    return [dataclasses.asdict(g) for g in gates]


class Controller:
    """One reconciling controller; ``holder`` names it in the lease (host and process)."""

    def __init__(
        self,
        rollouts: Rollouts,
        registry: AliasRegistry,
        source: EvidenceSource,
        *,
        holder: str,
        announce: Announce | None = None,
        audit: Audit | None = None,
        idle_s: float = 5.0,
    ) -> None:
        self.rollouts, self.registry, self.source, self.holder = rollouts, registry, source, holder
        self.announce, self.audit, self.idle_s = announce, audit, idle_s

    def publish_pending(self) -> int:
        """Send the audit events not yet announced (every move, whoever stored it), oldest first;
        how many were sent. A send that fails stops the sending, not the tick: the next one resends."""
        if self.announce is None:
            return 0
        sent: list[int] = []
        try:
            for event in self.rollouts.unpublished():
                self.announce(event)
                sent.append(event.id)
        except Exception as exc:  # noqa: BLE001  the gates must run even while Kafka is away
            log.warning("rollout events not announced yet (%s); retrying next tick", exc)
        if sent:
            self.rollouts.mark_published(sent)
        return len(sent)

    def tick(self, now: float) -> Transition | None:
        """Reconcile once at ``now``; the move stored, if any. None also when another controller
        holds the lease, or when a move decided here lost a race (the next tick reads again)."""
        live = self.rollouts.live()
        plan = RolloutPlan(**self.rollouts.plan(live.id)) if live is not None and live.id else RolloutPlan()
        if not self.rollouts.acquire(self.holder, now, ttl_s=3 * max(plan.interval_s, self.idle_s)):
            return None
        self.publish_pending()
        if live is None or live.id is None:
            latest = self.rollouts.latest()
            if latest is not None:
                sync_champion(self.registry, latest)
            return None
        sync_champion(self.registry, live)
        newer = self._newer_candidate(live)
        if newer is not None:
            aborted, fresh = supersede(live, newer, plan, now)
            stored = self._audited(record_move(self.rollouts, self.registry, aborted))
            if stored is not None:
                made = self.rollouts.create(fresh, plan=plan.model_dump(mode="json"), actor="controller",
                                            reason=f"new candidate {newer}", now=now)  # fmt: skip
                self._audited(
                    Transition(before=fresh, after=made, reason=f"new candidate {newer}"), started=True
                )
            return stored
        results: list[GateResult] = []
        if live.state in GATED:
            evidence = Evidence(
                self.registry,
                self.registry.version(live.champion),
                self.registry.version(live.candidate),
                live=self.source.live(live, plan, now),
                plan=plan,
            )
            results = evaluate(evidence, GATED[live.state])
            self.rollouts.beat(live.id, now, checks=_figures(results))  # only once the gates have run
        else:
            self.rollouts.beat(live.id, now)
        move = decide(live, results, plan, now)
        return None if move is None else self._audited(record_move(self.rollouts, self.registry, move))

    def _audited(self, move: Transition | None, *, started: bool = False) -> Transition | None:
        """Each move the controller makes by itself in the audit log too, beside the operators'
        acts (which are logged where they are made); ``started``: a rollout it created."""
        if move is not None and self.audit is not None:
            after = move.after
            self.audit.record(
                actor=CONTROLLER,
                action=f"rollout.{after.state}",
                target=f"rollout {after.id} {after.candidate}",
                source=self.holder,
                detail={
                    "reason": move.reason,
                    "from": "none" if started else move.before.state,
                    "step": after.step,
                },
            )
        return move

    def _newer_candidate(self, live: Rollout) -> str | None:
        if live.state not in (*GATED, "hold"):
            return None
        try:
            version = self.registry.resolve(CANDIDATE).version
        except NotReady:
            return None
        if version in (live.candidate, live.champion) or is_stopgap(self.registry, live.candidate):
            return None  # a trained version ends a stopgap's rollout when it starts (start_rollout)
        return version


def record_move(rollouts: Rollouts, registry: AliasRegistry, move: Transition) -> Transition | None:
    """Store ``move`` with its gates' figures (the controller announces it from the trail), then
    bring the champion alias in line; None when the rollout moved meanwhile (compare and set lost)."""
    try:
        after = rollouts.record(
            move.before, move.after, actor=move.actor, reason=move.reason, figures=_figures(move.gates)
        )
    except Conflict as exc:
        log.warning("rollout move not stored (%s); read it again", exc)
        return None
    log.info("rollout %s: %s -> %s (%s)", after.id, move.before.state, after.state, move.reason)
    sync_champion(registry, after)
    return dataclasses.replace(move, after=after)


def sync_champion(registry: AliasRegistry, r: Rollout) -> None:
    """Make the champion alias say what the record ``r`` says (idempotent: repairs a move that a
    crash interrupted between the record and the alias)."""
    try:
        current: str | None = registry.resolve(CHAMPION).version
    except NotReady:  # the first version ever adopted: there is no champion to keep as previous
        current = None
    if r.state in ("promoted", "baked") and current != r.candidate:
        if current is not None:
            registry.set_alias(PREVIOUS, r.champion)
        registry.set_alias(CHAMPION, r.candidate)
        log.info("champion is now version %s (was %s), as rollout %s records", r.candidate, current, r.id)
    elif r.state == "rolled_back" and current == r.candidate:
        registry.set_alias(CHAMPION, r.champion)
        log.info("champion is back to version %s: rollout %s was rolled back", r.champion, r.id)


def start_rollout(
    rollouts: Rollouts,
    registry: AliasRegistry,
    plan: RolloutPlan,
    *,
    now: float,
    actor: str,
    version: str | None = None,
) -> Rollout:
    """Start the candidate (``version``, which becomes the candidate alias, or the alias's version)
    in shadow, once it passes the offline gates: a held-out loss beyond the plan's ``offline_tolerance``
    refuses it when significant at the plan's ``alpha`` (shadow and canary then look at live labels).

    Raises:
        GateRefused: an offline gate failed or held. Conflict: a rollout is live already.
        NotFound: no such version.
    """
    if version is not None:
        registry.version(version)  # NotFound for a typo, before any alias moves
        registry.set_alias(CANDIDATE, version)
    checked = offline_gates(registry, tolerance=plan.offline_tolerance, alpha=plan.alpha)
    _retire_stopgap(rollouts, registry, checked.promoted, now=now, actor=actor)
    first = start(checked.promoted, checked.previous, plan, now)
    return rollouts.create(
        first,
        plan=plan.model_dump(mode="json"),
        actor=actor,
        reason=f"offline gates passed: {', '.join(g.gate for g in checked.gates)}",
        now=now,
    )


class VersionReader(Protocol):
    """Reads one version's record (both registries the rollouts and the policy use have it)."""

    def version(self, version: str) -> VersionInfo: ...


def is_stopgap(registry: VersionReader, version: str) -> bool:
    """Whether ``version`` is a label-free stopgap (training.adapt), not a trained version."""
    return STOPGAP_OF in registry.version(version).tags


def _retire_stopgap(
    rollouts: Rollouts, registry: AliasRegistry, candidate: str, *, now: float, actor: str
) -> None:
    """A trained ``candidate`` ends the live rollout of a stopgap (a patch until a retrained version
    comes); any other live rollout stays, and :meth:`Rollouts.create` refuses the new one."""
    live = rollouts.live()
    if (
        live is None
        or live.id is None
        or not is_stopgap(registry, live.candidate)
        or is_stopgap(registry, candidate)
    ):
        return
    plan = RolloutPlan(**rollouts.plan(live.id))
    move = retire(live, plan, now, actor=actor, reason=f"trained version {candidate} replaces the stopgap")
    if record_move(rollouts, registry, move) is None:
        raise Conflict(f"rollout {live.id} moved while version {candidate} started; try again")


def adopt(
    rollouts: Rollouts,
    registry: AliasRegistry,
    *,
    now: float,
    actor: str,
    reason: str,
    version: str | None = None,
) -> Rollout:
    """Record ``version`` (default: the one the champion alias names) as champion without a gated
    rollout, and move the alias to it: for an install from before rollouts were recorded, or a
    benchmark that serves versions by hand. Serving follows the record within a reload interval.

    Raises:
        NotFound: no such version. NotReady: no version given and no champion alias.
        Conflict: a rollout is live.
    """
    version = version or registry.resolve(CHAMPION).version
    registry.version(version)  # NotFound for a typo, before anything is recorded
    stored = rollouts.record_champion(
        version, previous=rollouts.champion(), actor=actor, reason=reason, now=now
    )
    sync_champion(registry, stored)
    return stored


def operate(
    rollouts: Rollouts, registry: AliasRegistry, action: Action, *, now: float, actor: str, reason: str
) -> Rollout:
    """An operator's ``action`` on the live rollout, recorded with ``actor`` and ``reason``; a forced
    promotion or a rollback moves the champion alias as the controller would.

    Raises:
        NotFound: no live rollout. NotAllowed: the action does not apply to its state.
        Conflict: the controller moved it meanwhile (look at `status` and try again).
    """
    live = rollouts.live()
    if live is None:
        raise NotFound("no rollout is live; start one with `nicheloop rollout start`")
    plan = RolloutPlan(**rollouts.plan(live.id or 0))
    move = ACTIONS[action](live, plan, now, actor=actor, reason=reason)
    stored = record_move(rollouts, registry, move)
    if stored is None:
        raise Conflict(f"rollout {live.id} moved while you acted; check `nicheloop rollout status` and retry")
    return stored.after
