"""The rollout's statistics: anytime-valid accuracy intervals keep their level however often they are
read, and the non-inferiority verdict has power against a 10-point drop (seeded simulations)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.stats import accuracy_interval, log_evidence, mcnemar, non_inferior

ALPHA = 0.05


def _slack(streams: int) -> float:
    return 3 * math.sqrt(ALPHA * (1 - ALPHA) / streams)  # three standard errors of a rate near alpha


@settings(max_examples=8, deadline=None)
@given(p=st.floats(0.5, 0.99), seed=st.integers(0, 2**16))
def test_reading_the_evidence_after_every_label_keeps_the_level(p: float, seed: int) -> None:
    streams, labels = 1000, 400
    right = np.random.default_rng(seed).random((streams, labels)) < p
    ever = (log_evidence(p, np.cumsum(right, 1), np.arange(1, labels + 1)) >= math.log(1 / ALPHA)).any(1)
    assert ever.mean() <= ALPHA + _slack(streams)


@pytest.mark.parametrize(("right", "labels"), [(0, 5), (5, 5), (170, 200), (1900, 2000)])
def test_the_interval_holds_the_observed_accuracy_and_stays_in_range(right: int, labels: int) -> None:
    low, high = accuracy_interval(right, labels, ALPHA)
    assert 0 <= low <= right / labels <= high <= 1
    assert (low == 0) == (right == 0) and (high == 1) == (right == labels)


def test_more_labels_narrow_the_interval_and_none_say_nothing() -> None:
    assert accuracy_interval(0, 0, ALPHA) == (0.0, 1.0)
    widths = [np.subtract(*accuracy_interval(9 * n // 10, n, ALPHA)[::-1]) for n in (50, 200, 800, 3200)]
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.05


@pytest.mark.parametrize("bad", [(3, 2, ALPHA), (-1, 2, ALPHA), (1, 2, 0.0), (1, 2, 1.0)])
def test_counts_or_levels_out_of_range_are_refused(bad: tuple[int, int, float]) -> None:
    with pytest.raises(ValueError, match="need 0 <= successes <= trials"):
        accuracy_interval(*bad)


def test_a_candidate_ten_points_worse_fails() -> None:
    rng = np.random.default_rng(2)
    verdicts = [
        non_inferior(
            (int((rng.random(600) < 0.85).sum()), 600), (1900, 2000), margin=0.02, alpha=ALPHA
        ).verdict
        for _ in range(200)
    ]
    assert verdicts.count("fail") / 200 >= 0.9 and "pass" not in verdicts


def test_a_candidate_worse_than_the_margin_rarely_passes_and_an_equal_one_rarely_fails() -> None:
    rng = np.random.default_rng(3)
    champion = (int((rng.random(3000) < 0.95).sum()), 3000)

    def verdicts(p: float) -> list[str]:
        return [
            non_inferior(
                (int((rng.random(1500) < p).sum()), 1500), champion, margin=0.05, alpha=ALPHA
            ).verdict
            for _ in range(300)
        ]

    worse, equal = verdicts(0.89), verdicts(0.95)  # 6 points worse against a 5-point margin; equal
    assert worse.count("pass") / 300 <= ALPHA + _slack(300)
    assert equal.count("fail") / 300 <= ALPHA + _slack(300) and equal.count("pass") / 300 >= 0.5


def test_too_few_labels_hold_with_a_reason_and_the_figures() -> None:
    result = non_inferior((20, 20), (1900, 2000), margin=0.02, alpha=ALPHA, min_labels=100)
    assert result.verdict == "hold" and "20 candidate and 2000 champion labels" in result.reason
    assert result.figures()["candidate_labels"] == 20 and result.figures()["champion_accuracy_low"] > 0.9
    with pytest.raises(ValueError, match="margin"):
        non_inferior((1, 2), (1, 2), margin=-0.1, alpha=ALPHA)


def test_mcnemar_weighs_only_the_disagreements() -> None:
    assert mcnemar(0, 0) == 1.0
    assert mcnemar(20, 2) == pytest.approx(mcnemar(2, 20))
    assert mcnemar(20, 2) < 0.001
    assert mcnemar(6, 5) > 0.5
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar(-1, 3)
