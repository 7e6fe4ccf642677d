"""The only module that imports kafka-python: publishing, consuming, dead letters, counts."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from pydantic import BaseModel, ValidationError

from nicheloop.contracts import (
    ALL_TOPICS, DEAD_LETTER_TOPIC, FEEDBACK_TOPIC, PREDICTIONS_TOPIC, DeadLetter, FeedbackEvent,
    PredictionEvent,
)
from nicheloop.errors import InvalidInput

log = logging.getLogger(__name__)

EVENT_TYPES: dict[str, type[BaseModel]] = {
    PREDICTIONS_TOPIC: PredictionEvent,
    FEEDBACK_TOPIC: FeedbackEvent,
}


def ensure_topics(bootstrap: str, partitions: int = 3, topics: Iterable[str] = ALL_TOPICS) -> None:
    """Create the topics if missing (replication factor 1 suits the local single-node broker)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="nicheloop-admin")
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics if t not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


class Publisher:
    """Publishes events keyed by ``prediction_id``: acks=all, idempotent, batched."""

    def __init__(self, bootstrap: str, linger_ms: int = 5) -> None:
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            retries=2**31 - 1,
            key_serializer=lambda k: k.encode(),
            value_serializer=lambda v: v.encode(),
            client_id="nicheloop-publisher",
        )

    def publish(self, topic: str, key: str, event: BaseModel) -> Any:
        """Send asynchronously; returns kafka-python's future (``.get()`` waits for the ack)."""
        future = self._producer.send(topic, key=key, value=event.model_dump_json())
        future.add_errback(lambda exc: log.error("event %s on %s not delivered: %s", key, topic, exc))
        return future

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout=timeout)

    def close(self) -> None:
        self._producer.close()


def parse_event(topic: str, raw: bytes | None) -> BaseModel:
    """Decode and validate one record of a known topic.

    Raises:
        InvalidInput: unknown topic, not JSON, or not matching the topic's schema.
    """
    schema = EVENT_TYPES.get(topic)
    if schema is None:
        raise InvalidInput(f"no event schema for topic {topic!r}")
    try:
        return schema.model_validate_json(raw or b"")
    except ValidationError as exc:
        raise InvalidInput(f"record does not match {schema.__name__}: {exc.errors()[:3]}") from exc


Handler = Callable[[str, BaseModel], None]


class EventConsumer:
    """At-least-once consumer: offsets are committed only after the handler returned.

    A record the handler cannot parse or apply goes to the dead-letter topic with its reason,
    and the partition moves on.
    """

    def __init__(self, bootstrap: str, topics: list[str], group_id: str, handler: Handler,
                 on_dead_letter: Callable[[], None] | None = None) -> None:
        self.topics, self.handler, self.on_dead_letter = topics, handler, on_dead_letter
        self._consumer = KafkaConsumer(
            *topics, bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", client_id=group_id, max_poll_records=200,
        )
        self._dlq = KafkaProducer(bootstrap_servers=bootstrap, acks="all", value_serializer=lambda v: v.encode())

    def poll_once(self, timeout_ms: int = 500) -> int:
        """Handle one batch; returns the number of records handled (dead letters included)."""
        batches = self._consumer.poll(timeout_ms=timeout_ms)
        handled = 0
        for tp, records in batches.items():
            for rec in records:
                self._handle(rec)
                handled += 1
        if handled:
            self._dlq.flush()
            self._consumer.commit()
        return handled

    def _handle(self, rec: Any) -> None:
        try:
            self.handler(rec.topic, parse_event(rec.topic, rec.value))
        except InvalidInput as exc:
            self.dead_letter(rec, str(exc))

    def dead_letter(self, rec: Any, reason: str) -> None:
        key = rec.key.decode(errors="replace") if rec.key else None
        letter = DeadLetter(topic=rec.topic, partition=rec.partition, offset=rec.offset, key=key,
                            reason=reason, payload=(rec.value or b"").decode(errors="replace")[:100_000])
        log.warning("dead-lettered %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset, reason)
        self._dlq.send(DEAD_LETTER_TOPIC, letter.model_dump_json())
        if self.on_dead_letter is not None:
            self.on_dead_letter()

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set.

        A failing batch (broker or store unavailable) is not committed: the consumer rewinds to
        the last committed offsets and retries after a pause, so nothing is skipped.
        """
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - any failure: retry the uncommitted batch
                log.warning("consumer %s: %s; rewinding to the committed offsets and retrying", self.topics, exc)
                stop.wait(2.0)
                self._rewind()

    def _rewind(self) -> None:
        try:
            for tp in self._consumer.assignment():
                committed = self._consumer.committed(tp)
                if committed is None:
                    self._consumer.seek_to_beginning(tp)
                else:
                    self._consumer.seek(tp, committed)
        except KafkaError as exc:
            log.warning("could not rewind %s yet: %s", self.topics, exc)

    def close(self) -> None:
        self._consumer.close()
        self._dlq.close()


def topic_offsets(bootstrap: str, topic: str) -> int:
    """Messages currently retained in ``topic``: sum over partitions of end - beginning offsets."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return 0
        end, begin = consumer.end_offsets(tps), consumer.beginning_offsets(tps)
        return sum(end[tp] - begin[tp] for tp in tps)
    finally:
        consumer.close()


def read_topic(bootstrap: str, topic: str, timeout_ms: int = 3000) -> list[tuple[str | None, bytes]]:
    """Every retained record of ``topic`` as (key, value), read without a consumer group."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=timeout_ms)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        return [(r.key.decode() if r.key else None, r.value) for r in consumer]
    finally:
        consumer.close()


def dead_letters(bootstrap: str) -> list[DeadLetter]:
    return [DeadLetter.model_validate(json.loads(v)) for _, v in read_topic(bootstrap, DEAD_LETTER_TOPIC)]
