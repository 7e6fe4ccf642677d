"""Consuming at least once: offsets committed after the handler, bad records dead-lettered."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition
from pydantic import BaseModel, ValidationError

from nicheloop.contracts import (
    DEAD_LETTER_TOPIC,
    DECISIONS_TOPIC,
    DRIFT_TOPIC,
    FEEDBACK_TOPIC,
    PREDICTIONS_TOPIC,
    DeadLetter,
    DriftEvent,
    FeedbackEvent,
    PolicyDecided,
    PredictionEvent,
)
from nicheloop.errors import InvalidInput

log = logging.getLogger(__name__)

EVENT_TYPES: dict[str, type[BaseModel]] = {
    PREDICTIONS_TOPIC: PredictionEvent,
    FEEDBACK_TOPIC: FeedbackEvent,
    DRIFT_TOPIC: DriftEvent,
    DECISIONS_TOPIC: PolicyDecided,
}


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
        problems = exc.errors(include_url=False, include_input=False)[:3]  # the input may be huge
        raise InvalidInput(f"record does not match {schema.__name__}: {problems}") from exc


Handler = Callable[[str, BaseModel], None]


class EventConsumer:
    """At-least-once consumer: offsets are committed only after the handler returned.

    A record the handler cannot parse or apply goes to the dead-letter topic with its reason,
    and the partition moves on: at once when it is invalid, after ``max_attempts`` when the
    handler keeps failing on it. A ``transient`` failure (the broker or the store away) is
    retried without end: the record is fine, and dead-lettering it would lose it.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        group_id: str,
        handler: Handler,
        on_dead_letter: Callable[[], None] | None = None,
        *,
        transient: tuple[type[BaseException], ...] = (),
        max_attempts: int = 5,
    ) -> None:
        self.topics, self.handler, self.on_dead_letter = topics, handler, on_dead_letter
        self.transient = (KafkaError, OSError, *transient)
        self.max_attempts = max_attempts
        self._failures: dict[tuple[str, int, int], int] = {}  # (topic, partition, offset) -> failed tries
        self._consumer = KafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=group_id,
            max_poll_records=200,
        )
        self._dlq = KafkaProducer(
            bootstrap_servers=bootstrap, acks="all", value_serializer=lambda v: v.encode()
        )

    def poll_once(self, timeout_ms: int = 500) -> int:
        """Handle one batch; returns the number of records handled (dead letters included).

        When a record fails, the records before it are committed first: a retry starts at the
        failing record and never feeds the drift windows a record twice.
        """
        batches = self._consumer.poll(timeout_ms=timeout_ms)
        done: dict[TopicPartition, int] = {}
        try:
            for tp, records in batches.items():
                for rec in records:
                    self._handle(rec)
                    done[tp] = rec.offset + 1
        finally:
            if done:
                self._dlq.flush()
                self._consumer.commit({tp: OffsetAndMetadata(end, "", -1) for tp, end in done.items()})
        return sum(done[tp] - records[0].offset for tp, records in batches.items() if tp in done)

    def _handle(self, rec: Any) -> None:
        where = (rec.topic, rec.partition, rec.offset)
        try:
            self.handler(rec.topic, parse_event(rec.topic, rec.value))
        except InvalidInput as exc:
            self.dead_letter(rec, str(exc))
        except self.transient:
            raise  # the record is fine; the stores behind the handler are not (yet)
        except Exception as exc:
            tries = self._failures.pop(where, 0) + 1
            if tries < self.max_attempts:
                self._failures[where] = tries
                raise
            self.dead_letter(rec, f"the handler failed {tries} times: {type(exc).__name__}: {exc}"[:2000])
        else:
            self._failures.pop(where, None)

    def dead_letter(self, rec: Any, reason: str) -> None:
        key = rec.key.decode(errors="replace") if rec.key else None
        letter = DeadLetter(
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            key=key,
            reason=reason,
            payload=(rec.value or b"").decode(errors="replace")[:100_000],
        )
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
                log.warning(
                    "consumer %s: %s; rewinding to the committed offsets and retrying", self.topics, exc
                )
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
