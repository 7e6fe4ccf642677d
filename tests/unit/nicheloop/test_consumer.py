"""The consumer's retry rules around its handler, on a fake broker client (the real broker's
dead-lettering runs in tests/integration): a record that keeps failing is dead-lettered after a
bounded number of tries, an outage of the stores behind the handler is waited out, and a retry
never hands the handler a record it already applied."""

from __future__ import annotations

import threading
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from kafka.structs import TopicPartition
from pydantic import BaseModel

from nicheloop.bus import consumer as consumer_module
from nicheloop.contracts import DEAD_LETTER_TOPIC, FEEDBACK_TOPIC, DeadLetter, FeedbackEvent

TP = TopicPartition(FEEDBACK_TOPIC, 0)


class FakeKafka:
    """A one-partition log with a committed offset, a position and KafkaConsumer's calls."""

    def __init__(self, values: list[bytes]) -> None:
        self.values, self.committed_at, self.position = values, 0, 0

    def poll(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        batch = [
            SimpleNamespace(topic=FEEDBACK_TOPIC, partition=0, offset=i, key=None, value=v)
            for i, v in enumerate(self.values)
        ][self.position :]
        self.position = len(self.values)
        return {TP: batch} if batch else {}

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.committed_at = offsets[TP].offset

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def committed(self, tp: TopicPartition) -> int:
        return self.committed_at

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position = offset


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[DeadLetter] = []

    def send(self, topic: str, value: str) -> None:
        assert topic == DEAD_LETTER_TOPIC
        self.sent.append(DeadLetter.model_validate_json(value))

    def flush(self) -> None: ...


class StoreAway(Exception):
    """Stands for the store's 'unavailable' errors."""


def _consumer(monkeypatch: pytest.MonkeyPatch, values: list[bytes], handler: Any) -> Any:
    kafka, producer = FakeKafka(values), FakeProducer()
    monkeypatch.setattr(consumer_module, "KafkaConsumer", lambda *a, **k: kafka)
    monkeypatch.setattr(consumer_module, "KafkaProducer", lambda *a, **k: producer)
    consumer = consumer_module.EventConsumer(
        "broker:9092", [FEEDBACK_TOPIC], "g", handler, transient=(StoreAway,), max_attempts=3
    )
    return consumer, kafka, producer


def _drain(consumer: Any, polls: int = 12) -> None:
    """run()'s loop, without its pause: poll, and rewind to the committed offset on a failure."""
    for _ in range(polls):
        try:
            consumer.poll_once()
        except Exception:  # noqa: BLE001 - what run() does with any failure
            consumer._rewind()


def _events(*labels: str) -> list[bytes]:
    return [
        FeedbackEvent(prediction_id=f"p{i}", label=label).model_dump_json().encode()
        for i, label in enumerate(labels)
    ]


def test_a_record_that_keeps_failing_is_dead_lettered_and_no_record_is_applied_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    applied: Counter[str] = Counter()

    def handler(topic: str, event: BaseModel) -> None:
        assert isinstance(event, FeedbackEvent)
        if event.label == "poison":
            raise KeyError("a bug the record triggers")
        applied[event.prediction_id] += 1

    consumer, kafka, producer = _consumer(monkeypatch, _events("a", "b", "poison", "c"), handler)
    _drain(consumer)
    assert applied == {"p0": 1, "p1": 1, "p3": 1}  # p0 and p1 were committed before the retries
    [letter] = producer.sent
    assert letter.offset == 2 and "failed 3 times: KeyError" in letter.reason
    assert kafka.committed_at == 4 and consumer._failures == {}


def test_an_outage_of_the_store_is_waited_out_without_dead_letters(monkeypatch: pytest.MonkeyPatch) -> None:
    away = threading.Event()
    away.set()
    calls: list[str] = []

    def handler(topic: str, event: BaseModel) -> None:
        calls.append(event.prediction_id)  # type: ignore[attr-defined]
        if away.is_set() and len(calls) > 5:
            away.clear()  # the store comes back after many more failures than max_attempts
        if away.is_set():
            raise StoreAway("connection refused")

    consumer, kafka, producer = _consumer(monkeypatch, _events("a", "b"), handler)
    _drain(consumer)
    assert producer.sent == [] and kafka.committed_at == 2 and calls[-2:] == ["p0", "p1"]


def test_an_invalid_record_is_dead_lettered_at_once_with_a_short_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    forged = b'{"prediction_id": "p", "label": "' + b"x" * 50_000 + b'"}'
    consumer, kafka, producer = _consumer(monkeypatch, [forged, b"\x00not json"], lambda t, e: None)
    _drain(consumer, polls=1)
    assert [d.offset for d in producer.sent] == [0, 1] and kafka.committed_at == 2
    assert "string_too_long" in producer.sent[0].reason and len(producer.sent[0].reason) < 1000
