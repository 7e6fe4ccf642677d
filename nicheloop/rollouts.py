"""Rollouts as stored: the record the controller moves and the gateways route by, its append-only
audit trail, and the lease that keeps one controller at a time (on the SQL store).

Guarantees, on SQLite and PostgreSQL alike:

- **No double transition.** A move is stored only if the row still has the revision it was decided
  from (compare and set); a controller that crashed and came back, or a second one, gets Conflict.
- **Nothing unrecorded.** The row and its audit event are written in one transaction.
- **One live rollout.** A new one is refused while another is in shadow, canary, hold or promoted.
- **Only a recorded champion serves.** :meth:`Rollouts.champion` is the version the newest record
  makes champion; serving loads that one, whatever the registry's alias says.
- **A dead controller stops the candidate.** Gateways route by :meth:`Rollouts.routing`, which
  gives the candidate nothing once the controller's heartbeat is older than the caller allows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from nicheloop.contracts import aware, utcnow
from nicheloop.errors import Conflict, NotFound
from nicheloop.latency import merge
from nicheloop.store import (
    ArmCallsRow,
    Feedback,
    Lease,
    PolicyPauseRow,
    Prediction,
    RolloutEventRow,
    RolloutRow,
    Store,
)

State = Literal["shadow", "canary", "promoted", "baked", "rolled_back", "aborted", "hold"]
LIVE: frozenset[str] = frozenset({"shadow", "canary", "promoted", "hold"})
CONTROLLER_LEASE = "rollout-controller"
CREATE_LOCK = "rollout-create"
POLICY_PAUSE = "retrain-policy"


@dataclass(frozen=True)
class Rollout:
    """One candidate's way to champion (``rollout.machine`` decides its moves)."""

    candidate: str
    champion: str  # the version it is compared with, and replaces when promoted
    state: State = "shadow"
    step: int = 0  # index into the plan's canary steps
    share: float = 0.0  # of requests the candidate answers
    mirror: float = 0.0  # of requests mirrored to the candidate (shadow: answers unused)
    entered_at: float = 0.0  # when the current state or step began (seconds since the epoch)
    failures: int = 0  # failed statistical checks so far
    held: State | None = None  # the state a hold returns to
    revision: int = 0  # bumped by every stored move
    id: int | None = None  # set once stored

    @property
    def live(self) -> bool:
        return self.state in LIVE


@dataclass(frozen=True)
class ArmCalls:
    """One arm's calls over a window, as the gateways flushed them: latency as bucket -> count."""

    calls: int = 0
    errors: int = 0
    latency: dict[int, int] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Scored:
    """One prediction of a rollout's window as the gates see it: what it said and with what
    probabilities, its delayed label if one came, and (shadow) what the champion said of the image."""

    predicted: str
    probs: list[float]
    class_names: list[str]
    truth: str | None = None
    twin: str | None = None  # the champion's label for a shadow prediction's image
    stats: dict[str, float] | None = None  # the image's input-drift statistics, where kept
    image_sha256: str | None = None  # which image (the operator page shows disagreements)


@dataclass(frozen=True)
class RolloutEvent:
    """One line of the audit trail."""

    rollout_id: int
    at: datetime
    actor: str
    from_state: str | None
    to_state: str
    from_share: float
    to_share: float
    reason: str
    figures: list[dict[str, Any]]
    candidate: str
    champion: str
    revision: int
    id: int = 0  # its place in the trail


NO_ROLLOUT = 0  # the rollout id of arm calls made while none is live (real ids start at 1)
ARM_CALLS_KEEP_S = 2 * 86_400.0  # calls outside any rollout are kept this long; a rollout's for its record


@dataclass(frozen=True)
class Routing:
    """What a gateway needs: which version gets which share of requests, answered and mirrored."""

    rollout_id: int
    candidate: str
    champion: str
    share: float
    mirror: float


FIELDS = [f.name for f in dataclasses.fields(Rollout) if f.name != "id"]


def _record(row: RolloutRow) -> Rollout:
    return Rollout(id=row.id, **{name: getattr(row, name) for name in FIELDS})


def _event(row: RolloutEventRow) -> RolloutEvent:
    return RolloutEvent(**{f.name: getattr(row, f.name) for f in dataclasses.fields(RolloutEvent)})


class Rollouts:
    """Typed access to the rollouts, their audit trail and the controller's lease."""

    def __init__(self, store: Store) -> None:
        self.store = store
        store.add_lock(CREATE_LOCK)

    def live(self) -> Rollout | None:
        """The rollout in shadow, canary, hold or promoted, if any."""
        with Session(self.store.engine) as s:
            row = s.scalar(
                select(RolloutRow).where(RolloutRow.state.in_(LIVE)).order_by(RolloutRow.id.desc())
            )
            return None if row is None else _record(row)

    def get(self, rollout_id: int) -> Rollout:
        """Raises NotFound for an unknown id."""
        with Session(self.store.engine) as s:
            row = s.get(RolloutRow, rollout_id)
            if row is None:
                raise NotFound(f"no rollout {rollout_id}; `nicheloop rollout history` lists them")
            return _record(row)

    def latest(self) -> Rollout | None:
        """The newest rollout, whatever its state."""
        with Session(self.store.engine) as s:
            row = s.scalar(select(RolloutRow).order_by(RolloutRow.id.desc()))
            return None if row is None else _record(row)

    def champion(self) -> str | None:
        """The version the newest record makes champion (its candidate once promoted or baked, its
        champion otherwise); None before anything is recorded."""
        latest = self.latest()
        if latest is None:
            return None
        return latest.candidate if latest.state in ("promoted", "baked") else latest.champion

    def record_champion(
        self, version: str, *, previous: str | None, actor: str, reason: str, now: float
    ) -> Rollout:
        """Record ``version`` as champion outside a gated rollout (the first model, an offline
        promotion): a rollout stored already baked, so the audit trail says who and why.

        Raises:
            Conflict: a rollout is live (let it finish, or roll it back first).
        """
        done = Rollout(version, previous or version, state="baked", entered_at=now)
        return self.create(done, plan={}, actor=actor, reason=reason, now=now)

    def create(
        self, rollout: Rollout, *, plan: dict[str, Any], actor: str, reason: str, now: float
    ) -> Rollout:
        """Store a new rollout and its first audit event.

        Raises:
            Conflict: another rollout is live (roll it back, or let the new candidate supersede it).
        """
        with Session(self.store.engine) as s, s.begin():
            self.store.serialize(s, CREATE_LOCK)  # two creations cannot both see none live
            other = s.scalar(select(RolloutRow).where(RolloutRow.state.in_(LIVE)))
            if other is not None:
                raise Conflict(
                    f"rollout {other.id} of version {other.candidate} is {other.state}; roll it back first"
                )
            row = RolloutRow(**{name: getattr(rollout, name) for name in FIELDS}, plan=plan, heartbeat_at=now)
            s.add(row)
            s.flush()
            stored = _record(row)
            s.add(self._audit(None, stored, actor=actor, reason=reason, figures=[]))
        return stored

    def record(
        self,
        before: Rollout,
        after: Rollout,
        *,
        actor: str,
        reason: str,
        figures: list[dict[str, Any]] | None = None,
    ) -> Rollout:
        """Store the move ``before`` -> ``after`` and its audit event, only if nobody moved it since
        ``before`` was read.

        Raises:
            Conflict: the stored revision is no longer ``before``'s (another move won; read again).
        """
        if before.id is None or after.id not in (None, before.id):
            raise ValueError("record() moves a stored rollout: before must come from the store")
        after = dataclasses.replace(after, id=before.id)
        values = {name: getattr(after, name) for name in FIELDS}
        with Session(self.store.engine) as s, s.begin():
            moved = s.execute(
                update(RolloutRow)
                .where(RolloutRow.id == before.id, RolloutRow.revision == before.revision)
                .values(**values)
                .returning(RolloutRow.id)
            ).first()
            if moved is None:
                raise Conflict(f"rollout {before.id} moved since revision {before.revision}; read it again")
            s.add(self._audit(before, after, actor=actor, reason=reason, figures=figures or []))
        return after

    @staticmethod
    def _audit(
        before: Rollout | None, after: Rollout, *, actor: str, reason: str, figures: list[dict[str, Any]]
    ) -> RolloutEventRow:
        assert after.id is not None
        return RolloutEventRow(
            rollout_id=after.id,
            at=utcnow(),
            actor=actor,
            from_state=None if before is None else before.state,
            to_state=after.state,
            from_share=0.0 if before is None else before.share,
            to_share=after.share,
            reason=reason[:2000],
            figures=figures,
            candidate=after.candidate,
            champion=after.champion,
            revision=after.revision,
        )

    def history(self, rollout_id: int | None = None, *, limit: int = 200) -> list[RolloutEvent]:
        """Audit events, oldest first (of one rollout, or the latest ``limit`` of all)."""
        with Session(self.store.engine) as s:
            query = select(RolloutEventRow).order_by(RolloutEventRow.id.desc()).limit(limit)
            if rollout_id is not None:
                query = query.where(RolloutEventRow.rollout_id == rollout_id)
            return [_event(row) for row in reversed(s.scalars(query).all())]

    def transition_counts(self) -> dict[str, int]:
        """Stored moves so far, by the state they reached (rollbacks, promotions, ...)."""
        with Session(self.store.engine) as s:
            rows = s.execute(
                select(RolloutEventRow.to_state, func.count()).group_by(RolloutEventRow.to_state)
            ).all()
            return {state: int(n) for state, n in rows}

    def unpublished(self, *, limit: int = 100) -> list[RolloutEvent]:
        """Audit events not yet sent on Kafka, oldest first (the trail is the outbox)."""
        with Session(self.store.engine) as s:
            rows = s.scalars(
                select(RolloutEventRow)
                .where(or_(RolloutEventRow.published.is_(None), RolloutEventRow.published.is_(False)))
                .order_by(RolloutEventRow.id)
                .limit(limit)
            ).all()
            return [_event(row) for row in rows]

    def mark_published(self, event_ids: list[int]) -> None:
        with Session(self.store.engine) as s, s.begin():
            s.execute(update(RolloutEventRow).where(RolloutEventRow.id.in_(event_ids)).values(published=True))

    def plan(self, rollout_id: int) -> dict[str, Any]:
        """The plan a rollout was started with (as stored: a JSON mapping)."""
        with Session(self.store.engine) as s:
            row = s.get(RolloutRow, rollout_id)
            if row is None:
                raise NotFound(f"no rollout {rollout_id}")
            return dict(row.plan)

    def beat(self, rollout_id: int, now: float, *, checks: list[dict[str, Any]] | None = None) -> None:
        """The controller is alive and watching ``rollout_id``; ``checks``: its gates' verdicts now."""
        values: dict[str, Any] = {"heartbeat_at": now}
        if checks is not None:
            values |= {"checks": checks, "checked_at": now}
        with Session(self.store.engine) as s, s.begin():
            s.execute(update(RolloutRow).where(RolloutRow.id == rollout_id).values(**values))

    def checks(self, rollout_id: int) -> tuple[list[dict[str, Any]], float | None, float]:
        """The gates' verdicts of the controller's last tick, when that was, and its last heartbeat."""
        with Session(self.store.engine) as s:
            row = s.get(RolloutRow, rollout_id)
            if row is None:
                raise NotFound(f"no rollout {rollout_id}")
            return list(row.checks or []), row.checked_at, row.heartbeat_at

    def routing(self, now: float, *, stale_s: float) -> Routing | None:
        """The live rollout's routing; the candidate gets nothing (answered or mirrored) when the
        controller has not beaten for ``stale_s`` (a dead controller must not leave a canary running).
        A promoted rollout routes nothing: the champion alias already serves its version."""
        with Session(self.store.engine) as s:
            row = s.scalar(select(RolloutRow).where(RolloutRow.state.in_(("shadow", "canary", "hold"))))
            if row is None:
                return None
            alive = now - row.heartbeat_at <= stale_s
            return Routing(
                row.id,
                row.candidate,
                row.champion,
                share=row.share if alive else 0.0,
                mirror=row.mirror if alive else 0.0,
            )

    def acquire(self, holder: str, now: float, *, ttl_s: float, name: str = CONTROLLER_LEASE) -> bool:
        """Take or renew the lease ``name`` for ``ttl_s``; False while another holder's is unexpired."""
        with Session(self.store.engine) as s, s.begin():
            self.store.insert_ignore(s, Lease, {"name": name, "holder": holder, "expires_at": 0.0}, ["name"])
            won = s.execute(
                update(Lease)
                .where(Lease.name == name, (Lease.holder == holder) | (Lease.expires_at < now))
                .values(holder=holder, expires_at=now + ttl_s)
                .returning(Lease.name)
            ).first()
            return won is not None

    def policy_pause(self) -> dict[str, str] | None:
        """Who paused the retraining policy, when and why; None while it runs."""
        with Session(self.store.engine) as s:
            row = s.get(PolicyPauseRow, POLICY_PAUSE)
            if row is None:
                return None
            return {"by": row.set_by, "reason": row.reason, "at": aware(row.set_at).isoformat()}

    def pause_policy(self, *, by: str, reason: str, now: datetime | None = None) -> bool:
        """Stop the retraining policy starting runs (it still decides); False if it already was."""
        with Session(self.store.engine) as s, s.begin():
            values = {"name": POLICY_PAUSE, "reason": reason, "set_at": now or utcnow(), "set_by": by}
            return self.store.insert_ignore(s, PolicyPauseRow, values, ["name"])

    def resume_policy(self) -> bool:
        """Let the retraining policy start runs again; False if it was not paused."""
        with Session(self.store.engine) as s, s.begin():
            gone = delete(PolicyPauseRow).where(PolicyPauseRow.name == POLICY_PAUSE)
            return s.execute(gone.returning(PolicyPauseRow.name)).first() is not None

    def release(self, holder: str, *, name: str = CONTROLLER_LEASE) -> None:
        """Give the lease up (a clean stop), so the next controller need not wait for it to expire."""
        with Session(self.store.engine) as s, s.begin():
            s.execute(update(Lease).where(Lease.name == name, Lease.holder == holder).values(expires_at=0.0))

    def add_calls(self, counted: dict[tuple[int, str], ArmCalls], *, now: float) -> None:
        """Append what a gateway saw of each (rollout, arm) since its last flush, in one transaction."""
        rows = [
            ArmCallsRow(
                rollout_id=rollout_id,
                arm=arm,
                at=now,
                calls=c.calls,
                errors=c.errors,
                latency={str(k): n for k, n in c.latency.items()},
            )
            for (rollout_id, arm), c in counted.items()
            if c.calls
        ]
        if rows:
            with Session(self.store.engine) as s, s.begin():
                s.add_all(rows)
                if any(r.rollout_id == NO_ROLLOUT for r in rows):
                    s.execute(
                        delete(ArmCallsRow).where(
                            ArmCallsRow.rollout_id == NO_ROLLOUT, ArmCallsRow.at < now - ARM_CALLS_KEEP_S
                        )
                    )

    def arm_calls(self, rollout_id: int, *, since: float) -> dict[str, ArmCalls]:
        """Every arm's calls flushed after ``since``, summed over the gateways, by arm."""
        with Session(self.store.engine) as s:
            rows = s.scalars(
                select(ArmCallsRow).where(ArmCallsRow.rollout_id == rollout_id, ArmCallsRow.at > since)
            ).all()
        out: dict[str, ArmCalls] = {}
        for arm in sorted({r.arm for r in rows}):
            mine = [r for r in rows if r.arm == arm]
            out[arm] = ArmCalls(
                sum(r.calls for r in mine), sum(r.errors for r in mine), merge(r.latency for r in mine)
            )
        return out

    def scored(self, rollout: Rollout, *, since: float) -> dict[str, list[Scored]]:
        """The predictions of each arm made after ``since`` (as the joiner stored them), with their
        newest delayed label: the champion's (its version, answered by it), the candidate's answers,
        and the candidate's shadow predictions labeled through their champion twins."""
        after = datetime.fromtimestamp(since, UTC)
        twin = aliased(Prediction)
        with Session(self.store.engine) as s:
            own = s.execute(
                select(Prediction, Feedback.label)
                .outerjoin(Feedback, Feedback.prediction_id == Prediction.prediction_id)
                .where(
                    Prediction.created_at >= after,
                    or_(
                        (Prediction.model_version == rollout.champion)
                        & or_(Prediction.arm.is_(None), Prediction.arm == "champion"),
                        (Prediction.model_version == rollout.candidate) & (Prediction.arm == "candidate"),
                    ),
                )
                .order_by(Feedback.created_at)
            ).all()
            shadow = s.execute(
                select(Prediction, twin.label, Feedback.label)
                .join(twin, twin.prediction_id == Prediction.paired_with)
                .outerjoin(Feedback, Feedback.prediction_id == Prediction.paired_with)
                .where(
                    Prediction.created_at >= after,
                    Prediction.arm == "shadow",
                    Prediction.model_version == rollout.candidate,
                )
                .order_by(Feedback.created_at)
            ).all()
        out: dict[str, dict[str, Scored]] = {"champion": {}, "candidate": {}, "shadow": {}}
        for p, truth in own:  # the newest label of a prediction comes last and wins
            arm = "candidate" if p.arm == "candidate" else "champion"
            out[arm][p.prediction_id] = Scored(
                p.label, p.probs, p.class_names, truth, stats=p.image_stats, image_sha256=p.image_sha256
            )
        for p, said, truth in shadow:
            out["shadow"][p.prediction_id] = Scored(
                p.label, p.probs, p.class_names, truth, said, stats=p.image_stats, image_sha256=p.image_sha256
            )
        return {arm: list(by_id.values()) for arm, by_id in out.items()}
