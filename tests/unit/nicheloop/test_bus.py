"""Events are parsed against their topic's schema, and refused when malformed."""

import json
from pathlib import Path

import pytest

from nicheloop.bus import parse_event
from nicheloop.contracts import FEEDBACK_TOPIC, PREDICTIONS_TOPIC, FeedbackEvent, PredictionEvent
from nicheloop.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[3]
PREDICTION = {  # a valid prediction event's fields
    "prediction_id": "p",
    "model_name": "m",
    "model_version": "1",
    "label": "a",
    "probs": [1.0, 0.0],
    "class_names": ["a", "b"],
    "uncertainty": 0.0,
    "embedding": [0.5, 0.25],
    "image_sha256": "0" * 64,
}


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


def test_prediction_events_refuse_non_finite_features_and_accept_older_ones() -> None:
    fields = PREDICTION
    older = PredictionEvent(**fields)  # a gateway from before early features: accepted, empty
    assert older.early_embedding == []
    good = PredictionEvent(**fields, early_embedding=[0.1, 0.2, 0.3])
    assert parse_event(PREDICTIONS_TOPIC, good.model_dump_json().encode()) == good
    raw = json.dumps({**good.model_dump(mode="json"), "early_embedding": [0.1, "NaN"]}).encode()
    with pytest.raises(InvalidInput, match="early_embedding"):
        parse_event(PREDICTIONS_TOPIC, raw)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"probs": [1.0]}, "1 probabilities for 2 classes"),
        ({"class_names": ["a", "a"]}, "distinct class"),
        ({"label": "rust"}, "not one of class_names"),
        ({"label": "a\x00"}, "NUL"),
        ({"model_version": "../../etc"}, "model_version"),  # it names a folder of drift reports
        ({"prediction_id": "p" * 129}, "prediction_id"),  # longer than the store keeps
        ({"class_names": []}, "class_names"),
    ],
)
def test_prediction_events_that_the_store_or_the_monitors_could_not_take_are_refused(
    change: dict[str, object], words: str
) -> None:
    fields = PREDICTION
    with pytest.raises(InvalidInput, match=words):
        parse_event(PREDICTIONS_TOPIC, json.dumps({**fields, **change}).encode())
    feedback = {"prediction_id": "p", "label": "a\x00"}
    with pytest.raises(InvalidInput, match="NUL"):
        parse_event(FEEDBACK_TOPIC, json.dumps(feedback).encode())
