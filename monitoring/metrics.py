"""Prometheus metrics of the monitoring process (one registry per process, no globals at import)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


@dataclass
class MonitorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events = Counter(
            "nicheloop_events_consumed",
            "Events applied, by consumer and topic",
            ["consumer", "topic"],
            registry=r,
        )
        self.dead_letters = Counter(
            "nicheloop_events_dead_lettered", "Events sent to the dead-letter topic", ["consumer"], registry=r
        )
        self.drift_score = Gauge(
            "nicheloop_drift_score",
            "Latest drift score of a monitor (1 - p-value, or the embedding method's statistic)",
            ["monitor"],
            registry=r,
        )
        self.drift_p_value = Gauge(
            "nicheloop_drift_p_value",
            "Latest p-value of a monitor (NaN where the method gives none)",
            ["monitor"],
            registry=r,
        )
        self.drift_detected = Gauge(
            "nicheloop_drift_detected",
            "1 while a monitor's alarm is raised (with hysteresis)",
            ["monitor"],
            registry=r,
        )
        self.drift_insufficient = Gauge(
            "nicheloop_drift_insufficient_data",
            "1 when the latest window was too small to score",
            ["monitor"],
            registry=r,
        )
        self.drift_alarms = Counter(
            "nicheloop_drift_alarms",
            "Alarm transitions, by monitor and state",
            ["monitor", "state"],
            registry=r,
        )
        self.drift_window = Gauge(
            "nicheloop_drift_window_size", "Samples in the evaluated window", ["monitor"], registry=r
        )
        self.drift_last_eval = Gauge(
            "nicheloop_drift_last_evaluation_timestamp_seconds",
            "Unix time of the latest drift evaluation",
            ["monitor"],
            registry=r,
        )
        self.feedback_expired = Counter(
            "nicheloop_feedback_expired", "Feedback whose prediction never came within the TTL", registry=r
        )
        self.feedback_pending = Gauge(
            "nicheloop_feedback_pending", "Feedback waiting for its prediction", registry=r
        )
        self.review_enqueued = Counter(
            "nicheloop_review_enqueued", "Predictions queued for review", registry=r
        )
        self.duplicates_suppressed = Counter(
            "nicheloop_sampling_duplicates_suppressed",
            "Candidates dropped as duplicates of labeled or queued images",
            ["kind"],
            registry=r,
        )
        self.index_size = Gauge(
            "nicheloop_sampling_index_vectors", "Embeddings in the covered-set index", registry=r
        )
        self.index_memory = Gauge(
            "nicheloop_sampling_index_memory_bytes", "Memory held by the covered-set index", registry=r
        )
        self.index_recall = Gauge(
            "nicheloop_sampling_index_recall",
            "Recall@1 of the covered-set index against exact search (1 while exact)",
            registry=r,
        )
        self.index_approximate = Gauge(
            "nicheloop_sampling_index_approximate", "1 once the index is HNSW", registry=r
        )

    def serve(self, host: str, port: int) -> None:
        """Expose ``/metrics`` on ``host:port`` in a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)
