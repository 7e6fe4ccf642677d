"""Consuming at least once: offsets committed after the handler, bad records dead-lettered."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from pydantic import BaseModel, ValidationError

from nicheloop.contracts import (
    DEAD_LETTER_TOPIC,
    DRIFT_TOPIC,
    FEEDBACK_TOPIC,
    PREDICTIONS_TOPIC,
    DeadLetter,
    DriftEvent,
    FeedbackEvent,
    PredictionEvent,
)
from nicheloop.errors import InvalidInput

log = logging.getLogger(__name__)

EVENT_TYPES: dict[str, type[BaseModel]] = {
    PREDICTIONS_TOPIC: PredictionEvent,
    FEEDBACK_TOPIC: FeedbackEvent,
    DRIFT_TOPIC: DriftEvent,
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
        raise InvalidInput(f"record does not match {schema.__name__}: {exc.errors()[:3]}") from exc


Handler = Callable[[str, BaseModel], None]


class EventConsumer:
    """At-least-once consumer: offsets are committed only after the handler returned.

    A record the handler cannot parse or apply goes to the dead-letter topic with its reason,
    and the partition moves on.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        group_id: str,
        handler: Handler,
        on_dead_letter: Callable[[], None] | None = None,
    ) -> None:
        self.topics, self.handler, self.on_dead_letter = topics, handler, on_dead_letter
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
        """Handle one batch; returns the number of records handled (dead letters included)."""
        batches = self._consumer.poll(timeout_ms=timeout_ms)
        handled = 0
        for records in batches.values():
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
