"""Snapshots: stratified validation splits, class-balanced replay, manifests."""

from __future__ import annotations

import json

import pytest

from nicheloop.errors import InvalidInput
from tests.unit.training.examples import labeled
from training.data import Snapshot, parse_manifest, replay_buffer, split_validation

CLASSES = ["crazing", "inclusion", "patches", "scratches"]


def test_validation_split_is_stratified_and_deterministic() -> None:
    ex = labeled({"a": 20, "b": 10, "c": 2})
    train, val = split_validation(ex, 0.2, seed=0)
    assert sorted(train + val, key=lambda e: e.image_sha256) == sorted(ex, key=lambda e: e.image_sha256)
    assert [sum(e.label == c for e in val) for c in "abc"] == [4, 2, 0]
    assert split_validation(list(reversed(ex)), 0.2, seed=0)[1] == val
    assert split_validation(ex, 0.2, seed=1)[1] != val


def test_replay_buffer_is_class_balanced_and_stable() -> None:
    old = labeled({"a": 50, "b": 5})
    buf = replay_buffer(old, per_class=10, seed=0)
    assert sum(e.label == "a" for e in buf) == 10 and sum(e.label == "b" for e in buf) == 5
    assert replay_buffer(list(reversed(old)), 10, 0) == buf


def test_manifest_round_trip_and_refusal() -> None:
    snap = Snapshot(tuple(labeled({"a": 3})), tuple(labeled({"b": 2})))
    assert parse_manifest(snap.manifest()) == snap
    for bad in ("{}", "not json", json.dumps({"train": [[1]], "holdout": []})):
        with pytest.raises(InvalidInput, match="manifest"):
            parse_manifest(bad)


def test_labels_outside_the_models_classes_are_left_out_and_counted() -> None:
    snap = Snapshot(tuple(labeled({"a": 3, "rust": 2})), tuple(labeled({"b": 2, "<script>": 1})))
    kept, left_out = snap.within(["a", "b"])
    assert {e.label for e in kept.train} == {"a"} and {e.label for e in kept.holdout} == {"b"}
    assert left_out == {"rust": 2, "<script>": 1}
    assert snap.within(["a", "b", "rust", "<script>"]) == (snap, {})
