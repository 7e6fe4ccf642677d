"""The SQL store (SQLAlchemy 2): SQLite by default, PostgreSQL in production.

Writes are idempotent: predictions by ``prediction_id``, feedback by ``feedback_id``, labeled
examples by ``(prediction_id, source)``. A labeled example exists once both its prediction and
its feedback have arrived, in whichever order.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    case,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from nicheloop.contracts import FeedbackEvent, PredictionEvent, aware, utcnow
from nicheloop.errors import NotFound

UNAVAILABLE: tuple[type[Exception], ...] = (OperationalError, InterfaceError, PoolTimeout)
"""The store's errors that say it is away (down, locked, out of connections), not that a row is bad."""

HOLDOUT_BUCKETS = 5  # one image in five (by a keyed hash of its content) is held out from training


class Base(DeclarativeBase):
    pass


class Prediction(Base):
    __tablename__ = "predictions"
    prediction_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(128))
    probs: Mapped[list] = mapped_column(JSON)
    class_names: Mapped[list] = mapped_column(JSON)
    uncertainty: Mapped[float] = mapped_column(Float)
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    arm: Mapped[str | None] = mapped_column(String(16), nullable=True)  # None: before rollouts
    # a shadow prediction's champion twin (whose id the caller got, and which feedback names)
    paired_with: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # the image's input-drift statistics (nicheloop.images.IMAGE_STATS): the rollout's input gate
    # compares the arms' images with them; None on rows from before they were kept
    image_stats: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Feedback(Base):
    __tablename__ = "feedback"
    feedback_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    prediction_id: Mapped[str] = mapped_column(String(128), index=True)
    label: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    joined: Mapped[bool] = mapped_column(default=False, index=True)
    actor: Mapped[str | None] = mapped_column(String(128), nullable=True)  # None: before roles
    expired: Mapped[bool] = mapped_column(default=False)


class LabeledExample(Base):
    __tablename__ = "labeled_examples"
    __table_args__ = (UniqueConstraint("prediction_id", "source"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prediction_id: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(16))
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    label: Mapped[str] = mapped_column(String(128))
    predicted_label: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    holdout: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)  # who labeled it


class ReviewItem(Base):
    """One prediction queued for a human label.

    Life cycle: ``queued`` → ``claimed`` (a lease: ``lease_token`` until ``lease_expires_at``) →
    ``done``; a skip returns it to ``queued`` (retired as ``skipped`` after too many skips); a
    queued item past ``expires_at`` becomes ``expired``; an expired lease makes it claimable again.
    """

    __tablename__ = "review_queue"
    task_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prediction_id: Mapped[str] = mapped_column(String(128), unique=True)
    priority: Mapped[float] = mapped_column(Float, index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    label: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    predicted_label: Mapped[str | None] = mapped_column(String(128), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    skips: Mapped[int | None] = mapped_column(Integer, nullable=True, default=0)
    skipped_by: Mapped[list | None] = mapped_column(JSON, nullable=True)
    # each skip's reason, in the order of skipped_by ("unsure", "not a defect image", ...)
    skip_reasons: Mapped[list | None] = mapped_column(JSON, nullable=True)
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)
    # the nearest labeled images when it was queued (the sampler's FAISS index): [{"image_sha256",
    # "label", "distance"}], nearest first
    neighbours: Mapped[list | None] = mapped_column(JSON, nullable=True)
    # quality checks the reviewer is not told of: None (a label to give), "gold" (a user-labeled
    # prediction whose label is ``expected``), "overlap" (labeled by ``first_by`` as ``expected``,
    # for a second reviewer once the first lease ran out), "overlapped" (both answered), "second"
    # (queued again by the label-quality gate for someone other than ``first_by``)
    kind: Mapped[str | None] = mapped_column(String(12), nullable=True)
    expected: Mapped[str | None] = mapped_column(String(128), nullable=True)
    first_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class ReviewAnswer(Base):
    """Every reviewer's answer to a review task (one per task and reviewer: a correction replaces
    it): gold accuracy and agreement between reviewers are read from here."""

    __tablename__ = "review_answers"
    __table_args__ = (UniqueConstraint("task_id", "reviewer"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(Integer)
    prediction_id: Mapped[str] = mapped_column(String(128), index=True)
    reviewer: Mapped[str] = mapped_column(String(128), index=True)
    label: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(12))  # label, gold, overlap (the second answer), second
    expected: Mapped[str | None] = mapped_column(String(128), nullable=True)  # gold: the known label
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ReviewLock(Base):
    """One row per lock name (:meth:`Store.serialize`): transactions that update it first run one at
    a time on any database (review claims, rollout creation). The table keeps its first user's name."""

    __tablename__ = "review_locks"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    counter: Mapped[int] = mapped_column(Integer, default=0)


class RolloutRow(Base):
    """One candidate's rollout as the controller last stored it (``nicheloop.rollouts``). ``share``
    and ``mirror`` are what the gateways route by; ``heartbeat_at`` says the controller is alive."""

    __tablename__ = "rollouts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    candidate: Mapped[str] = mapped_column(String(32))
    champion: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), index=True)
    step: Mapped[int] = mapped_column(Integer, default=0)
    share: Mapped[float] = mapped_column(Float, default=0.0)
    mirror: Mapped[float] = mapped_column(Float, default=0.0)
    entered_at: Mapped[float] = mapped_column(Float)  # seconds since the epoch, as the machine counts
    failures: Mapped[int] = mapped_column(Integer, default=0)
    held: Mapped[str | None] = mapped_column(String(16), nullable=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    plan: Mapped[dict] = mapped_column(JSON)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    checks: Mapped[list | None] = mapped_column(JSON, nullable=True)  # the last tick's gate verdicts
    checked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class RolloutEventRow(Base):
    """The append-only audit trail: every transition of every rollout, with who, why and the figures."""

    __tablename__ = "rollout_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[int] = mapped_column(Integer, index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(128))
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    from_share: Mapped[float] = mapped_column(Float)
    to_share: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(String(2000))
    figures: Mapped[list] = mapped_column(JSON)  # every gate's verdict, reason and figures
    candidate: Mapped[str] = mapped_column(String(32))
    champion: Mapped[str] = mapped_column(String(32))
    revision: Mapped[int] = mapped_column(Integer)
    # sent on nicheloop.rollouts.v1 by the controller (the table is the outbox: nothing recorded is lost)
    published: Mapped[bool | None] = mapped_column(nullable=True, default=False, index=True)


class ArmCallsRow(Base):
    """What one gateway replica saw of one arm of a rollout since its previous flush: calls, failed
    calls and their latencies (sparse log-spaced buckets, ``nicheloop.latency``). Append-only."""

    __tablename__ = "rollout_arm_calls"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[int] = mapped_column(Integer, index=True)
    arm: Mapped[str] = mapped_column(String(16))
    at: Mapped[float] = mapped_column(Float, index=True)  # end of the span, seconds since the epoch
    calls: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    latency: Mapped[dict] = mapped_column(JSON)  # bucket index (as text) -> calls


class DriftWindowRow(Base):
    """One monitor's verdict on one evaluated drift window (``nicheloop.driftlog``): the operator
    page's drift timeline. Append-only; the window's span says which predictions it held."""

    __tablename__ = "drift_windows"
    # a version's latest verdict per monitor (alarm_since, at every look of the policy) by index
    __table_args__ = (Index("ix_drift_windows_version_monitor", "model_version", "monitor", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    evaluated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    model_version: Mapped[str] = mapped_column(String(32))
    monitor: Mapped[str] = mapped_column(String(64))
    feed: Mapped[str] = mapped_column(String(16))  # inputs (predictions) or outcomes (user labels)
    status: Mapped[str] = mapped_column(String(24))
    n: Mapped[int] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    p_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    alpha: Mapped[float] = mapped_column(Float)  # the p-value under which the window counts as drifted
    drifted: Mapped[bool] = mapped_column()
    alarm: Mapped[bool] = mapped_column()  # the monitor's alarm after this window
    change: Mapped[str | None] = mapped_column(String(8), nullable=True)  # raised, cleared or None
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    report: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # its Evidently report


class SpoolReportRow(Base):
    """The last depth one event spool reported (``nicheloop.spools``): the operator's view of events
    waiting on some process's disk for the broker. One row per spool file, replaced on each report."""

    __tablename__ = "spool_reports"
    spool: Mapped[str] = mapped_column(String(160), primary_key=True)  # the spool file's name
    role: Mapped[str] = mapped_column(String(32))  # gateway, monitor, controller
    host: Mapped[str] = mapped_column(String(128))
    depth: Mapped[int] = mapped_column(Integer)
    capacity: Mapped[int] = mapped_column(Integer)
    at: Mapped[float] = mapped_column(Float, index=True)  # seconds since the epoch


class Lease(Base):
    """A named lease (one rollout controller at a time): held by ``holder`` until ``expires_at``."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[float] = mapped_column(Float)


class ExcludedActor(Base):
    """Someone whose labels no training snapshot takes any more (``nicheloop labels exclude``)."""

    __tablename__ = "excluded_actors"
    actor: Mapped[str] = mapped_column(String(128), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(2000))


class VouchedActor(Base):
    """A reviewer an operator vouched for (``nicheloop labels vouch``): the label-quality gate does
    not hold their labels back for their gold accuracy."""

    __tablename__ = "vouched_actors"
    actor: Mapped[str] = mapped_column(String(128), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(2000))


class ReviewBudgetRow(Base):
    """A labeling budget an operator set at run time (``PUT /v1/review/budget``), in place of the
    setting of the same name; every replica's queue reads it at each claim."""

    __tablename__ = "review_budgets"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(Integer)
    set_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    set_by: Mapped[str] = mapped_column(String(128))


class ReviewShareRow(Base):
    """A share of the review queue an operator set at run time (``PUT /v1/review/shares``: gold
    items, overlap), in place of the setting of the same name; every replica reads it at each claim."""

    __tablename__ = "review_shares"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    set_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    set_by: Mapped[str] = mapped_column(String(128))


class PolicyPauseRow(Base):
    """The retraining policy paused by an operator (one row while paused): it still weighs the
    evidence and says its verdict, but starts no run."""

    __tablename__ = "policy_pauses"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    reason: Mapped[str] = mapped_column(String(2000))
    set_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    set_by: Mapped[str] = mapped_column(String(128))


class ServerSecret(Base):
    """Secrets the server makes for itself once, in its own database (never shown by any API)."""

    __tablename__ = "server_secrets"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))


class ApiKeyRow(Base):
    """A credential (``nicheloop.keys``): only its SHA-256 is kept; the key is shown once."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    role: Mapped[str] = mapped_column(String(16))
    lookup: Mapped[str] = mapped_column(String(16), unique=True)  # the key's first characters: finds the row
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditRow(Base):
    """The append-only audit log of privileged actions (``nicheloop.keys.Audit``): who, when, what,
    from where. Nothing updates or deletes a row."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(256))
    source: Mapped[str] = mapped_column(String(128))  # an address, or "cli"
    detail: Mapped[dict] = mapped_column(JSON)


def is_holdout(image_sha256: str, key: bytes) -> bool:
    """Deterministic split by image content under the server's ``key``: the same image is always
    on the same side, and nobody without the key can choose images that land in the held-out set."""
    tag = hmac.new(key, image_sha256.encode(), hashlib.sha256).hexdigest()
    return int(tag[:8], 16) % HOLDOUT_BUCKETS == 0


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _add_missing_columns(engine: Engine) -> None:
    """Bring a database made by an older release up to date: add the (nullable) columns and the
    indexes it lacks."""
    inspector = inspect(engine)
    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have and column.nullable:
                kind = column.type.compile(dialect=engine.dialect)
                with engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))
        indexed = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexed:
                try:
                    index.create(engine)
                except DBAPIError:  # another process opening the store made it first
                    if index.name not in {i["name"] for i in inspect(engine).get_indexes(table.name)}:
                        raise


# The event fields a prediction row keeps (its embedding is stored as float32 bytes besides).
PREDICTION_FIELDS = set(
    "prediction_id model_version label probs class_names uncertainty image_sha256 created_at arm "
    "paired_with image_stats".split()
)


class Store:
    """Typed access to the tables; every public method runs in its own transaction."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        _add_missing_columns(self.engine)
        self._holdout_key = self._holdout_secret()

    def _holdout_secret(self) -> bytes:
        """The key of the held-out split, made once per database; the first time, rows labeled
        under the old public hash are split again under it, so each image keeps one side. Opening
        a store whose key exists only reads it (no write transaction at every start)."""
        query = select(ServerSecret.value).where(ServerSecret.name == "holdout")
        with Session(self.engine) as s:
            known = s.scalar(query)
        if known is not None:
            return bytes.fromhex(known)
        with Session(self.engine) as s, s.begin():
            made = self.insert_ignore(
                s, ServerSecret, {"name": "holdout", "value": secrets.token_hex(32)}, ["name"]
            )
            key = bytes.fromhex(s.scalars(query).one())
            if made:
                for row in s.scalars(select(LabeledExample)):
                    row.holdout = is_holdout(row.image_sha256, key)
        return key

    def is_holdout(self, image_sha256: str) -> bool:
        """Whether this database holds the image out of training (see :func:`is_holdout`)."""
        return is_holdout(image_sha256, self._holdout_key)

    def insert_ignore(self, s: Session, table: Any, values: dict[str, Any], keys: list[str]) -> bool:
        """INSERT … ON CONFLICT DO NOTHING; True if the row was new.

        Uses RETURNING rather than rowcount, which psycopg reports as -1 for ORM inserts.
        """
        from sqlalchemy.dialects import postgresql, sqlite

        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(table).values(**values).on_conflict_do_nothing(index_elements=keys)
        return s.execute(stmt.returning(*table.__table__.primary_key.columns)).first() is not None

    def add_lock(self, name: str) -> None:
        """Create the lock row ``name`` once (before any transaction :meth:`serialize` s on it)."""
        with Session(self.engine) as s, s.begin():
            self.insert_ignore(s, ReviewLock, {"name": name, "counter": 0}, ["name"])

    def serialize(self, s: Session, name: str) -> None:
        """Run the rest of transaction ``s`` one at a time with every other that serialises on
        ``name``: update its lock row first (a row lock on PostgreSQL, the write lock on SQLite)."""
        s.execute(update(ReviewLock).where(ReviewLock.name == name).values(counter=ReviewLock.counter + 1))

    # -- predictions and feedback ------------------------------------------------------------
    def add_prediction(self, ev: PredictionEvent) -> bool:
        """Store a prediction (and join any feedback already here). Returns True if new."""
        values = ev.model_dump(include=PREDICTION_FIELDS) | {
            "embedding": np.asarray(ev.embedding, dtype=np.float32).tobytes()
        }
        with Session(self.engine) as s, s.begin():
            new = self.insert_ignore(s, Prediction, values, ["prediction_id"])
            self._join(s, ev.prediction_id)
        return new

    def add_feedback(self, ev: FeedbackEvent) -> bool:
        """Store a feedback event (and join it if its prediction is here). Returns True if new."""
        values = ev.model_dump(
            include={"feedback_id", "prediction_id", "label", "source", "created_at", "actor"}
        )
        with Session(self.engine) as s, s.begin():
            new = self.insert_ignore(s, Feedback, values, ["feedback_id"])
            self._join(s, ev.prediction_id)
        return new

    def _join(self, s: Session, prediction_id: str) -> None:
        pred = s.get(Prediction, prediction_id)
        if pred is None:
            return
        latest: dict[str, Feedback] = {}
        for fb in s.scalars(
            select(Feedback)
            .where(Feedback.prediction_id == prediction_id)
            .order_by(Feedback.created_at, Feedback.feedback_id)
        ):
            latest[fb.source] = fb  # the newest label per source wins
        s.execute(update(Feedback).where(Feedback.prediction_id == prediction_id).values(joined=True))
        for source, fb in latest.items():
            row = s.scalar(
                select(LabeledExample).where(
                    LabeledExample.prediction_id == prediction_id, LabeledExample.source == source
                )
            )
            if row is None:
                s.add(
                    LabeledExample(
                        prediction_id=prediction_id,
                        source=source,
                        image_sha256=pred.image_sha256,
                        label=fb.label,
                        predicted_label=pred.label,
                        model_version=pred.model_version,
                        holdout=self.is_holdout(pred.image_sha256),
                        created_at=fb.created_at,
                        actor=fb.actor,
                    )
                )
            elif row.label != fb.label:
                row.label, row.created_at, row.actor = fb.label, fb.created_at, fb.actor

    def expire_pending(self, ttl: timedelta, now: datetime | None = None) -> int:
        """Mark feedback still waiting for its prediction after ``ttl`` as expired; returns how many.

        Expired feedback is kept (and still joins if its prediction ever arrives); it is counted
        so that an operator sees labels whose predictions never came.
        """
        cutoff = (now or utcnow()) - ttl
        with Session(self.engine) as s, s.begin():
            result: CursorResult[Any] = s.execute(  # type: ignore[assignment]  # an UPDATE's result is a cursor's
                update(Feedback)
                .where(Feedback.joined.is_(False), Feedback.expired.is_(False), Feedback.created_at < cutoff)
                .values(expired=True)
            )
            return result.rowcount

    def content_hash(self) -> str:
        """SHA-256 over the labeled examples' content (not their row ids): equal stores, equal hash.

        The held-out flag is left out: it follows from the image and each database's own secret."""
        digest = hashlib.sha256()
        with Session(self.engine) as s:
            rows = s.execute(
                select(
                    LabeledExample.prediction_id,
                    LabeledExample.source,
                    LabeledExample.image_sha256,
                    LabeledExample.label,
                    LabeledExample.predicted_label,
                    LabeledExample.model_version,
                ).order_by(LabeledExample.prediction_id, LabeledExample.source)
            )
            for row in rows:
                digest.update(repr(tuple(row)).encode())
        return digest.hexdigest()

    def add_seed_example(self, image_sha256: str, label: str) -> bool:
        """A labeled image that came with the seed set (no prediction behind it)."""
        values = dict(
            prediction_id=f"seed-{image_sha256}",
            source="seed",
            image_sha256=image_sha256,
            label=label,
            holdout=self.is_holdout(image_sha256),
            created_at=utcnow(),
        )
        with Session(self.engine) as s, s.begin():
            return self.insert_ignore(s, LabeledExample, values, ["prediction_id", "source"])

    def prediction(self, prediction_id: str) -> Prediction:
        """Raises NotFound if the prediction has not been stored (yet)."""
        with Session(self.engine, expire_on_commit=False) as s:
            row = s.get(Prediction, prediction_id)
        if row is None:
            raise NotFound(f"unknown prediction_id {prediction_id!r}")
        return row

    def recent_embeddings(self, limit: int, model_version: str | None = None) -> np.ndarray:
        """The embeddings of the newest ``limit`` predictions, shape (n, D), oldest first."""
        q = select(Prediction.embedding).order_by(Prediction.created_at.desc()).limit(limit)
        if model_version is not None:
            q = q.where(Prediction.model_version == model_version)
        with Session(self.engine) as s:
            rows = list(s.scalars(q))[::-1]
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([np.frombuffer(r, dtype=np.float32) for r in rows])

    def recent_images(self, model_version: str, *, since: datetime, limit: int) -> list[str]:
        """The SHA-256 of up to ``limit`` distinct images ``model_version`` answered as champion
        since ``since``, newest first (what a stopgap recalibrates on)."""
        q = (
            select(Prediction.image_sha256)
            .where(
                Prediction.model_version == model_version,
                Prediction.created_at >= since,
                (Prediction.arm == "champion") | Prediction.arm.is_(None),
            )
            .order_by(Prediction.created_at.desc())
            .limit(4 * limit)
        )
        with Session(self.engine) as s:
            shas = s.scalars(q).all()
        return list(dict.fromkeys(shas))[:limit]

    def labeled_examples(self, holdout: bool | None = None) -> list[LabeledExample]:
        """Labeled examples, one per image (reviewer > user > seed when an image has several),
        without the labels of excluded actors (an image they labeled keeps its other labels)."""
        rank = {"reviewer": 0, "user": 1, "seed": 2}
        excluded = set(self.excluded_actors())
        with Session(self.engine, expire_on_commit=False) as s:
            q = select(LabeledExample)
            if holdout is not None:
                q = q.where(LabeledExample.holdout == holdout)
            rows = [r for r in s.scalars(q) if r.actor not in excluded]
        best: dict[str, LabeledExample] = {}
        for r in sorted(rows, key=lambda r: (rank.get(r.source, 9), r.created_at), reverse=True):
            best[r.image_sha256] = r
        return sorted(best.values(), key=lambda r: r.image_sha256)

    def served_at(self, prediction_ids: list[str], *, chunk: int = 500) -> dict[str, datetime]:
        """When each of ``prediction_ids`` was served (ids the store does not know are left out)."""
        out: dict[str, datetime] = {}
        with Session(self.engine) as s:
            for i in range(0, len(prediction_ids), chunk):
                part = prediction_ids[i : i + chunk]
                rows = s.execute(
                    select(Prediction.prediction_id, Prediction.created_at).where(
                        Prediction.prediction_id.in_(part)
                    )
                )
                out.update({pid: aware(at) for pid, at in rows})
        return out

    def user_label_hits(self, model_version: str) -> tuple[int, int]:
        """(right, labeled): of ``model_version``'s predictions that users labeled, how many it got
        right. Users' labels are the unbiased ones (reviewers see what the sampler picked)."""
        excluded = self.excluded_actors()
        right = LabeledExample.predicted_label == LabeledExample.label
        with Session(self.engine) as s:
            q = select(func.count(), func.coalesce(func.sum(case((right, 1), else_=0)), 0)).where(
                LabeledExample.source == "user",
                LabeledExample.model_version == model_version,
                LabeledExample.predicted_label.is_not(None),
            )
            if excluded:
                q = q.where(LabeledExample.actor.is_(None) | LabeledExample.actor.not_in(excluded))
            row = s.execute(q).one()
        return int(row[1] or 0), int(row[0] or 0)

    def exclude_actor(self, actor: str, *, by: str, reason: str, now: datetime | None = None) -> bool:
        """Leave ``actor``'s labels out of every snapshot from now on; False if they already were."""
        values = {"actor": actor, "at": now or utcnow(), "by": by, "reason": reason[:2000]}
        with Session(self.engine) as s, s.begin():
            return self.insert_ignore(s, ExcludedActor, values, ["actor"])

    def vouch_actor(self, actor: str, *, by: str, reason: str, now: datetime | None = None) -> bool:
        """Let ``actor``'s labels train whatever their gold accuracy; False if they already did."""
        values = {"actor": actor, "at": now or utcnow(), "by": by, "reason": reason[:2000]}
        with Session(self.engine) as s, s.begin():
            return self.insert_ignore(s, VouchedActor, values, ["actor"])

    def vouched_actors(self) -> list[str]:
        """Everyone an operator vouched for, in name order."""
        with Session(self.engine) as s:
            return sorted(s.scalars(select(VouchedActor.actor)))

    def excluded_actors(self) -> list[str]:
        """Everyone whose labels snapshots leave out, in name order."""
        with Session(self.engine) as s:
            return sorted(s.scalars(select(ExcludedActor.actor)))

    def covered_embeddings(self, model_version: str) -> tuple[list[str], np.ndarray]:
        """Predictions of ``model_version`` that are labeled or were queued for review:
        (prediction ids, embeddings of shape (n, D))."""
        labeled = select(LabeledExample.prediction_id)
        queued = select(ReviewItem.prediction_id)
        q = (
            select(Prediction.prediction_id, Prediction.embedding)
            .where(Prediction.model_version == model_version)
            .where(Prediction.prediction_id.in_(labeled) | Prediction.prediction_id.in_(queued))
        )
        with Session(self.engine) as s:
            rows = s.execute(q).all()
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        return [r[0] for r in rows], np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])

    def covered_hashes(self) -> set[str]:
        """Content hashes of every labeled or queued image (exact-duplicate suppression)."""
        queued = select(Prediction.image_sha256).join(
            ReviewItem, ReviewItem.prediction_id == Prediction.prediction_id
        )
        with Session(self.engine) as s:
            return set(s.scalars(select(LabeledExample.image_sha256))) | set(s.scalars(queued))

    def labels_of(self, prediction_ids: list[str]) -> dict[str, tuple[str, str]]:
        """prediction id -> (its newest label, its image's SHA-256), for those labeled."""
        with Session(self.engine) as s:
            rows = s.execute(
                select(LabeledExample.prediction_id, LabeledExample.label, LabeledExample.image_sha256)
                .where(LabeledExample.prediction_id.in_(prediction_ids))
                .order_by(LabeledExample.created_at)
            ).all()
        return {pid: (label, sha) for pid, label, sha in rows}  # the newest comes last and wins

    def predictions_labeled(self, image_sha256s: list[str], label_of: dict[str, str]) -> dict[str, str]:
        """image SHA-256 -> a served prediction of it labeled ``label_of[sha]`` (the newest), for
        those with one: what a reviewer can be shown again (a seed label has no prediction)."""
        with Session(self.engine) as s:
            rows = s.execute(
                select(LabeledExample.image_sha256, LabeledExample.label, LabeledExample.prediction_id)
                .join(Prediction, Prediction.prediction_id == LabeledExample.prediction_id)
                .where(LabeledExample.image_sha256.in_(image_sha256s))
                .order_by(LabeledExample.created_at)
            ).all()
        return {sha: pid for sha, label, pid in rows if label_of.get(sha) == label}

    def labeled_ids(self, prediction_ids: list[str]) -> set[str]:
        """Those of ``prediction_ids`` that have a label (from any source)."""
        return self.existing(LabeledExample.prediction_id, prediction_ids)

    def existing(self, column: Any, values: list[str]) -> set[str]:
        """Those of ``values`` present in ``column`` (queried 500 at a time)."""
        found: set[str] = set()
        with Session(self.engine) as s:
            for start in range(0, len(values), 500):
                found.update(s.scalars(select(column).where(column.in_(values[start : start + 500]))))
        return found

    def counts(self) -> dict[str, int]:
        """Row counts per table, plus review items by status."""
        with Session(self.engine) as s:
            out = {
                t.__tablename__: s.scalar(select(func.count()).select_from(t)) or 0
                for t in (Prediction, Feedback, LabeledExample, ReviewItem)
            }
            for status, n in s.execute(select(ReviewItem.status, func.count()).group_by(ReviewItem.status)):
                out[f"review_{status}"] = n
            for source, n in s.execute(
                select(LabeledExample.source, func.count()).group_by(LabeledExample.source)
            ):
                out[f"labeled_{source}"] = n
            # every reviewer's answer to a task (one each; a correction replaces it): a task the
            # label gate sent back for a second look is queued again, but its answers stay counted
            out["review_answers"] = s.scalar(select(func.count()).select_from(ReviewAnswer)) or 0
            out["feedback_pending"] = (
                s.scalar(select(func.count()).select_from(Feedback).where(Feedback.joined.is_(False))) or 0
            )
            out["feedback_expired"] = (
                s.scalar(select(func.count()).select_from(Feedback).where(Feedback.expired.is_(True))) or 0
            )
        return out
