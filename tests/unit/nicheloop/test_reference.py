"""A drift reference keeps the class mix of all labels, not the chance mix of the held-out draw."""

from __future__ import annotations

import numpy as np

from nicheloop.reference import Reference
from training.data import Example, Snapshot, class_shares


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
