"""Routing by a stable hash: shares are met, cohorts only grow with the share, replicas agree."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from services.routing import point, route

KEYS = [f"device-{i}" for i in range(20_000)]


def test_the_candidate_answers_its_share_and_shadow_mirrors_its_own() -> None:
    routes = [route(k, rollout_id=1, share=0.05, mirror=0.2) for k in KEYS]
    answered = sum(r.answer == "candidate" for r in routes) / len(KEYS)
    mirrored = sum(r.mirror for r in routes) / sum(r.answer == "champion" for r in routes)
    assert abs(answered - 0.05) < 0.006 and abs(mirrored - 0.2) < 0.012
    assert not any(r.mirror for r in routes if r.answer == "candidate")


@settings(max_examples=50, deadline=None)
@given(key=st.text(max_size=64), low=st.floats(0, 1), high=st.floats(0, 1), rollout=st.integers(1, 10**6))
def test_a_key_in_the_candidates_cohort_stays_in_it_as_the_share_grows(
    key: str, low: float, high: float, rollout: int
) -> None:
    low, high = sorted((low, high))
    if route(key, rollout_id=rollout, share=low, mirror=0).answer == "candidate":
        assert route(key, rollout_id=rollout, share=high, mirror=0).answer == "candidate"


def test_every_process_draws_the_same_point_for_a_key() -> None:
    # Python's hash() is salted per process; two gateway replicas must agree on every key
    code = "from services.routing import point; print(repr(point('device-7', 'answer:3')))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "random"},
    )
    assert float(out.stdout) == point("device-7", "answer:3")


def test_each_rollout_draws_its_own_cohort() -> None:
    first = {k for k in KEYS if route(k, rollout_id=1, share=0.1, mirror=0).answer == "candidate"}
    second = {k for k in KEYS if route(k, rollout_id=2, share=0.1, mirror=0).answer == "candidate"}
    assert len(first & second) < 0.2 * len(first)  # about a tenth overlap, as for independent draws
