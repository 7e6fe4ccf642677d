from pathlib import Path

import numpy as np
import pytest

from monitoring.drift import DriftMonitor, embedding_drift
from monitoring.join import Joiner
from monitoring.metrics import MonitorMetrics
from nicheloop.contracts import FeedbackEvent, PredictionEvent
from nicheloop.errors import InvalidInput
from nicheloop.store import Store


def event(pid: str, uncertainty: float, emb: list[float] | None = None, version: str = "1") -> PredictionEvent:
    return PredictionEvent(prediction_id=pid, model_name="m", model_version=version, label="a", probs=[0.6, 0.4],
                           class_names=["a", "b"], uncertainty=uncertainty, embedding=emb or [0.0, 1.0],
                           image_sha256="1" * 64)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_joiner_dead_letters_inconsistent_predictions(store: Store) -> None:
    bad = event("p", 0.5).model_copy(update={"probs": [1.0]})
    with pytest.raises(InvalidInput, match="probs"):
        Joiner(store)("t", bad)


def test_embedding_drift_separates_shifted_from_unshifted() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(120, 16)).astype(np.float32)
    same = embedding_drift(ref, rng.normal(size=(100, 16)).astype(np.float32))
    moved = embedding_drift(ref, (rng.normal(size=(100, 16)) + 1.0).astype(np.float32))
    assert not same.drifted and moved.drifted and moved.score > same.score


def test_embedding_drift_needs_enough_data() -> None:
    with pytest.raises(ValueError, match="insufficient data"):
        embedding_drift(np.zeros((5, 4)), np.zeros((50, 4)))
    with pytest.raises(ValueError, match="shapes differ"):
        embedding_drift(np.zeros((50, 4)), np.zeros((50, 3)))


def test_drift_monitor_scores_every_n_events_and_resets_on_a_new_version() -> None:
    rng = np.random.default_rng(1)
    loaded: list[str] = []

    def reference_for(version: str) -> np.ndarray:
        loaded.append(version)
        return rng.normal(size=(60, 8)).astype(np.float32)

    metrics = MonitorMetrics()
    monitor = DriftMonitor(reference_for, metrics, window=40, every=10, min_samples=20)
    results = [monitor("t", event(f"p{i}", 0.1, list(rng.normal(size=8) + 2.0))) for i in range(30)]
    scored = [r for r in results if r is not None]
    assert len(scored) == 2 and scored[-1].drifted  # at events 20 and 30
    assert metrics.registry.get_sample_value("nicheloop_drift_score", {"monitor": "embeddings"}) == scored[-1].score
    monitor("t", event("new", 0.1, list(rng.normal(size=8)), version="2"))
    assert loaded == ["1", "2"] and len(monitor.window) == 1


def test_monitor_waits_for_a_broker_that_is_down_at_start() -> None:
    import threading

    from monitoring import runner
    from nicheloop.bus import BrokerError

    attempts = []

    def connect():
        attempts.append(1)
        if len(attempts) < 3:
            raise BrokerError("no brokers available")
        return "consumer"

    stop = threading.Event()
    original = stop.wait
    stop.wait = lambda timeout=None: original(0)  # type: ignore[method-assign]  # no real back-off
    assert runner._retry_until_connected(connect, stop, "broker:9092") == "consumer" and len(attempts) == 3
    stop.set()
    assert runner._retry_until_connected(connect, stop, "broker:9092") is None
