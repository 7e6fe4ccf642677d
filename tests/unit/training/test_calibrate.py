"""Temperature scaling and expected calibration error: recovery, bounds, known cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nicheloop.calibration import expected_calibration_error
from training.calibrate import fit_temperature, nll, softmax

CLASSES = ["crazing", "inclusion", "patches", "scratches"]


def _sampled(temperature: float, n: int = 4000, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / temperature): that temperature is the right one."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, k))
    p = softmax(logits, temperature)
    y = np.array([rng.choice(k, p=row) for row in p])
    return logits, y


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_temperature_scaling_recovers_the_true_temperature(true_t: float) -> None:
    logits, y = _sampled(true_t)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(true_t, rel=0.1)
    assert nll(logits, y, t) <= nll(logits, y, 1.0) + 1e-9
    assert expected_calibration_error(softmax(logits, t), y) < 0.03


def test_temperature_scaling_lowers_ece_of_an_overconfident_model() -> None:
    logits, y = _sampled(3.0)
    before = expected_calibration_error(softmax(logits), y)
    after = expected_calibration_error(softmax(logits, fit_temperature(logits, y)), y)
    assert before > 0.1 and after < before / 3


def test_ece_on_known_cases() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)
    assert expected_calibration_error(np.zeros((0, 2)), np.zeros(0, dtype=int)) == 0.0
    assert fit_temperature(np.zeros((1, 2)), np.zeros(1, dtype=int)) == 1.0


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 60), st.integers(2, 5), st.integers(0, 99))
def test_ece_is_bounded(n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs = softmax(rng.normal(0, 4, (n, k)))
    assert 0.0 <= expected_calibration_error(probs, rng.integers(0, k, n)) <= 1.0
