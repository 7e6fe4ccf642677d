"""What sampling alone gives a calibrated model's ECE: the predicted mean and spread match a seeded
simulation of calibrated labels, and the binned form agrees with the one on confidences."""

from __future__ import annotations

import numpy as np
import pytest

from nicheloop.calibration import binned_ece_noise, ece_noise, expected_calibration_error


def _calibrated_eces(conf: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """ECE of a two-class model that is right with exactly its confidence, over ``draws`` label draws."""
    rng = np.random.default_rng(seed)
    probs = np.stack([conf, 1 - conf], axis=1)
    return np.array(
        [expected_calibration_error(probs, (rng.random(len(conf)) >= conf).astype(int)) for _ in range(draws)]
    )


@pytest.mark.parametrize("n", [100, 400])
def test_the_noise_matches_a_calibrated_models_ece(n: int) -> None:
    conf = np.random.default_rng(1).uniform(0.55, 0.99, n)
    bias, sd = ece_noise(conf)
    seen = _calibrated_eces(conf, 600, seed=n)
    assert seen.mean() == pytest.approx(bias, rel=0.15) and seen.std() == pytest.approx(sd, rel=0.3)


def test_the_binned_form_agrees_and_no_labels_say_nothing() -> None:
    conf = np.random.default_rng(2).uniform(0.5, 1.0, 250)
    which = np.minimum((conf * 15).astype(int), 14)
    variances = np.bincount(which, weights=conf * (1 - conf), minlength=15)
    assert binned_ece_noise(variances, len(conf)) == pytest.approx(ece_noise(conf))
    assert ece_noise(np.array([])) == (0.0, 0.0) == binned_ece_noise(np.zeros(15), 0)


def test_an_overconfident_models_spread_is_read_from_its_errors() -> None:
    """Right 75% of the time at 95% confidence: the spread from the confidences alone is too narrow
    (a gate would fail such a model on noise); read from the errors it covers the simulated one."""
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.93, 0.97, 40)
    probs = np.stack([conf, 1 - conf], axis=1)
    eces = np.array(
        [expected_calibration_error(probs, (rng.random(40) >= 0.75).astype(int)) for _ in range(600)]
    )
    right = rng.random(40) < 0.75
    _, narrow = ece_noise(conf)
    _, wide = ece_noise(conf, right)
    assert narrow < 0.5 * eces.std() and eces.std() <= wide < 2.0 * eces.std()
