"""The live gates' evidence, read from the SQL store: each arm's calls as the gateways flushed them,
and each arm's predictions with their delayed labels as the joiner stored them, over the current
step's window (a new step starts its evidence afresh)."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np

from nicheloop.calibration import ece_noise, expected_calibration_error
from nicheloop.latency import quantile_ms
from nicheloop.rollouts import ArmCalls, Rollout, Rollouts, Scored
from rollout.gates import Arm, Inputs, Live, Paired
from rollout.plan import RolloutPlan

P99 = 0.99


class StoreEvidence:
    """:class:`rollout.controller.EvidenceSource` over the store. ``seed`` fixes which labels the
    larger arm's ECE is measured on (the two arms' ECE are compared at equal label counts)."""

    def __init__(self, rollouts: Rollouts, *, seed: int = 0) -> None:
        self.rollouts, self.seed = rollouts, seed

    def live(self, rollout: Rollout, plan: RolloutPlan, now: float) -> Live:
        since = rollout.entered_at
        calls = self.rollouts.arm_calls(rollout.id or 0, since=since)
        scored = self.rollouts.scored(rollout, since=since)
        shadow = rollout.state == "shadow"
        cand_arm = "shadow" if shadow else "candidate"
        cand = [x for x in scored[cand_arm] if x.truth is not None]
        champ = [x for x in scored["champion"] if x.truth is not None]
        n = min(len(cand), len(champ))
        return Live(
            champion=_arm(calls.get("champion"), scored["champion"], champ, *_ece(champ, n, self.seed)),
            candidate=_arm(calls.get(cand_arm), scored[cand_arm], cand, *_ece(cand, n, self.seed)),
            paired=_paired(scored["shadow"]) if shadow else Paired(),
            inputs=Inputs() if shadow else _inputs(scored["candidate"], scored["champion"]),
        )


def _arm(
    calls: ArmCalls | None,
    predictions: list[Scored],
    labeled: list[Scored],
    ece: float | None,
    bias: float,
    sd: float,
) -> Arm:
    c = calls or ArmCalls()
    return Arm(
        calls=c.calls,
        errors=c.errors,
        p99_ms=quantile_ms(c.latency, P99),
        latency=dict(c.latency),
        labels=len(labeled),
        correct=sum(x.predicted == x.truth for x in labeled),
        ece=ece,
        ece_bias=bias,
        ece_sd=sd,
        predicted=dict(Counter(x.predicted for x in predictions)),
    )


def _ece(labeled: list[Scored], n: int, seed: int) -> tuple[float | None, float, float]:
    """ECE on ``n`` of the labeled predictions (a seeded draw), with what sampling alone would give
    a calibrated model there and the spread of the ECE read (:func:`nicheloop.calibration.ece_noise`);
    None without labels. Labels
    outside the model's classes count as wrong at the model's confidence."""
    if n == 0:
        return None, 0.0, 0.0
    drawn = random.Random(seed).sample(labeled, n)
    probs = np.asarray([x.probs for x in drawn], dtype=np.float64)
    y = np.asarray([x.class_names.index(x.truth) if x.truth in x.class_names else -1 for x in drawn])
    right = probs.argmax(axis=1) == y
    return expected_calibration_error(probs, y), *ece_noise(probs.max(axis=1), right)


def _inputs(candidate: list[Scored], champion: list[Scored]) -> Inputs:
    """The two-sample Kolmogorov-Smirnov distance of each image statistic between the images the
    arms answered (predictions stored without statistics are left out)."""
    cand = [x.stats for x in candidate if x.stats]
    champ = [x.stats for x in champion if x.stats]
    distances: dict[str, float] = {}
    if cand and champ:
        for name in sorted(set(cand[0]) & set(champ[0])):
            a = np.sort([x[name] for x in cand if name in x])
            b = np.sort([x[name] for x in champ if name in x])
            if not len(a) or not len(b):
                continue
            grid = np.concatenate([a, b])
            cdf_a = np.searchsorted(a, grid, side="right") / len(a)
            cdf_b = np.searchsorted(b, grid, side="right") / len(b)
            distances[name] = float(np.abs(cdf_a - cdf_b).max())
    return Inputs(len(cand), len(champ), distances)


def _paired(shadow: list[Scored]) -> Paired:
    labeled = [x for x in shadow if x.truth is not None]
    return Paired(
        pairs=len(shadow),
        agree=sum(x.predicted == x.twin for x in shadow),
        labeled=len(labeled),
        candidate_only=sum(x.predicted == x.truth and x.twin != x.truth for x in labeled),
        champion_only=sum(x.twin == x.truth and x.predicted != x.truth for x in labeled),
    )
