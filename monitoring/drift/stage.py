"""The drift stage of the monitoring process: events in, windows, monitors, alarms, metrics out.

Every prediction of the version being served adds one row (image statistics, embedding,
probabilities) to the input window; every user label of such a prediction adds one row to the
label window (reviewers' labels are left out: the sampler picks uncertain images, so their
accuracy says nothing about the traffic). When a window is due, the monitors of
:func:`monitoring.drift.monitor.monitors` score it against that version's reference; a new version
brings its own reference and starts empty windows. An alarm per monitor (:class:`~.windows.Alarm`)
turns evaluations into one ``raised`` and one ``cleared`` transition per shift, which
``on_transition`` receives (the runner publishes them as drift events); ``on_window`` receives
every evaluation's verdicts with the window's span (the runner stores them: the drift timeline).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np
from pydantic import BaseModel
from threadpoolctl import threadpool_limits

from monitoring.drift.monitor import Feed, Inputs, MonitorConfig, MonitorResult, Outcomes, monitors
from monitoring.drift.report import ReportWriter
from monitoring.drift.windows import Alarm, Window, WindowSpec
from monitoring.metrics import MonitorMetrics
from nicheloop.contracts import IMAGE_STATS, DriftEvent, FeedbackEvent, PredictionEvent
from nicheloop.driftlog import INPUT_MONITORS, DriftWindow
from nicheloop.reference import Reference

log = logging.getLogger(__name__)


def one_blas_thread() -> threadpool_limits:
    """Limit this process's BLAS to one thread (until the returned limiter's ``restore_original_limits``,
    or for a ``with`` block).

    The drift tests multiply matrices of a few hundred rows, where OpenBLAS's extra threads spin
    and burn CPU for little speed: one thread takes the stage's CPU per event from 0.25 to 0.15 ms
    (benchmarks/drift.py), CPU the model replica on the same cores can use.
    """
    return threadpool_limits(limits=1, user_api="blas")


REMEMBERED_PREDICTIONS = 100_000  # predictions whose label may still come (for the label monitor)


@dataclass(frozen=True)
class DriftConfig:
    window: WindowSpec = field(default_factory=WindowSpec)
    label_window: WindowSpec = field(default_factory=lambda: WindowSpec("sliding", size=300, step=25))
    monitors: MonitorConfig = field(default_factory=MonitorConfig)  # the knobs every monitor gets
    clear_above: float = 0.1
    clear_after: int = 3
    # the fast lane: a short window that only raises, at a far stricter level, so that an abrupt
    # change (a new camera) is seen in tens of events instead of the hundreds a window of 200
    # needs to fill; None: no fast lane
    fast_window: WindowSpec | None = field(default_factory=lambda: WindowSpec("sliding", size=50, step=25))
    fast_alpha: float = 1e-4
    fast_monitors: tuple[str, ...] = INPUT_MONITORS

    def __post_init__(self) -> None:
        if not 0 < self.fast_alpha < 1:
            raise ValueError(f"fast_alpha must lie in (0, 1), got {self.fast_alpha}")
        unknown = set(self.fast_monitors) - set(monitors("inputs"))
        if unknown:
            known = sorted(monitors("inputs"))
            raise ValueError(f"fast lane monitors {sorted(unknown)}: use monitors of predictions, {known}")


@dataclass(frozen=True)
class Transition:
    """An alarm that was raised or cleared by one evaluation."""

    state: Literal["raised", "cleared"]
    model_version: str
    result: MonitorResult
    report: str | None = None
    window_start: datetime | None = None  # when the evaluated window's first row arrived

    def event(self, model_name: str) -> DriftEvent:
        """The drift event that tells the world (``nicheloop.drift.v1``)."""
        r = self.result
        finite = {k: v for k, v in r.details.items() if np.isfinite(v)}
        where = {"model_name": model_name, "model_version": self.model_version, "report": self.report}
        verdict = {"monitor": r.monitor, "p_value": r.p_value, "score": r.score, "window_size": r.n}
        return DriftEvent(**where, **verdict, state=self.state, details=finite)


@dataclass
class _Row:
    """One prediction as the monitors see it (kept in several windows: converted once)."""

    stats: np.ndarray
    embedding: np.ndarray  # float32, as served
    probs: np.ndarray
    early: np.ndarray  # float32, as served
    predicted: int
    at: datetime  # when it was predicted (a window's span)

    @classmethod
    def of(cls, event: PredictionEvent) -> _Row:
        stats = [event.image_stats[k] for k in IMAGE_STATS] if event.image_stats else []
        probs = np.asarray(event.probs, np.float64)
        return cls(
            np.asarray(stats, np.float64),
            np.asarray(event.embedding, np.float32),
            probs,
            np.asarray(event.early_embedding, np.float32),
            int(probs.argmax()),
            event.created_at,
        )


def _stats(rows: list[_Row]) -> tuple[np.ndarray, np.ndarray]:
    """The image statistics of the rows that carry them (events from older gateways do not), and
    the class the model predicted for each of those rows."""
    with_stats = [r for r in rows if r.stats.size]
    if not with_stats:
        return np.zeros((0, len(IMAGE_STATS))), np.zeros(0, np.int64)
    return np.stack([r.stats for r in with_stats]), np.array([r.predicted for r in with_stats])


def _inputs(rows: list[_Row]) -> Inputs:
    stats, predicted = _stats(rows)
    early = [r.early for r in rows if r.early.size]
    return Inputs(
        stats,
        predicted,
        np.stack([r.embedding for r in rows]),
        np.stack([r.probs for r in rows]),
        np.stack(early) if early and len({e.size for e in early}) == 1 else np.zeros((0, 0)),
    )


def _span(rows: list[_Row]) -> tuple[datetime, datetime]:
    """When a window's first and last events were served (the timeline's span of it)."""
    return min(r.at for r in rows), max(r.at for r in rows)


_Outcome = tuple[int, int, datetime]  # a user label: true class, predicted class, when labeled


def _finite(x: float | None) -> float | None:
    """None for a missing or non-finite figure (the store's JSON and floats hold no NaN)."""
    return x if x is not None and math.isfinite(x) else None


def _outcomes(rows: list[_Outcome]) -> Outcomes:
    truth, predicted = (np.array(a, dtype=np.int64) for a in list(zip(*rows))[:2])
    return Outcomes(truth, predicted)


class _VersionMonitors:
    """The monitors, windows and alarms of one model version."""

    def __init__(self, version: str, reference: Reference | None, cfg: DriftConfig) -> None:
        self.version, self.reference, self.cfg = version, reference, cfg
        self.window: Window[_Row] = Window(cfg.window)
        self.fast: Window[_Row] | None = Window(cfg.fast_window) if cfg.fast_window else None
        self.labels: Window[_Outcome] = Window(cfg.label_window)
        self.alarms = {name: Alarm(cfg.clear_above, cfg.clear_after) for name in monitors()}
        self.monitors = {
            name: monitor.for_reference(reference, cfg.monitors)
            for name, monitor in monitors().items()
            if reference is not None
        }

    def evaluate(self, feeds: Feed, window: Inputs | Outcomes) -> list[MonitorResult]:
        """Every monitor that feeds on this kind of window; insufficient data without a reference."""
        names = monitors(feeds)
        if self.reference is None:
            return [MonitorResult.insufficient(name, len(window)) for name in names]
        return [self.monitors[name].evaluate(window) for name in names]


class DriftStage:
    """Handler for the monitoring consumer (``(topic, event) -> None``)."""

    def __init__(
        self,
        reference_for: Callable[[str], Reference],
        metrics: MonitorMetrics,
        config: DriftConfig | None = None,
        on_transition: Callable[[Transition], None] | None = None,
        reports: ReportWriter | None = None,
        on_window: Callable[[list[DriftWindow]], None] | None = None,
    ) -> None:
        self.reference_for, self.metrics = reference_for, metrics
        self.cfg = config or DriftConfig()
        self.on_transition, self.reports, self.on_window = on_transition, reports, on_window
        self.current: _VersionMonitors | None = None
        self.predicted: OrderedDict[str, tuple[str, int]] = OrderedDict()
        for name in monitors():  # every registered monitor is on /metrics from the start, alarm down
            metrics.drift_detected.labels(name).set(0.0)

    def __call__(self, topic: str, event: BaseModel) -> list[MonitorResult]:
        if isinstance(event, PredictionEvent):
            # the champion's traffic only: a rollout's candidate (answering or in shadow) has its gates
            return self._prediction(event) if event.arm == "champion" else []
        if isinstance(event, FeedbackEvent) and event.source == "user":
            return self._feedback(event)
        return []

    def _monitors(self, version: str) -> _VersionMonitors:
        if self.current is None or self.current.version != version:  # a new champion brings its own reference
            self.current = _VersionMonitors(version, self._reference(version), self.cfg)
        return self.current

    def _reference(self, version: str) -> Reference | None:
        """The version's reference; None (monitors report insufficient data) if the registry fails."""
        try:
            return self.reference_for(version)
        except Exception as exc:  # noqa: BLE001 - a registry outage must not stall the consumer
            log.warning("no drift reference for version %s (%s); drift not scored for it", version, exc)
            return None

    def _prediction(self, event: PredictionEvent) -> list[MonitorResult]:
        mon = self._monitors(event.model_version)
        row = _Row.of(event)
        self.predicted[event.prediction_id] = (event.model_version, row.predicted)
        if len(self.predicted) > REMEMBERED_PREDICTIONS:
            self.predicted.popitem(last=False)
        at = event.created_at.timestamp()
        fast = mon.fast.add(row, at) if mon.fast is not None else None
        results = self._fast(mon, fast) if fast is not None else []
        due = mon.window.add(row, at)
        if due is None:
            return results
        return results + self._record(mon, mon.evaluate("inputs", _inputs(due)), span=_span(due), rows=due)

    def _fast(self, mon: _VersionMonitors, rows: list[_Row]) -> list[MonitorResult]:
        """Score a full fast-lane window with the fast monitors whose alarm is down, and raise it on
        p < ``fast_alpha``. Only a raising verdict is recorded (alarm, metrics, report, timeline,
        drift event, as any raise); calm ones are not, and clearing is left to the main window, whose
        larger windows say more: the fast lane only speaks to say "changed"."""
        names = [n for n in self.cfg.fast_monitors if not mon.alarms[n].raised]
        if mon.fast is None or len(rows) < mon.fast.spec.size or not names or mon.reference is None:
            return []
        window = _inputs(rows)
        results = [mon.monitors[n].evaluate(window) for n in names]
        raised = [
            dataclasses.replace(r, drifted=True)
            for r in results
            if r.status == "ok" and r.p_value is not None and r.p_value < self.cfg.fast_alpha
        ]
        if raised:
            self._record(mon, raised, span=_span(rows), rows=rows, alpha=self.cfg.fast_alpha)
        return raised

    def _feedback(self, event: FeedbackEvent) -> list[MonitorResult]:
        known = self.predicted.get(event.prediction_id)
        mon = self.current
        if known is None or mon is None or known[0] != mon.version or mon.reference is None:
            return []
        if event.label not in mon.reference.class_names:
            return []
        row = (mon.reference.class_names.index(event.label), known[1], event.created_at)
        due = mon.labels.add(row, event.created_at.timestamp())
        if due is None:
            return []
        span = (min(r[2] for r in due), max(r[2] for r in due))
        return self._record(mon, mon.evaluate("outcomes", _outcomes(due)), span=span)

    def _record(
        self,
        mon: _VersionMonitors,
        results: list[MonitorResult],
        *,
        span: tuple[datetime, datetime],
        rows: list[_Row] | None = None,
        alpha: float | None = None,
    ) -> list[MonitorResult]:
        """Update the alarms, metrics, reports and timeline with one window's ``results``, judged at
        ``alpha`` (the monitors' own when None)."""
        m, now = self.metrics, time.time()
        changes: list[Transition] = []
        for r in results:
            m.drift_window.labels(r.monitor).set(r.n)
            m.drift_last_eval.labels(r.monitor).set(now)
            m.drift_insufficient.labels(r.monitor).set(float(r.status == "insufficient_data"))
            if r.status != "ok":
                continue
            m.drift_score.labels(r.monitor).set(r.score if r.score is not None else float("nan"))
            m.drift_p_value.labels(r.monitor).set(r.p_value if r.p_value is not None else float("nan"))
            change = mon.alarms[r.monitor].update(r.drifted, r.p_value)
            m.drift_detected.labels(r.monitor).set(float(mon.alarms[r.monitor].raised))
            if change is not None:
                m.drift_alarms.labels(r.monitor, change).inc()
                log.warning(
                    "drift alarm %s: %s of version %s (p=%s, n=%d)",
                    change,
                    r.monitor,
                    mon.version,
                    r.p_value,
                    r.n,
                )
                changes.append(Transition(change, mon.version, r, window_start=span[0]))
        report = self._report(mon, results, rows, changes)
        for transition in changes:
            if self.on_transition is not None:
                self.on_transition(dataclasses.replace(transition, report=report))
        self._log(mon, results, changes, span, report, self.cfg.monitors.alpha if alpha is None else alpha)
        return results

    def _log(
        self,
        mon: _VersionMonitors,
        results: list[MonitorResult],
        changes: list[Transition],
        span: tuple[datetime, datetime],
        report: str | None,
        alpha: float,
    ) -> None:
        """Hand the verdicts to ``on_window`` (the drift timeline); a failure there is logged, never
        raised: the timeline is a view, and the alarms and events must go on without it."""
        if self.on_window is None:
            return
        changed = {c.result.monitor: c.state for c in changes}
        windows = [
            DriftWindow(
                model_version=mon.version,
                monitor=r.monitor,
                feed=monitors()[r.monitor].feeds,
                status=r.status,
                n=r.n,
                alpha=alpha,
                drifted=r.drifted,
                alarm=mon.alarms[r.monitor].raised,
                score=_finite(r.score),
                p_value=_finite(r.p_value),
                change=changed.get(r.monitor),
                started_at=span[0],
                ended_at=span[1],
                report=report,
            )
            for r in results
        ]
        try:
            self.on_window(windows)
        except Exception:
            log.exception("drift timeline: %d verdicts of version %s not stored", len(windows), mon.version)

    def _report(
        self,
        mon: _VersionMonitors,
        results: list[MonitorResult],
        rows: list[_Row] | None,
        changes: list[Transition],
    ) -> str | None:
        """An HTML report of an input window when an alarm moved, or when the periodic one is due."""
        if self.reports is None or not rows or mon.reference is None or not self.reports.due(bool(changes)):
            return None
        reason = ", ".join(f"{c.result.monitor} {c.state}" for c in changes) or "periodic"
        path = self.reports.write(
            mon.version, mon.reference, _stats(rows)[0], np.stack([r.probs for r in rows]), results, reason
        )
        return str(path) if path is not None else None
