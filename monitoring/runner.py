"""The monitoring process: one consumer applies each event to the store, the sampler and drift."""

from __future__ import annotations

import logging
import signal
import threading
from functools import lru_cache

import numpy as np
from pydantic import BaseModel

from nicheloop.bus import EventConsumer, ensure_topics
from nicheloop.contracts import FEEDBACK_TOPIC, PREDICTIONS_TOPIC
from nicheloop.registry import Registry
from nicheloop.settings import Settings
from nicheloop.store import Store
from monitoring.drift import DriftMonitor
from monitoring.join import Joiner
from monitoring.metrics import MonitorMetrics
from monitoring.sampling import UncertaintySampler

log = logging.getLogger(__name__)

GROUP = "nicheloop-monitor"


class Pipeline:
    """join → sample → drift, in that order, for every event (so a queued item is always joined)."""

    def __init__(self, settings: Settings, metrics: MonitorMetrics) -> None:
        store = Store(settings.db_url)
        registry = Registry(settings.tracking_uri, settings.model_name)

        @lru_cache(maxsize=4)
        def reference_for(version: str) -> np.ndarray:
            return registry.load(version).reference

        self.metrics = metrics
        self.joiner = Joiner(store)
        self.sampler = UncertaintySampler(store, settings.review_top_fraction)
        self.drift = DriftMonitor(reference_for, metrics, window=settings.drift_window)

    def __call__(self, topic: str, event: BaseModel) -> None:
        self.joiner(topic, event)
        if self.sampler(topic, event):
            self.metrics.review_enqueued.inc()
        self.drift(topic, event)
        self.metrics.events.labels(GROUP, topic).inc()


def run_monitor(settings: Settings, stop: threading.Event | None = None) -> None:
    """Consume until SIGTERM/SIGINT (or ``stop``); metrics on ``settings.metrics_port``."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    metrics = MonitorMetrics()
    metrics.serve(settings.host, settings.metrics_port)
    ensure_topics(settings.bootstrap_servers)
    consumer = EventConsumer(settings.bootstrap_servers, [PREDICTIONS_TOPIC, FEEDBACK_TOPIC], GROUP,
                             Pipeline(settings, metrics), on_dead_letter=metrics.dead_letters.labels(GROUP).inc)
    log.info("monitoring %s and %s; metrics on :%d", PREDICTIONS_TOPIC, FEEDBACK_TOPIC, settings.metrics_port)
    try:
        consumer.run(stop)
    finally:
        consumer.close()
