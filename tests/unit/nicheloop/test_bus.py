"""Events are parsed against their topic's schema, and refused when malformed."""

import json
from pathlib import Path

import pytest

from nicheloop.bus import parse_event
from nicheloop.contracts import FEEDBACK_TOPIC, PREDICTIONS_TOPIC, FeedbackEvent
from nicheloop.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[3]


def test_parse_event_accepts_valid_and_refuses_malformed() -> None:
    ev = FeedbackEvent(prediction_id="p", label="a")
    assert parse_event(FEEDBACK_TOPIC, ev.model_dump_json().encode()) == ev
    for raw in (b"not json", b"{}", json.dumps({**ev.model_dump(mode="json"), "extra": 1}).encode(), None):
        with pytest.raises(InvalidInput):
            parse_event(FEEDBACK_TOPIC, raw)
    with pytest.raises(InvalidInput, match="no event schema"):
        parse_event("other.topic", b"{}")
    with pytest.raises(InvalidInput, match="PredictionEvent"):
        parse_event(PREDICTIONS_TOPIC, ev.model_dump_json().encode())
