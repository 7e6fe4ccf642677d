"""The joiner dead-letters inconsistent predictions; the monitor waits for a broker that is down."""

from pathlib import Path

import pytest

from nicheloop.contracts import PredictionEvent
from nicheloop.store import Store


def event(
    pid: str, uncertainty: float, emb: list[float] | None = None, version: str = "1"
) -> PredictionEvent:
    return PredictionEvent(
        prediction_id=pid,
        model_name="m",
        model_version=version,
        label="a",
        probs=[0.6, 0.4],
        class_names=["a", "b"],
        uncertainty=uncertainty,
        embedding=emb or [0.0, 1.0],
        image_sha256="1" * 64,
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'db.sqlite'}")


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
