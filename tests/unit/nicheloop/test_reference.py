"""A drift reference keeps the class mix of all labels, not the chance mix of the held-out draw."""

from __future__ import annotations

import numpy as np

from nicheloop.reference import Reference
from training.data import Example, Snapshot, class_shares
from training.evaluate import drift_reference


def _reference(labels: list[int]) -> Reference:
    n = len(labels)
    rows = np.arange(n, dtype=np.float32)[:, None]
    return Reference(
        embeddings=np.hstack([rows, rows]),
        stats=rows.copy(),
        probs=np.full((n, 3), 1 / 3, np.float32),
        labels=np.array(labels),
        class_names=("a", "b", "c"),
        accuracy=0.9,
        early=rows.copy(),
    )


def test_the_reference_is_cut_to_the_class_mix_of_every_label() -> None:
    drawn = _reference([0] * 20 + [1] * 8 + [2] * 12)  # a held-out draw of a balanced label set
    even = drawn.in_proportion(np.array([1 / 3, 1 / 3, 1 / 3]))
    assert np.bincount(even.labels).tolist() == [8, 8, 8]
    kept = even.embeddings[:, 0].astype(int)
    assert (even.labels == drawn.labels[kept]).all() and (even.early[:, 0] == kept).all()  # rows stay whole
    assert even.accuracy == 0.9 and even.class_names == drawn.class_names
    assert np.array_equal(drawn.in_proportion(np.array([0.5, 0.2, 0.3])).labels, drawn.labels)  # as it was
    lacking = _reference([0] * 6 + [1] * 3).in_proportion(np.array([1 / 3, 1 / 3, 1 / 3]))
    assert np.bincount(lacking.labels).tolist() == [3, 3]  # a class the draw lacks is left out


def test_class_shares_count_both_sides_of_the_snapshot() -> None:
    ex = lambda label: Example("0" * 64, label)  # noqa: E731
    snap = Snapshot(train=(ex("a"), ex("a"), ex("b")), holdout=(ex("c"),))
    assert class_shares(snap, ["a", "b", "c", "d"]).tolist() == [0.5, 0.25, 0.25, 0.0]


def test_a_cut_that_would_silence_the_monitors_keeps_the_whole_set() -> None:
    drawn = _reference([0] * 20 + [1] * 2 + [2] * 8)  # balanced, it would be 6 rows: under MIN_ROWS
    kept = drawn.in_proportion(np.array([1 / 3, 1 / 3, 1 / 3]))
    assert np.array_equal(kept.labels, drawn.labels)
    assert len(_reference([0] * 40 + [1] * 8 + [2] * 12).in_proportion(np.full(3, 1 / 3)).labels) == 24


def test_a_version_trained_on_an_alarm_is_watched_against_the_world_that_raised_it() -> None:
    """The held-out rows of the alarm's traffic make the reference when there are enough; too few
    would leave the monitors blind, so then every row stays."""
    labels = [0, 1, 2] * 20  # 60 held-out rows, balanced
    snap = Snapshot(train=(), holdout=tuple(Example(f"{i:064d}", "abc"[c]) for i, c in enumerate(labels)))
    drawn = _reference(labels)
    new_world = frozenset(e.image_sha256 for e in snap.holdout[30:])  # the last 30 were served since
    watched = drift_reference(drawn, snap, ["a", "b", "c"], world=new_world)
    assert watched.embeddings[:, 0].astype(int).tolist() == list(range(30, 60))
    assert np.bincount(watched.labels).tolist() == [10, 10, 10] and watched.accuracy == 0.9
    few = frozenset(e.image_sha256 for e in snap.holdout[50:])  # 10: under MIN_ROWS
    assert len(drift_reference(drawn, snap, ["a", "b", "c"], world=few).labels) == 60
    assert len(drift_reference(drawn, snap, ["a", "b", "c"]).labels) == 60  # no alarm: every row
