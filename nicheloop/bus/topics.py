"""Topics: create them, count and read what they retain, and the dead letters."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from nicheloop.contracts import ALL_TOPICS, DEAD_LETTER_TOPIC, DeadLetter

log = logging.getLogger(__name__)

BrokerError = KafkaError  # what callers outside the bus catch for "the broker failed"


def ensure_topics(bootstrap: str, partitions: int = 3, topics: Iterable[str] = ALL_TOPICS) -> None:
    """Create the topics if missing (replication factor 1 suits the local single-node broker)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="nicheloop-admin")
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics if t not in existing
        ]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


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
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=timeout_ms,
    )
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        return [(r.key.decode() if r.key else None, r.value) for r in consumer]
    finally:
        consumer.close()


def dead_letters(bootstrap: str) -> list[DeadLetter]:
    return [DeadLetter.model_validate(json.loads(v)) for _, v in read_topic(bootstrap, DEAD_LETTER_TOPIC)]
