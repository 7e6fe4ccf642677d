"""Prometheus metrics of the monitoring process (one registry per process, no globals at import)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


@dataclass
class MonitorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self._events()
        self._drift()
        self._sampling()

    def _events(self) -> None:
        """Events consumed and dead-lettered; feedback waiting for its prediction."""
        self.events = self._counter(
            "nicheloop_events_consumed", "Events applied, by consumer and topic", "consumer", "topic"
        )
        self.dead_letters = self._counter(
            "nicheloop_events_dead_lettered", "Events sent to the dead-letter topic", "consumer"
        )
        self.feedback_expired = self._counter(
            "nicheloop_feedback_expired", "Feedback whose prediction never came within the TTL"
        )
        self.feedback_pending = self._gauge(
            "nicheloop_feedback_pending", "Feedback waiting for its prediction"
        )

    def _drift(self) -> None:
        """Per drift monitor: score, p-value, alarm, window and last evaluation."""
        self.drift_score = self._gauge(
            "nicheloop_drift_score",
            "Latest drift score of a monitor (1 - p-value, or the embedding method's statistic)",
            "monitor",
        )
        self.drift_p_value = self._gauge(
            "nicheloop_drift_p_value",
            "Latest p-value of a monitor (NaN where the method gives none)",
            "monitor",
        )
        self.drift_detected = self._gauge(
            "nicheloop_drift_detected", "1 while a monitor's alarm is raised (with hysteresis)", "monitor"
        )
        self.drift_insufficient = self._gauge(
            "nicheloop_drift_insufficient_data", "1 when the latest window was too small to score", "monitor"
        )
        self.drift_alarms = self._counter(
            "nicheloop_drift_alarms", "Alarm transitions, by monitor and state", "monitor", "state"
        )
        self.drift_window = self._gauge(
            "nicheloop_drift_window_size", "Samples in the evaluated window", "monitor"
        )
        self.drift_last_eval = self._gauge(
            "nicheloop_drift_last_evaluation_timestamp_seconds",
            "Unix time of the latest drift evaluation",
            "monitor",
        )

    def _sampling(self) -> None:
        """The review sampler: queued items, suppressed duplicates, the covered-set index."""
        self.review_enqueued = self._counter("nicheloop_review_enqueued", "Predictions queued for review")
        self.review_enqueued_after_alarm = self._counter(
            "nicheloop_review_enqueued_after_alarm",
            "Of those, queued from traffic served since a drift alarm that still held",
        )
        self.review_enqueued_disputed = self._counter(
            "nicheloop_review_enqueued_disputed",
            "Of those, queued because a candidate in shadow answered the image otherwise",
        )
        self.duplicates_suppressed = self._counter(
            "nicheloop_sampling_duplicates_suppressed",
            "Candidates dropped as duplicates of labeled or queued images",
            "kind",
        )
        self.index_size = self._gauge(
            "nicheloop_sampling_index_vectors", "Embeddings in the covered-set index"
        )
        self.index_memory = self._gauge(
            "nicheloop_sampling_index_memory_bytes", "Memory held by the covered-set index"
        )
        self.index_recall = self._gauge(
            "nicheloop_sampling_index_recall",
            "Recall@1 of the covered-set index against exact search (1 while exact)",
        )
        self.index_approximate = self._gauge(
            "nicheloop_sampling_index_approximate", "1 once the index is HNSW"
        )

    def _counter(self, name: str, doc: str, *labels: str) -> Counter:
        return Counter(name, doc, list(labels), registry=self.registry)

    def _gauge(self, name: str, doc: str, *labels: str) -> Gauge:
        return Gauge(name, doc, list(labels), registry=self.registry)

    def serve(self, host: str, port: int) -> None:
        """Expose ``/metrics`` on ``host:port`` in a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)
