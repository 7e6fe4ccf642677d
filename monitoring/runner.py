"""The monitoring process: one consumer applies each event to the store, the sampler and drift."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from functools import lru_cache

from pydantic import BaseModel

from monitoring.drift.monitor import MonitorConfig
from monitoring.drift.report import PRUNE_EVERY_S, ReportWriter
from monitoring.drift.stage import DriftConfig, DriftStage, Transition, one_blas_thread
from monitoring.drift.windows import WindowSpec
from monitoring.join import Joiner
from monitoring.metrics import MonitorMetrics
from monitoring.sampling import ActiveSampler, SamplerConfig
from nicheloop.bus import BrokerError, EventConsumer, Publisher, ensure_topics
from nicheloop.contracts import DRIFT_TOPIC, FEEDBACK_TOPIC, PREDICTIONS_TOPIC, utcnow
from nicheloop.driftlog import DriftLog
from nicheloop.reference import Reference
from nicheloop.registry import Registry
from nicheloop.review import QueuePolicy, ReviewQueue
from nicheloop.settings import Settings
from nicheloop.spools import SpoolReports
from nicheloop.store import UNAVAILABLE, Store

log = logging.getLogger(__name__)

GROUP = "nicheloop-monitor"


STAGES = ("join", "sample", "drift")


class Stages:
    """join → sample → drift, in that order, for every event (so a queued item is always joined).

    ``stages`` picks a subset (e.g. ``("join",)`` for a joiner that needs no MLflow).
    """

    def __init__(
        self,
        settings: Settings,
        metrics: MonitorMetrics,
        stages: tuple[str, ...] = STAGES,
        publish: Callable[[str, str, BaseModel], None] | None = None,
    ) -> None:
        unknown = set(stages) - set(STAGES)
        if unknown or "join" not in stages:
            raise ValueError(f"stages must include 'join' and come from {STAGES}, got {stages}")
        store = Store(settings.db_url)
        registry = Registry(settings.tracking_uri, settings.model_name)

        @lru_cache(maxsize=4)
        def reference_for(version: str) -> Reference:
            return registry.load(version).reference

        self.metrics = metrics
        self.handlers: list = [Joiner(store)]
        if "sample" in stages:
            self.handlers.append(
                ActiveSampler(
                    store,
                    ReviewQueue(store, QueuePolicy.from_settings(settings)),
                    settings.home.resolve() / "sampling",
                    sampler_config(settings),
                    lambda version: reference_for(version).embeddings,
                    metrics,
                    alarm_since=alarm_clock(DriftLog(store)),
                )
            )
        if "drift" in stages:

            def announce(change: Transition) -> None:
                if publish is not None:
                    publish(
                        DRIFT_TOPIC,
                        f"{change.model_version}:{change.result.monitor}",
                        change.event(settings.model_name),
                    )

            self.handlers.append(
                DriftStage(
                    reference_for,
                    metrics,
                    drift_config(settings),
                    announce,
                    ReportWriter(
                        settings.drift_report_dir,
                        settings.drift_report_every_s,
                        keep_days=settings.drift_timeline_retention_days,
                    ),
                    DriftLog(store).record,
                )
            )

    def __call__(self, topic: str, event: BaseModel) -> None:
        for handler in self.handlers:
            handler(topic, event)
        self.metrics.events.labels(GROUP, topic).inc()


def drift_config(settings: Settings) -> DriftConfig:
    window = WindowSpec(
        settings.drift_window_kind,
        size=settings.drift_window,
        step=settings.drift_window_step,
        seconds=settings.drift_window_seconds,
    )
    knobs = MonitorConfig(
        alpha=settings.drift_alpha,
        min_samples=settings.drift_min_samples,
        embedding_method=settings.drift_embedding_method,
    )
    fast = settings.drift_fast_window
    fast_window = WindowSpec("sliding", size=fast, step=settings.drift_fast_step) if fast else None
    return DriftConfig(
        window=window, monitors=knobs, fast_window=fast_window, fast_alpha=settings.drift_fast_alpha
    )


def sampler_config(settings: Settings) -> SamplerConfig:
    return SamplerConfig(**settings.section("sampling_"))


def alarm_clock(drift: DriftLog) -> Callable[[str], float | None]:
    """A version's oldest holding alarm, as the drift stage stored it, in seconds since the epoch."""

    def since(version: str) -> float | None:
        at = drift.alarm_since(version)
        return at.timestamp() if at is not None else None

    return since


def _sweep_pending(
    settings: Settings, metrics: MonitorMetrics, stop: threading.Event, every_s: float = 60.0
) -> None:
    """Count feedback that waited past its TTL for a prediction (it is kept, never dropped), and
    once an hour delete the drift verdicts past their retention (the timeline grows by a row per
    monitor every 50 events)."""
    store, ttl = Store(settings.db_url), timedelta(seconds=settings.pending_feedback_ttl_s)
    pruned_at = float("-inf")
    while not stop.wait(every_s):
        try:
            expired = store.expire_pending(ttl)
            metrics.feedback_expired.inc(expired)
            metrics.feedback_pending.set(store.counts()["feedback_pending"])
            if expired:
                log.warning("%d feedback events expired waiting for their predictions", expired)
            if time.monotonic() - pruned_at >= PRUNE_EVERY_S:
                prune_timeline(DriftLog(store), settings.drift_timeline_retention_days)
                pruned_at = time.monotonic()
        except Exception:
            log.exception("pending-feedback sweep failed; retrying in %.0fs", every_s)


def prune_timeline(drift: DriftLog, retention_days: float) -> int:
    """Delete the drift verdicts older than ``retention_days`` that moved no alarm (0: keep all)."""
    if retention_days <= 0:
        return 0
    pruned = drift.prune(before=utcnow() - timedelta(days=retention_days))
    if pruned:
        log.info("deleted %d drift verdicts older than %g days", pruned, retention_days)
    return pruned


def _retry_until_connected(
    connect: Callable[[], EventConsumer], stop: threading.Event, bootstrap: str
) -> EventConsumer | None:
    """Connect to the broker, retrying while it is down (it may be restarting); None if stopped."""
    delay = 1.0
    while not stop.is_set():
        try:
            return connect()
        except BrokerError as exc:
            log.warning("broker %s not reachable yet (%s); retrying in %.0fs", bootstrap, exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, 15.0)
    return None


def run_monitor(
    settings: Settings, stop: threading.Event | None = None, stages: tuple[str, ...] = STAGES
) -> None:
    """Consume until SIGTERM/SIGINT (or ``stop``); metrics on ``settings.metrics_port``."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    if "drift" in stages:
        one_blas_thread()  # for the process's life: the drift tests' matrices are small
    metrics = MonitorMetrics()
    metrics.serve(settings.host, settings.metrics_port)
    # drift events go through the same durable publisher as serving's: spooled while Kafka is down
    publisher = (
        Publisher(
            settings.bootstrap_servers,
            settings.home / "spool",
            name="monitor",
            spool_max_events=settings.spool_max_events,
            report=SpoolReports(Store(settings.db_url)).reporter("monitor"),
        )
        if "drift" in stages
        else None
    )
    router = Stages(settings, metrics, stages, publisher.publish if publisher else None)

    def connect() -> EventConsumer:
        ensure_topics(settings.bootstrap_servers)
        return EventConsumer(
            settings.bootstrap_servers,
            [PREDICTIONS_TOPIC, FEEDBACK_TOPIC],
            GROUP,
            router,
            on_dead_letter=metrics.dead_letters.labels(GROUP).inc,
            transient=UNAVAILABLE,  # a store outage is waited out; a record that keeps failing is not
        )

    consumer = _retry_until_connected(connect, stop, settings.bootstrap_servers)
    if consumer is None:
        if publisher is not None:
            publisher.close()
        return
    threading.Thread(
        target=_sweep_pending, args=(settings, metrics, stop), name="pending-sweeper", daemon=True
    ).start()
    log.info("monitoring %s and %s; metrics on :%d", PREDICTIONS_TOPIC, FEEDBACK_TOPIC, settings.metrics_port)
    try:
        consumer.run(stop)
    finally:
        consumer.close()
        if publisher is not None:
            publisher.close()
