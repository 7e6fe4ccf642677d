"""The review queue (monitoring enqueues, services claim and label): priorities, leases, skips,
expiry and a labeling budget, on the SQL store.

Guarantees, on SQLite and PostgreSQL alike:

- **One reviewer per item.** Every claim first updates the ``claim`` row of ``review_locks``,
  so claims run one at a time (a row lock on PostgreSQL, the write lock on SQLite) and the
  queue state a claim reads cannot change under it.
- **Leases.** A claim holds the item for ``lease_s`` under a random ``lease_token``; a label or
  skip must present it. An expired lease makes the item claimable again; the late reviewer's
  label is then refused with a Conflict rather than silently overwriting another's.
- **Budget.** At most ``budget_per_hour`` / ``budget_per_day`` items (and at most
  ``budget_per_reviewer_hour`` / ``…_day`` by any one reviewer) are labeled or held under a live lease
  in any rolling hour / day; past it a claim raises :class:`BudgetSpent` with a retry time. An
  operator's budget (:meth:`ReviewQueue.set_budgets`) replaces the setting's for every replica.
- **Quality.** A ``gold_share`` of claims get a gold item (a user-labeled prediction, its label
  hidden) and an ``overlap_share`` of labeled items go to a second reviewer; an operator's shares
  (:meth:`ReviewQueue.set_shares`) replace the settings' for every replica.
- **Nothing stale.** Queued items past their ``expires_at`` become ``expired``; an item skipped
  ``max_skips`` times is retired as ``skipped``; a reviewer is never offered an item they skipped.
"""

from __future__ import annotations

import random
import statistics
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from nicheloop.contracts import aware, utcnow
from nicheloop.errors import BudgetSpent, Conflict, InvalidInput, NotFound
from nicheloop.review.schemas import ReviewTask, SimilarImage
from nicheloop.settings import Settings
from nicheloop.store import (
    LabeledExample,
    Prediction,
    ReviewAnswer,
    ReviewBudgetRow,
    ReviewItem,
    ReviewShareRow,
    Store,
)

HOUR, DAY = timedelta(hours=1), timedelta(days=1)
CANDIDATES = 50  # items a claim looks at to find one the reviewer has not skipped
MAX_HOLD = 4  # leases a reviewer may hold one task for by renewing
BUDGETS = ("budget_per_hour", "budget_per_day", "budget_per_reviewer_hour", "budget_per_reviewer_day")
SHARES = ("gold_share", "overlap_share")
# added to the sampler's priority (in [0, 1]) of an image two model versions answer differently: a
# candidate in shadow and the champion; reviewers get those first (their labels decide the shadow)
DISPUTED = 1.0


@dataclass(frozen=True)
class QueuePolicy:
    """The knobs of the queue (from settings: ``NICHELOOP_REVIEW_*``)."""

    budget_per_hour: int = 120
    budget_per_day: int = 600
    budget_per_reviewer_hour: int = 60
    budget_per_reviewer_day: int = 300
    lease_s: float = 600.0
    item_ttl_s: float = 3 * 24 * 3600.0
    max_skips: int = 3
    max_depth: int = 600
    gold_share: float = 0.0  # of claims answered with a gold item (a user-labeled prediction)
    overlap_share: float = 0.0  # of labeled items given to a second reviewer too
    seed: int | None = None  # of the draws deciding both (tests fix it)

    @classmethod
    def from_settings(cls, settings: Settings) -> QueuePolicy:
        """The queue's budget, lease and expiry, from ``NICHELOOP_REVIEW_*``."""
        return cls(**settings.section("review_"))


def _claimed_by(reviewer: str | None) -> list[Any]:
    """The filter on items claimed by ``reviewer``; none (everyone's) for None."""
    return [ReviewItem.claimed_by == reviewer] if reviewer is not None else []


class ReviewQueue:
    """Typed operations on ``review_queue``; every public method is one transaction."""

    def __init__(self, store: Store, policy: QueuePolicy | None = None) -> None:
        self.store, self.policy, self.engine = store, policy or QueuePolicy(), store.engine
        self._draw = random.Random(self.policy.seed).random
        store.add_lock("claim")

    # -- producing -------------------------------------------------------------------------
    def enqueue(
        self,
        prediction_id: str,
        priority: float,
        predicted_label: str | None = None,
        now: datetime | None = None,
        *,
        neighbours: list[dict[str, Any]] | None = None,
    ) -> bool:
        """Queue a prediction (idempotent: False if it was ever queued before), with the nearest
        labeled images the sampler found for it (``image_sha256``, ``label``, ``distance``)."""
        now = now or utcnow()
        values = dict(
            prediction_id=prediction_id,
            priority=float(priority),
            status="queued",
            created_at=now,
            predicted_label=predicted_label,
            skips=0,
            skipped_by=[],
            expires_at=now + timedelta(seconds=self.policy.item_ttl_s),
            neighbours=neighbours or None,
        )
        with Session(self.engine) as s, s.begin():
            return self.store.insert_ignore(s, ReviewItem, values, ["prediction_id"])

    def second_opinion(self, prediction_id: str, *, priority: float, now: datetime | None = None) -> bool:
        """Queue a labeled prediction again for another reviewer (a label-quality check doubts its
        label); the one who labeled it before is not offered it. False when it already waits for
        review, or already had its second opinion (the newest reviewer label is the one joined)."""
        now = now or utcnow()
        values = dict(
            priority=float(priority),
            status="queued",
            created_at=now,
            skips=0,
            skipped_by=[],
            expires_at=now + timedelta(seconds=self.policy.item_ttl_s),
            kind="second",
        )
        with Session(self.engine) as s, s.begin():
            self.store.serialize(s, "claim")
            item = s.scalar(select(ReviewItem).where(ReviewItem.prediction_id == prediction_id))
            if item is None:
                s.add(ReviewItem(prediction_id=prediction_id, **values))
                return True
            if item.status in ("queued", "claimed") or item.kind == "second":
                return False
            first_by = item.claimed_by if item.kind != "gold" else None
            for key, value in values.items():
                setattr(item, key, value)
            item.first_by, item.expected, item.lease_token, item.lease_expires_at = first_by, None, None, None
            return True

    def second_looks(self) -> set[str]:
        """Prediction ids labeled again by a second reviewer after a label-quality check doubted
        them: their label now stands (the check does not hold it back again)."""
        with Session(self.engine) as s:
            done = select(ReviewItem.prediction_id).where(
                ReviewItem.kind == "second", ReviewItem.status == "done"
            )
            return set(s.scalars(done))

    def room(self) -> int:
        """How many more items may be queued before the queue holds ``max_depth`` waiting items."""
        with Session(self.engine) as s:
            waiting = s.scalar(
                select(func.count()).select_from(ReviewItem).where(ReviewItem.status == "queued")
            )
        return max(0, self.policy.max_depth - int(waiting or 0))

    def known(self, prediction_ids: list[str]) -> set[str]:
        """Those of ``prediction_ids`` that were ever queued (whatever their status)."""
        return self.store.existing(ReviewItem.prediction_id, prediction_ids)

    # -- reviewing ---------------------------------------------------------------------------
    def claim(self, reviewer: str, now: datetime | None = None) -> ReviewItem | None:
        """Lease the highest-priority claimable item to ``reviewer``; None when nothing is left.

        Raises:
            BudgetSpent: the hourly or daily labeling budget, everyone's or this reviewer's, is used
            up (``retry_after_s`` says when).
        """
        now = now or utcnow()
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            self.store.serialize(s, "claim")
            self._check_budget(s, now, reviewer)
            s.execute(
                update(ReviewItem)
                .where(ReviewItem.status == "queued", ReviewItem.expires_at < now)
                .values(status="expired")
            )
            gold_share = self._shares(s)["gold_share"]
            if gold_share and self._draw() < gold_share:
                gold = self._gold(s, reviewer, now)
                if gold is not None:
                    return gold
            claimable = or_(
                ReviewItem.status == "queued",
                (ReviewItem.status == "claimed") & (ReviewItem.lease_expires_at < now),
                # labeled once, waiting for a second reviewer now that the first one's lease is over
                (ReviewItem.status == "done")
                & (ReviewItem.kind == "overlap")
                & (ReviewItem.lease_expires_at < now),
            )
            rows = s.scalars(
                select(ReviewItem)
                .where(claimable)
                .order_by(ReviewItem.priority.desc(), ReviewItem.task_id)
                .limit(CANDIDATES)
            )
            item = next(
                (r for r in rows if reviewer not in (r.skipped_by or []) and r.first_by != reviewer), None
            )
            if item is None:
                return None
            item.status, item.claimed_by, item.claimed_at = "claimed", reviewer, now
            item.lease_token = uuid.uuid4().hex
            item.lease_expires_at = now + timedelta(seconds=self.policy.lease_s)
        return item

    def _gold(self, s: Session, reviewer: str, now: datetime) -> ReviewItem | None:
        """A user-labeled prediction never queued, leased to ``reviewer`` as a gold item (its label
        is known: the reviewer's answer checks the reviewer, and trains nothing); None if none."""
        queued = select(ReviewItem.prediction_id)
        row = s.execute(
            select(LabeledExample.prediction_id, LabeledExample.label)
            .join(Prediction, Prediction.prediction_id == LabeledExample.prediction_id)
            .where(LabeledExample.source == "user", LabeledExample.prediction_id.not_in(queued))
            .order_by(func.random())
            .limit(1)
        ).first()
        if row is None:
            return None
        item = ReviewItem(
            prediction_id=row.prediction_id,
            priority=0.0,
            status="claimed",
            created_at=now,
            skips=0,
            skipped_by=[],
            expires_at=now + timedelta(seconds=self.policy.item_ttl_s),
            kind="gold",
            expected=row.label,
            claimed_by=reviewer,
            claimed_at=now,
            lease_token=uuid.uuid4().hex,
            lease_expires_at=now + timedelta(seconds=self.policy.lease_s),
        )
        s.add(item)
        s.flush()
        return item

    def claim_task(self, reviewer: str, now: datetime | None = None) -> ReviewTask | None:
        """:meth:`claim`, as the task a reviewer sees: the prediction, its image, the lease.

        Raises:
            BudgetSpent: as :meth:`claim`.
        """
        item = self.claim(reviewer, now)
        if item is None:
            return None
        pred = self.store.prediction(item.prediction_id)
        return ReviewTask(
            task_id=item.task_id,
            prediction_id=item.prediction_id,
            predicted_label=pred.label,
            uncertainty=pred.uncertainty,
            priority=item.priority,
            class_names=list(pred.class_names),
            probs=[float(p) for p in pred.probs],
            why=(
                "a second look: a check of the labels found the one this image has doubtful"
                if item.kind == "second"
                else why_queued(list(pred.class_names), list(pred.probs), pred.uncertainty, item.priority)
            ),
            image_url=f"/v1/images/{pred.image_sha256}",
            lease_token=item.lease_token or "",
            lease_expires_at=item.lease_expires_at,
            similar=[
                SimilarImage(
                    image_url=f"/v1/images/{n['image_sha256']}",
                    label=n["label"],
                    similarity=round(1.0 - float(n["distance"]) / 2.0, 4),  # unit vectors: |a-b|² = 2 - 2cos
                )
                for n in item.neighbours or []
            ],
        )

    def shows(self, reviewer: str, image_sha256: str) -> bool:
        """Whether a task leased to ``reviewer`` (now, or labeled by them) shows this image, or one
        leased now lists it among its labeled look-alikes: a reviewer sees the images of their
        tasks, not the whole blob store."""
        with Session(self.engine) as s:
            found = s.scalar(
                select(ReviewItem.task_id)
                .join(Prediction, Prediction.prediction_id == ReviewItem.prediction_id)
                .where(ReviewItem.claimed_by == reviewer, Prediction.image_sha256 == image_sha256)
                .limit(1)
            )
            if found is not None:
                return True
            held: list[Any] = list(
                s.scalars(
                    select(ReviewItem.neighbours).where(
                        ReviewItem.claimed_by == reviewer, ReviewItem.status == "claimed"
                    )
                )
            )
        return any(n.get("image_sha256") == image_sha256 for ns in held for n in ns or [])

    def check_lease(
        self, task_id: int, lease_token: str, *, correcting: bool = False, now: datetime | None = None
    ) -> ReviewItem:
        """The item, if ``lease_token`` is its current lease. ``correcting``: a task already labeled
        under this lease may be labeled again while the lease holds (a reviewer's undo).

        Raises:
            NotFound: unknown task. Conflict: already labeled (and past its lease, or not
            ``correcting``), not claimed, or the lease went to another reviewer after it expired.
        """
        with Session(self.engine, expire_on_commit=False) as s:
            return self._leased(s, task_id, lease_token, correcting=correcting, now=now or utcnow())

    def complete(self, task_id: int, label: str, lease_token: str, now: datetime | None = None) -> ReviewItem:
        """Record ``label`` for the task under lease ``lease_token``; a label given again under the
        same lease while it holds replaces the first (the lease is kept for that).

        Raises:
            NotFound, Conflict: as :meth:`check_lease` with ``correcting``.
        """
        now = now or utcnow()
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            item = self._leased(s, task_id, lease_token, for_update=True, correcting=True, now=now)
            reviewer = item.claimed_by or ""
            kind = _answer_kind(item, reviewer)
            if kind == "overlap":  # the second reviewer's answer
                item.kind = "overlapped"
            elif item.kind == "overlap":  # the first reviewer correcting under the same lease
                item.expected = label
            elif kind == "label" and self._draw() < self._shares(s)["overlap_share"]:
                item.kind, item.expected, item.first_by = "overlap", label, reviewer
            item.status, item.label, item.done_at = "done", label, now
            self._answer(s, item, reviewer, label, kind, now)
        return item

    def _answer(
        self, s: Session, item: ReviewItem, reviewer: str, label: str, kind: str, now: datetime
    ) -> None:
        """Keep ``reviewer``'s answer to ``item`` (replacing their earlier one: a correction)."""
        values = dict(
            task_id=item.task_id,
            prediction_id=item.prediction_id,
            reviewer=reviewer,
            label=label,
            kind=kind,
            expected=item.expected if kind == "gold" else None,
            at=now,
        )
        if not self.store.insert_ignore(s, ReviewAnswer, values, ["task_id", "reviewer"]):
            s.execute(
                update(ReviewAnswer)
                .where(ReviewAnswer.task_id == item.task_id, ReviewAnswer.reviewer == reviewer)
                .values(label=label, at=now)
            )

    def reviewer_quality(self, *, since: datetime | None = None) -> dict[str, Any]:
        """Each reviewer's accuracy on gold items, and each pair's agreement (Cohen's kappa) on the
        items both labeled, from the answers since ``since`` (default: all)."""
        query = select(ReviewAnswer)
        if since is not None:
            query = query.where(ReviewAnswer.at >= since)
        with Session(self.engine) as s:
            answers = s.scalars(query).all()
        gold: dict[str, list[bool]] = {}
        by_item: dict[str, dict[str, str]] = {}
        for a in answers:
            if a.kind == "gold":
                gold.setdefault(a.reviewer, []).append(a.label == a.expected)
            elif a.kind != "second":  # a doubted label's second look is no fair sample of agreement
                by_item.setdefault(a.prediction_id, {})[a.reviewer] = a.label
        pairs: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for labels in by_item.values():
            names = sorted(labels)
            for i, first in enumerate(names):
                for second in names[i + 1 :]:
                    pairs.setdefault((first, second), []).append((labels[first], labels[second]))
        return {
            "gold": [
                {"reviewer": r, "answered": len(v), "correct": sum(v), "accuracy": sum(v) / len(v)}
                for r, v in sorted(gold.items())
            ],
            "pairs": [
                {
                    "reviewers": [a, b],
                    "items": len(v),
                    "agreed": sum(x == y for x, y in v),
                    "kappa": cohen_kappa(v),
                }
                for (a, b), v in sorted(pairs.items())
            ],
        }

    def renew(self, task_id: int, lease_token: str, now: datetime | None = None) -> ReviewItem:
        """Extend the lease by ``lease_s`` from now, for a reviewer still at work on the task (or
        on the ones after it), up to ``MAX_HOLD`` leases from the claim: an open tab does not hold
        a task for ever.

        Raises:
            NotFound, Conflict: as :meth:`check_lease`; Conflict past the longest hold too.
        """
        now = now or utcnow()
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            item = self._leased(s, task_id, lease_token, for_update=True, now=now)
            held_since = aware(item.claimed_at or now)
            lease = timedelta(seconds=self.policy.lease_s)
            until = min(now + lease, held_since + MAX_HOLD * lease)
            if until <= now:
                raise Conflict(
                    f"review task {task_id} was held for {MAX_HOLD} leases; label or skip it, or let it go"
                )
            item.lease_expires_at = until
        return item

    def release(self, task_id: int, lease_token: str, now: datetime | None = None) -> ReviewItem:
        """End the lease of a task its reviewer labeled and will not correct (it left the page's
        undo reach), so that an overlap item goes to its second reviewer now rather than when the
        lease runs out. Releasing twice is harmless.

        Raises:
            NotFound: unknown task. Conflict: not labeled under this lease (label or skip it first;
            or a second reviewer holds it now).
        """
        now = now or utcnow()
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            item = s.scalar(select(ReviewItem).where(ReviewItem.task_id == task_id).with_for_update())
            if item is None:
                raise NotFound(f"unknown review task {task_id}")
            if item.status != "done" or not lease_token or item.lease_token != lease_token:
                raise Conflict(
                    f"review task {task_id} is not labeled under this lease: label or skip it first "
                    "(a task someone else holds now is theirs)"
                )
            if item.lease_expires_at is None or aware(item.lease_expires_at) > now:
                item.lease_expires_at = now
        return item

    def skip(
        self, task_id: int, lease_token: str, now: datetime | None = None, *, reason: str = ""
    ) -> ReviewItem:
        """Give the task back unlabeled, saying why; it is never offered to this reviewer again,
        and after ``max_skips`` skips (by as many reviewers) it is retired as ``skipped``.

        Raises:
            NotFound, Conflict: as :meth:`check_lease`.
        """
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            item = self._leased(s, task_id, lease_token, for_update=True, now=now or utcnow())
            item.skips = (item.skips or 0) + 1
            item.skipped_by = [*(item.skipped_by or []), item.claimed_by]
            item.skip_reasons = [*(item.skip_reasons or []), reason[:200]]
            item.status = "skipped" if item.skips >= self.policy.max_skips else "queued"
            item.lease_token = item.lease_expires_at = item.claimed_by = None
        return item

    def _leased(
        self,
        s: Session,
        task_id: int,
        lease_token: str,
        *,
        now: datetime,
        for_update: bool = False,
        correcting: bool = False,
    ) -> ReviewItem:
        q = select(ReviewItem).where(ReviewItem.task_id == task_id)
        item = s.scalar(q.with_for_update() if for_update else q)
        if item is None:
            raise NotFound(f"unknown review task {task_id}")
        if item.status == "done":
            held = item.lease_expires_at is not None and aware(item.lease_expires_at) >= now
            if correcting and held and lease_token and item.lease_token == lease_token:
                return item
            raise Conflict(f"review task {task_id} is already labeled ({item.label!r}); claim the next one")
        if item.status != "claimed" or not lease_token or item.lease_token != lease_token:
            raise Conflict(
                f"review task {task_id} is not leased to you (the lease expired and the task was "
                "handed out again, or it was never claimed); claim a task with GET /v1/review/next"
            )
        return item

    # -- budget and figures ----------------------------------------------------------------
    def budgets(self) -> dict[str, int]:
        """The labeling budgets in force: the policy's, each replaced by one an operator set."""
        with Session(self.engine) as s:
            return self._budgets(s)

    def set_budgets(
        self, changes: dict[str, int], *, by: str, now: datetime | None = None
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Replace some of the budgets (kept in the store: every replica's next claim follows);
        returns the budgets before and after.

        Raises:
            InvalidInput: an unknown budget or a negative one.
        """
        unknown = set(changes) - set(BUDGETS)
        if unknown or any(v < 0 for v in changes.values()):
            raise InvalidInput(f"budgets are counts >= 0 of {list(BUDGETS)}; got {changes}")
        changed = {k: int(v) for k, v in changes.items()}
        return self._replace(ReviewBudgetRow, changed, self._budgets, by=by, now=now)

    def shares(self) -> dict[str, float]:
        """The gold and overlap shares in force: the policy's, each replaced by one an operator set."""
        with Session(self.engine) as s:
            return self._shares(s)

    def set_shares(
        self, changes: dict[str, float], *, by: str, now: datetime | None = None
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Replace the gold or overlap share (kept in the store: every replica's next claim follows);
        returns the shares before and after.

        Raises:
            InvalidInput: an unknown share, or one outside [0, 1].
        """
        if set(changes) - set(SHARES) or any(not 0.0 <= v <= 1.0 for v in changes.values()):
            raise InvalidInput(f"shares are fractions in [0, 1] of {list(SHARES)}; got {changes}")
        changed = {k: float(v) for k, v in changes.items()}
        return self._replace(ReviewShareRow, changed, self._shares, by=by, now=now)

    def _replace(
        self,
        table: type[ReviewBudgetRow] | type[ReviewShareRow],
        changes: dict[str, Any],
        read: Callable[[Session], dict[str, Any]],
        *,
        by: str,
        now: datetime | None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Store an operator's values of some knobs, and read them all before and after."""
        now = now or utcnow()
        with Session(self.engine) as s, s.begin():
            self.store.serialize(s, "claim")  # one change at a time, never in the middle of a claim
            before = read(s)
            for name, value in changes.items():
                s.merge(table(name=name, value=value, set_at=now, set_by=by))
            s.flush()
            return before, read(s)

    def _budgets(self, s: Session) -> dict[str, int]:
        stored = dict(s.execute(select(ReviewBudgetRow.name, ReviewBudgetRow.value)).all())
        return {name: int(stored.get(name, getattr(self.policy, name))) for name in BUDGETS}

    def _shares(self, s: Session) -> dict[str, float]:
        stored = dict(s.execute(select(ReviewShareRow.name, ReviewShareRow.value)).all())
        return {name: float(stored.get(name, getattr(self.policy, name))) for name in SHARES}

    def _used(self, s: Session, now: datetime, window: timedelta, reviewer: str | None = None) -> int:
        """Items labeled in ``window`` or held under a live lease (by ``reviewer``, else anyone)."""
        since = now - window
        mine = _claimed_by(reviewer)
        done = s.scalar(
            select(func.count()).select_from(ReviewItem).where(ReviewItem.done_at >= since, *mine)
        )
        live = s.scalar(
            select(func.count())
            .select_from(ReviewItem)
            .where(
                ReviewItem.status == "claimed",
                ReviewItem.lease_expires_at >= now,
                ReviewItem.claimed_at >= since,
                *mine,
            )
        )
        return int(done or 0) + int(live or 0)

    def _check_budget(self, s: Session, now: datetime, reviewer: str) -> None:
        """Refuse a claim past the global budget or ``reviewer``'s own, so that no one reviewer's
        labels can fill the next training set."""
        budget = self._budgets(s)
        for window, limit, name, whose in (
            (HOUR, budget["budget_per_hour"], "hourly", None),
            (DAY, budget["budget_per_day"], "daily", None),
            (HOUR, budget["budget_per_reviewer_hour"], "hourly per-reviewer", reviewer),
            (DAY, budget["budget_per_reviewer_day"], "daily per-reviewer", reviewer),
        ):
            if self._used(s, now, window, whose) >= limit:
                oldest = s.scalar(
                    select(func.min(ReviewItem.done_at)).where(
                        ReviewItem.done_at >= now - window, *_claimed_by(whose)
                    )
                )
                retry = (
                    (aware(oldest) + window - now).total_seconds()
                    if oldest is not None
                    else self.policy.lease_s
                )
                raise BudgetSpent(
                    f"the {name} review budget of {limit} labels is spent; try again in {retry:.0f}s",
                    retry_after_s=max(1.0, retry),
                )

    def stats(self, now: datetime | None = None) -> dict[str, object]:
        """Depth by status, throughput over the last hour and day, skips and lapsed leases, budget
        left, oldest waiting item."""
        now = now or utcnow()
        with Session(self.engine) as s:
            by_status = dict(
                s.execute(select(ReviewItem.status, func.count()).group_by(ReviewItem.status)).all()
            )
            stale_leases = (
                s.scalar(
                    select(func.count())
                    .select_from(ReviewItem)
                    .where(ReviewItem.status == "claimed", ReviewItem.lease_expires_at < now)
                )
                or 0
            )
            oldest = s.scalar(select(func.min(ReviewItem.created_at)).where(ReviewItem.status == "queued"))
            skips = int(s.scalar(select(func.coalesce(func.sum(ReviewItem.skips), 0))) or 0)
            recent = s.execute(
                select(ReviewItem.claimed_at, ReviewItem.done_at).where(ReviewItem.done_at >= now - DAY)
            ).all()
            used_hour, used_day = self._used(s, now, HOUR), self._used(s, now, DAY)
            budget = self._budgets(s)
        done = [(c, aware(d)) for c, d in recent if d is not None]
        seconds = [(d - aware(c)).total_seconds() for c, d in done if c is not None]
        done_hour = sum(1 for _, d in done if d >= now - HOUR)
        done_total = int(by_status.get("done", 0))
        return {
            "queued": int(by_status.get("queued", 0)) + int(stale_leases),
            "in_review": int(by_status.get("claimed", 0)) - int(stale_leases),
            "done": done_total,
            "skipped": int(by_status.get("skipped", 0)),
            "expired": int(by_status.get("expired", 0)),
            "oldest_queued_age_s": round((now - aware(oldest)).total_seconds(), 1) if oldest else None,
            "labeled_last_hour": done_hour,
            "labeled_last_day": len(recent),
            "median_seconds_per_label": round(statistics.median(seconds), 1) if seconds else None,
            "skips": skips,
            "skip_rate": round(skips / (skips + done_total), 3) if skips + done_total else None,
            "lapsed_leases": int(stale_leases),
            "budget": {
                "per_hour": budget["budget_per_hour"],
                "per_day": budget["budget_per_day"],
                "left_hour": max(0, budget["budget_per_hour"] - used_hour),
                "left_day": max(0, budget["budget_per_day"] - used_day),
                "per_reviewer_hour": budget["budget_per_reviewer_hour"],
                "per_reviewer_day": budget["budget_per_reviewer_day"],
            },
            "lease_s": self.policy.lease_s,
        }


def _answer_kind(item: ReviewItem, reviewer: str) -> str:
    """What ``reviewer``'s answer to ``item`` is: a gold check, a second reviewer's label, or a label."""
    if item.kind == "gold":
        return "gold"
    if item.kind in ("overlap", "overlapped") and item.first_by not in (None, reviewer):
        return "overlap"
    if item.kind == "second":
        return "second"
    return "label"


def cohen_kappa(pairs: list[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items: their agreement beyond what their
    own label mixes would give by chance (1: always agree; 0: chance; None: too few to say)."""
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(a == b for a, b in pairs) / n
    first = Counter(a for a, _ in pairs)
    second = Counter(b for _, b in pairs)
    chance = sum(first[c] * second[c] for c in first) / (n * n)
    if chance >= 1.0:
        return 1.0 if observed == 1.0 else None  # one label throughout: kappa is undefined
    return (observed - chance) / (1.0 - chance)


def why_queued(class_names: list[str], probs: list[float], uncertainty: float, priority: float) -> str:
    """What queued an item, in words a reviewer reads at a glance: the model's doubt between its
    top two classes, an image unlike those labeled when the model was sure, or two versions' dispute."""
    if priority >= DISPUTED:
        return f"the served model and a candidate on trial answer this differently; priority {priority:.2f}"
    ranked = sorted(zip(probs, class_names, strict=False), reverse=True)
    if len(ranked) >= 2 and ranked[0][0] - ranked[1][0] < 0.3:
        (p1, c1), (p2, c2) = ranked[0], ranked[1]
        return f"the model hesitates between {c1} ({p1:.0%}) and {c2} ({p2:.0%}); priority {priority:.2f}"
    if ranked and uncertainty < 0.3:
        return (
            f"the model is sure ({ranked[0][1]}, {ranked[0][0]:.0%}) but the image is unlike those "
            f"labeled so far; priority {priority:.2f}"
        )
    return f"the model is unsure (uncertainty {uncertainty:.2f}); priority {priority:.2f}"
