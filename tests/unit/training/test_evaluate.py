"""Classification metrics on known cases."""

import numpy as np
import pytest

from training.evaluate import classification_metrics


def test_metrics_on_a_known_confusion() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = classification_metrics(probs, np.array([0, 1, 1, 1]), 2)
    assert m["accuracy"] == 0.75
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_metrics_of_nothing_are_zero_not_nan() -> None:
    assert classification_metrics(np.zeros((0, 2)), np.zeros(0, dtype=int), 2)["accuracy"] == 0.0
