"""The drift timeline as stored: every monitor's verdict on every evaluated window, with the alarm
it left and the window's span (the monitoring process writes it; the operator page reads it).

Prometheus keeps only each monitor's last verdict; a person asking "when did this start, and what
did the images look like then" needs the history, and the predictions of the window's span.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, true
from sqlalchemy.orm import Session

from nicheloop.contracts import aware, utcnow
from nicheloop.errors import NotFound
from nicheloop.store import DriftWindowRow, LabeledExample, Prediction, Store

# the monitors whose alarm says the pixels changed (light, focus, noise); a prediction or label
# alarm alone may be only the class mix
INPUT_MONITORS = ("image", "embedding")


@dataclass(frozen=True)
class DriftWindow:
    """One monitor's verdict on one window (a row of ``drift_windows``; ``id`` once stored)."""

    model_version: str
    monitor: str
    feed: str
    status: str
    n: int
    alpha: float
    drifted: bool
    alarm: bool
    score: float | None = None
    p_value: float | None = None
    change: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    report: str | None = None
    evaluated_at: datetime | None = None
    id: int | None = None

    @classmethod
    def of(cls, row: DriftWindowRow) -> DriftWindow:
        values = {f.name: getattr(row, f.name) for f in dataclasses.fields(cls)}
        times = {k: aware(v) for k, v in values.items() if isinstance(v, datetime)}
        return cls(**values | times)

    def public(self) -> dict[str, object]:
        """As the HTTP API shows it: times in ISO 8601, whether a report exists (not its path)."""
        out: dict[str, object] = dataclasses.asdict(self)
        for name in ("started_at", "ended_at", "evaluated_at"):
            value = getattr(self, name)
            out[name] = value.isoformat() if value is not None else None
        out["report"] = self.report is not None
        return out


class DriftLog:
    """Appends and reads the drift timeline."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def record(self, windows: list[DriftWindow]) -> None:
        """Store one evaluation's verdicts (one per monitor) in one transaction."""
        now = utcnow()
        rows = [
            DriftWindowRow(
                **{k: v for k, v in dataclasses.asdict(w).items() if k != "id"}
                | {"evaluated_at": w.evaluated_at or now}
            )
            for w in windows
        ]
        with Session(self.store.engine) as s, s.begin():
            s.add_all(rows)

    def prune(self, *, before: datetime, chunk: int = 10_000) -> int:
        """Delete the verdicts evaluated before ``before`` that moved no alarm; returns how many.

        A window every 50 events writes one row per monitor, millions a day under load. Kept
        whatever their age: every transition (``raised``, ``cleared``: the timeline's story, and the
        clock of :meth:`alarm_since`) and each version's latest verdict per monitor (whether its
        alarm still holds). Deleted in chunks, each its own transaction, so writers never wait long.
        """
        latest = select(func.max(DriftWindowRow.id)).group_by(
            DriftWindowRow.model_version, DriftWindowRow.monitor
        )
        doomed = (
            select(DriftWindowRow.id)
            .where(
                DriftWindowRow.evaluated_at < before,
                DriftWindowRow.change.is_(None),
                DriftWindowRow.id.not_in(latest),
            )
            .limit(chunk)
        )
        total = 0
        while True:
            with Session(self.store.engine) as s, s.begin():
                ids = s.scalars(doomed).all()
                if ids:
                    s.execute(delete(DriftWindowRow).where(DriftWindowRow.id.in_(ids)))
            total += len(ids)
            if len(ids) < chunk:
                return total

    def timeline(self, *, since: datetime, limit: int = 5000) -> list[DriftWindow]:
        """Verdicts evaluated since ``since``, oldest first (the newest ``limit`` of them)."""
        with Session(self.store.engine) as s:
            rows = s.scalars(
                select(DriftWindowRow)
                .where(DriftWindowRow.evaluated_at >= since)
                .order_by(DriftWindowRow.id.desc())
                .limit(limit)
            ).all()
            return [DriftWindow.of(r) for r in reversed(rows)]

    def alarm_since(
        self, model_version: str, monitors: Sequence[str] = (), *, window_start: bool = False
    ) -> datetime | None:
        """When the oldest of ``model_version``'s alarms that still hold was raised (None: none holds);
        only the alarms of ``monitors`` when given; ``window_start``: when the window that raised it
        began (its images were served before the verdict)."""
        with Session(self.store.engine) as s:
            latest = (
                select(func.max(DriftWindowRow.id))
                .where(DriftWindowRow.model_version == model_version)
                .where(DriftWindowRow.monitor.in_(monitors) if monitors else true())
                .group_by(DriftWindowRow.monitor)
            )
            holding = s.scalars(
                select(DriftWindowRow.monitor).where(DriftWindowRow.id.in_(latest), DriftWindowRow.alarm)
            ).all()
            if not holding:
                return None
            newest = (
                func.max(func.coalesce(DriftWindowRow.started_at, DriftWindowRow.evaluated_at))
                if window_start
                else func.max(DriftWindowRow.evaluated_at)
            )
            raised = s.scalars(
                select(newest)
                .where(
                    DriftWindowRow.model_version == model_version,
                    DriftWindowRow.monitor.in_(holding),
                    DriftWindowRow.change == "raised",
                )
                .group_by(DriftWindowRow.monitor)
            ).all()
        return min((aware(at) for at in raised if at is not None), default=None)

    def earliest_alarm(
        self, versions: Sequence[str], monitors: Sequence[str] = (), *, window_start: bool = False
    ) -> datetime | None:
        """:meth:`alarm_since` of the oldest alarm still holding on any of ``versions`` (a stopgap
        champion and the version it patches)."""
        found = (self.alarm_since(v, monitors, window_start=window_start) for v in versions)
        return min((at for at in found if at is not None), default=None)

    def window(self, window_id: int) -> DriftWindow:
        """One stored verdict.

        Raises:
            NotFound: no window has this id.
        """
        with Session(self.store.engine) as s:
            row = s.get(DriftWindowRow, window_id)
            if row is None:
                raise NotFound(f"no drift window {window_id}; GET /v1/drift/timeline lists them")
            return DriftWindow.of(row)

    def images(self, window: DriftWindow, *, k: int = 12, seed: int = 0) -> list[str]:
        """The SHA-256 of up to ``k`` images of the window, drawn at random (seeded by the window, so
        a page shows the same sample twice): for an input window, those the champion answered in its
        span; for an outcome window, those whose user labels came in its span."""
        if window.started_at is None or window.ended_at is None:
            return []
        if window.feed == "outcomes":
            query = select(LabeledExample.image_sha256).where(
                LabeledExample.model_version == window.model_version,
                LabeledExample.source == "user",
                LabeledExample.created_at >= window.started_at,
                LabeledExample.created_at <= window.ended_at,
            )
        else:
            query = select(Prediction.image_sha256).where(
                Prediction.model_version == window.model_version,
                Prediction.created_at >= window.started_at,
                Prediction.created_at <= window.ended_at,
                (Prediction.arm == "champion") | Prediction.arm.is_(None),
            )
        with Session(self.store.engine) as s:
            shas = s.scalars(query.limit(5000)).all()
        unique = sorted(set(shas))
        return random.Random(seed * 1_000_003 + (window.id or 0)).sample(unique, min(k, len(unique)))
