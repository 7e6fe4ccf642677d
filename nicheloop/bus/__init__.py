"""The only package that imports kafka-python: publishing, consuming, dead letters, counts."""

from nicheloop.bus.consumer import EventConsumer, Handler, parse_event
from nicheloop.bus.publisher import Publisher
from nicheloop.bus.topics import BrokerError, dead_letters, ensure_topics, read_topic, topic_offsets

__all__ = [
    "BrokerError",
    "EventConsumer",
    "Handler",
    "Publisher",
    "dead_letters",
    "ensure_topics",
    "parse_event",
    "read_topic",
    "topic_offsets",
]
