"""The live figures the rollout's unit tests share: a champion with 95 % of the traffic, and a
candidate as good as it (same error rate, latency, accuracy, calibration and class shares)."""

from __future__ import annotations

from rollout.gates import Arm

SHARES = {"crack": 0.5, "scratch": 0.3, "pit": 0.2}  # the classes both models predict, and how often
CHAMPION = Arm(
    calls=40000,
    errors=80,
    p99_ms=80.0,
    labels=20000,
    correct=19000,
    ece=0.03,
    predicted={k: int(v * 40000) for k, v in SHARES.items()},
)
GOOD = Arm(
    calls=4000,
    errors=8,
    p99_ms=80.0,
    labels=2000,
    correct=1900,
    ece=0.03,
    predicted={"crack": 1980, "scratch": 1230, "pit": 790},
)  # the accuracy interval needs ~2000 labels at 95 %
