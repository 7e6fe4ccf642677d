"""Gated rollouts: do the gates promote good candidates and stop bad ones, how fast, and how much
traffic does a bad one see first?

Scenarios, each a candidate against a calibrated champion that is right 90 % of the time:
``equal``; ``better_5`` (5 points more accurate); ``worse_10`` (10 points less); ``errors_5pct``
(5 % of its calls fail); ``p99_plus_300ms`` (its slowest 2 % take 300 ms more); ``miscalibrated``
(as accurate, but 0.1 more confident than it is right).

Simulated streams: the decision code the controller runs every tick (``rollout.gates.evaluate`` on
the phase's gates, then ``rollout.machine.decide``) on a fake clock with the default plan
(``rollout/plan.py``), over ``--seeds`` seeded streams per scenario. Each tick brings Poisson
traffic at ``--rps``; the candidate answers its canary share and sees its mirrored share in shadow;
a ``--labeled`` share of predictions gets its true label ``--label-delay-s`` later; latencies go
into the same log-spaced histograms the gateways keep (``nicheloop.latency``); on shadowed images
the two models' outcomes are correlated (both right on easy images). The evidence is the step's
window, as ``rollout.evidence`` reads it from the store.

The real pass (``benchmarks/_rollout_real.py``; ``--no-real`` skips it): each scenario once through
the real stack, its gateway and deployments and the controller process, on a short plan with the
default gates; and the champion's p99 with and without requests mirrored in shadow (at the default
share and at all of them). Shadow calls run at idle priority and go untimed by default
(``Settings.shadow_priority``), here as on the stack: latency is judged from the first canary step.

The last line is one JSON object: per scenario the final states, ticks and candidate labels until
the decision (medians), and the issue's figures: ``bad_ever_champion`` (seeds where a bad candidate
was promoted), ``false_rollback_rate`` (equal or better candidates rolled back),
``max_candidate_share_seen_by_bad``, ``promoted_rate``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import statistics
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from nicheloop.calibration import binned_ece_noise
from nicheloop.latency import BASE_MS, GROWTH, TOP, quantile_ms
from nicheloop.registry import VersionInfo
from nicheloop.rollouts import Rollout
from nicheloop.settings import Settings
from rollout.gates import Arm, Evidence, Inputs, Live, Paired, evaluate
from rollout.machine import GATED, decide, start
from rollout.plan import RolloutPlan

BINS = 15  # as nicheloop.calibration
ENDED = ("baked", "rolled_back", "hold", "aborted")
BAD = ("worse_10", "errors_5pct", "p99_plus_300ms", "miscalibrated")
GOOD = ("equal", "better_5")


@dataclass(frozen=True)
class Scenario:
    name: str
    accuracy_delta: float = 0.0
    error_rate: float = 0.001
    tail_ms: float = 0.0  # added to the slowest 2 % of calls
    overconfidence: float = 0.0


SCENARIOS = [
    Scenario("equal"),
    Scenario("better_5", accuracy_delta=0.05),
    Scenario("worse_10", accuracy_delta=-0.10),
    Scenario("errors_5pct", error_rate=0.05),
    Scenario("p99_plus_300ms", tail_ms=300.0),
    Scenario("miscalibrated", overconfidence=0.10),
]
CHAMPION_ACCURACY, CHAMPION_ERRORS = 0.90, 0.001
CLASSES = ("crack", "inclusion", "patch", "scratch")  # what the models say, evenly in every scenario
CONCENTRATION = 6.0  # of the Beta the per-image confidence is drawn from
INDEPENDENT = 0.1  # share of shadowed images on which the two models' luck is independent


class Running:
    """Prefix sums of a per-tick quantity, so any window's total costs one subtraction."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.prefix = [np.zeros(shape)]

    def add(self, x: np.ndarray | float) -> None:
        self.prefix.append(self.prefix[-1] + x)

    def window(self, start: int, end: int | None = None) -> np.ndarray:
        """The total over ticks ``start`` up to ``end`` (exclusive; default: all so far)."""
        end = len(self.prefix) - 1 if end is None else end
        return self.prefix[end] - self.prefix[start] if end > start else np.zeros_like(self.prefix[0])


@dataclass
class ArmWindow:
    """One arm's evidence by tick: calls, errors, latency histogram, and labeled outcomes by the
    tick their label arrives (per bin: count, correct, confidence, confidence * (1 - confidence))."""

    calls: Running = field(default_factory=Running)
    errors: Running = field(default_factory=Running)
    latency: Running = field(default_factory=lambda: Running((TOP + 1,)))
    predicted: Running = field(default_factory=lambda: Running((len(CLASSES),)))
    labels: Running = field(default_factory=lambda: Running((4, BINS)))


def _zeros() -> np.ndarray:
    return np.zeros((4, BINS))


def _binned(conf: np.ndarray, correct: np.ndarray) -> np.ndarray:
    which = np.minimum((conf * BINS).astype(int), BINS - 1)
    out = _zeros()
    np.add.at(out[0], which, 1.0)
    np.add.at(out[1], which, correct)
    np.add.at(out[2], which, conf)
    np.add.at(out[3], which, conf * (1 - conf))
    return out


def _ece(binned: np.ndarray) -> float | None:
    n = binned[0].sum()
    return None if n == 0 else float(np.abs(binned[1] - binned[2]).sum() / n)


class Stream:
    """One seeded stream of one scenario, advanced a tick at a time."""

    def __init__(
        self, sc: Scenario, plan: RolloutPlan, *, seed: int, rps: float, labeled: float, delay_s: float
    ):
        self.sc, self.plan, self.rng = sc, plan, np.random.default_rng(seed)
        self.rps, self.labeled = rps, labeled
        self.delay = max(1, math.ceil(delay_s / plan.interval_s))
        self.arms = {"champion": ArmWindow(), "candidate": ArmWindow(), "shadow": ArmWindow()}
        self.pairs = Running((5,))  # pairs, agree, labeled, candidate only, champion only

    def _outcomes(
        self, n: int, delta: float, overconfidence: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Confidence reported, whether right, and the uniform draw that decided it."""
        mean = CHAMPION_ACCURACY + delta
        conf = self.rng.beta(mean * CONCENTRATION, (1 - mean) * CONCENTRATION, n)
        u = self.rng.random(n)
        return np.clip(conf + overconfidence, 0.0, 0.999), u < conf, u

    def _latency(self, n: int, tail_ms: float) -> np.ndarray:
        ms = self.rng.lognormal(math.log(40.0), 0.35, n)
        if tail_ms:
            ms = ms + tail_ms * (self.rng.random(n) < 0.02)
        # nicheloop.latency.bucket, vectorised
        k = np.ceil(np.log(np.maximum(ms, BASE_MS) / BASE_MS) / math.log(GROWTH) - 1e-9)
        return np.bincount(np.clip(k, 0, TOP).astype(int), minlength=TOP + 1).astype(float)

    def _said(self, n: int) -> np.ndarray:
        """How many of ``n`` predictions named each class (a wrong answer names another class at
        random, so the shares stay even whatever the accuracy)."""
        return self.rng.multinomial(n, [1 / len(CLASSES)] * len(CLASSES)).astype(float)

    def tick(self, r: Rollout) -> None:
        """One interval of traffic for rollout ``r`` as it stands."""
        n = int(self.rng.poisson(self.rps * self.plan.interval_s))
        n_cand = int(self.rng.binomial(n, r.share)) if r.state == "canary" else 0
        n_champ = n - n_cand
        n_shadow = int(self.rng.binomial(n_champ, r.mirror)) if r.state == "shadow" else 0
        sc = self.sc
        for arm, calls, err, tail, delta, over in (
            ("champion", n_champ, CHAMPION_ERRORS, 0.0, 0.0, 0.0),
            ("candidate", n_cand, sc.error_rate, sc.tail_ms, sc.accuracy_delta, sc.overconfidence),
        ):
            w = self.arms[arm]
            w.calls.add(calls)
            w.errors.add(int(self.rng.binomial(calls, err)))
            w.latency.add(self._latency(calls, tail))
            w.predicted.add(self._said(calls))
            conf, right, _ = self._outcomes(calls, delta, over)
            keep = self.rng.random(calls) < self.labeled
            w.labels.add(_binned(conf[keep], right[keep]))
        self._shadow(n_shadow)

    def _shadow(self, n: int) -> None:
        sc, w = self.sc, self.arms["shadow"]
        w.calls.add(n)
        w.errors.add(int(self.rng.binomial(n, sc.error_rate)))
        if SHADOW_TIMED:  # by default shadow calls run at idle priority and go untimed (services/predict.py)
            w.latency.add(self._latency(n, sc.tail_ms))
        w.predicted.add(self._said(n))
        champ_conf, champ_right, u = self._outcomes(n, 0.0, 0.0)
        # the same images are as hard for both: the candidate's confidence follows the champion's
        conf = np.clip(champ_conf + sc.accuracy_delta + self.rng.normal(0, 0.03, n), 0.0, 0.999)
        own_luck = np.where(self.rng.random(n) < INDEPENDENT, self.rng.random(n), u)
        cand_right = own_luck < conf
        both_wrong_agree = self.rng.random(n) < 0.5
        agree = (champ_right & cand_right) | (~champ_right & ~cand_right & both_wrong_agree)
        keep = self.rng.random(n) < self.labeled
        w.labels.add(_binned(np.clip(conf + sc.overconfidence, 0, 0.999)[keep], cand_right[keep]))
        self.pairs.add(
            np.array([n, agree.sum(), keep.sum(), (keep & cand_right & ~champ_right).sum(),
                      (keep & champ_right & ~cand_right).sum()], dtype=float)
        )  # fmt: skip

    def live(self, r: Rollout, since: int, now: int) -> Live:
        """The window [since, now] as the evidence source reads it: calls at once, labels late."""
        arrived = now - self.delay + 1  # ticks whose labels have come in

        def arm(name: str, other: np.ndarray | None = None) -> tuple[Arm, np.ndarray]:
            w = self.arms[name]
            calls, errors = int(w.calls.window(since)), int(w.errors.window(since))
            hist = w.latency.window(since)
            labels = w.labels.window(since, arrived)
            timed = {k: int(v) for k, v in enumerate(hist) if v}
            p99 = quantile_ms(timed, 0.99)
            said = dict(zip(CLASSES, (int(x) for x in w.predicted.window(since)), strict=True))
            labeled, right = int(labels[0].sum()), int(round(labels[1].sum()))
            return Arm(calls, errors, p99, labeled, right, None, predicted=said, latency=timed), labels

        cand_name = "shadow" if r.state == "shadow" else "candidate"
        cand, cand_labels = arm(cand_name)
        champ, champ_labels = arm("champion")
        n = min(cand.labels, champ.labels)
        noise = ("ece", "ece_bias", "ece_sd")
        cand = dataclasses.replace(cand, **dict(zip(noise, _at(cand_labels, n, self.rng), strict=True)))
        champ = dataclasses.replace(champ, **dict(zip(noise, _at(champ_labels, n, self.rng), strict=True)))
        paired = Paired()
        if r.state == "shadow":
            p, late = self.pairs.window(since), self.pairs.window(since, arrived)
            paired = Paired(int(p[0]), int(p[1]), int(late[2]), int(late[3]), int(late[4]))
        # both cohorts send the same kind of images here: the input gate's level and power are the
        # unit tests' (tests/unit/rollout/test_live_gates.py)
        inputs = Inputs(cand.calls, champ.calls) if r.state == "canary" else Inputs()
        return Live(champ, cand, paired, inputs)


def _at(binned: np.ndarray, n: int, rng: np.random.Generator) -> tuple[float | None, float, float]:
    """ECE on a random draw of ``n`` of the window's labels (as the evidence source measures the
    larger arm at the smaller one's count; each bin thinned hypergeometrically), with the sampling
    noise :func:`nicheloop.calibration.ece_noise` gives for the drawn confidences and answers."""
    total = int(binned[0].sum())
    if n == 0 or total == 0:
        return None, 0.0, 0.0
    if n < total:
        counts = rng.multivariate_hypergeometric(binned[0].astype(np.int64), n)
        kept = np.divide(counts, binned[0], out=np.zeros(BINS), where=binned[0] > 0)
        right = np.array([rng.hypergeometric(int(c), int(t - c), int(k)) if k else 0
                          for c, t, k in zip(np.round(binned[1]), binned[0], counts)])  # fmt: skip
        binned = np.stack([counts.astype(float), right.astype(float), binned[2] * kept, binned[3] * kept])
    return (_ece(binned), *binned_ece_noise(binned[3], n, counts=binned[0], right=binned[1]))


VERSION = VersionInfo("m", "1", "run", {}, [])
SHADOW_TIMED = Settings.model_fields["shadow_priority"].default == "normal"


def run_stream(
    sc: Scenario, plan: RolloutPlan, seed: int, args: argparse.Namespace
) -> dict[str, float | str]:
    """One rollout from shadow to its end (or the horizon) under the controller's decision code."""
    stream = Stream(sc, plan, seed=seed, rps=args.rps, labeled=args.labeled, delay_s=args.label_delay_s)
    r, since, max_share = start("2", "1", plan, 0.0), 0, 0.0
    horizon = int(args.horizon_h * 3600 / plan.interval_s)
    labels_at_decision = 0
    for t in range(horizon):
        stream.tick(r)
        max_share = max(max_share, r.share)
        now = (t + 1) * plan.interval_s
        results = []
        if r.state in GATED:
            live = stream.live(r, since, t)
            labels_at_decision = live.candidate.labels + live.paired.labeled
            results = evaluate(Evidence(None, VERSION, VERSION, live=live, plan=plan), GATED[r.state])  # type: ignore[arg-type]
        move = decide(r, results, plan, now)
        if move is not None:
            if move.after.entered_at != r.entered_at:
                since = t + 1
            r = move.after
        if r.state in ENDED:
            if args.verbose and move is not None:
                print(sc.name, seed, move.reason)
            return {"state": r.state, "ticks": t + 1, "labels": labels_at_decision, "max_share": max_share}
    return {"state": r.state, "ticks": horizon, "labels": labels_at_decision, "max_share": max_share}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--rps", type=float, default=10.0, help="Requests per second to the endpoint.")
    parser.add_argument("--labeled", type=float, default=0.2, help="Share of predictions that get a label.")
    parser.add_argument("--label-delay-s", type=float, default=300.0)
    parser.add_argument("--horizon-h", type=float, default=72.0)
    parser.add_argument("--verbose", action="store_true", help="Say why each stream ended.")
    parser.add_argument("--no-real", action="store_true", help="Skip the pass through the real stack.")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Processes for the seeds.")
    parser.add_argument(
        "--real-only", default="", help="Comma-separated scenarios for the real pass (default: all)."
    )
    args = parser.parse_args()
    plan, began = RolloutPlan(), time.perf_counter()
    out: dict[str, object] = {"benchmark": "rollout", "seeds": args.seeds, "plan": "defaults"}
    scenarios: dict[str, dict[str, object]] = {}
    pool = ProcessPoolExecutor(args.workers)  # seeds are independent: one process per core
    for sc in SCENARIOS if args.seeds else ():
        runs = list(pool.map(functools.partial(run_stream, sc, plan, args=args), range(args.seeds)))
        states = Counter(str(x["state"]) for x in runs)
        promoted = states["baked"] + states["promoted"]
        scenarios[sc.name] = {
            "final_states": dict(states),
            "promoted_rate": promoted / len(runs),
            "median_intervals_to_decision": statistics.median(float(x["ticks"]) for x in runs),
            "median_labels_to_decision": statistics.median(float(x["labels"]) for x in runs),
            "max_candidate_share_seen": max(float(x["max_share"]) for x in runs),
        }
    pool.shutdown()
    out["scenarios"] = scenarios
    out["simulation_seconds"] = round(time.perf_counter() - began, 1)
    real: dict[str, dict[str, object]] = {}
    if not args.no_real:
        from benchmarks._rollout_real import real_pass  # starts a whole stack: only when asked

        only = frozenset(x for x in args.real_only.split(",") if x) or None
        out["real_gateway"] = real_pass(only=only)
        real = out["real_gateway"]["scenarios"]  # type: ignore[index]
        costs = out["real_gateway"].get("shadow_cost") or []  # type: ignore[attr-defined]
        out["shadow_cost_to_champion_p99"] = {str(c["shadow_share"]): round(c["ratio"] - 1, 3) for c in costs}
    if not scenarios:
        out["seconds"] = round(time.perf_counter() - began, 1)
        print(json.dumps(out))
        return
    out["bad_ever_champion"] = sum(
        int(s["final_states"].get("baked", 0)) + int(s["final_states"].get("promoted", 0))  # type: ignore[union-attr]
        for name, s in scenarios.items() if name in BAD
    ) + sum(s["final_state"] in ("promoted", "baked") for name, s in real.items() if name in BAD)  # fmt: skip
    out["false_rollback_rate"] = sum(
        int(scenarios[name]["final_states"].get("rolled_back", 0))
        for name in GOOD  # type: ignore[union-attr]
    ) / (len(GOOD) * args.seeds)
    out["max_candidate_share_seen_by_bad"] = max(float(scenarios[n]["max_candidate_share_seen"]) for n in BAD)  # type: ignore[arg-type]
    out["equal_or_better_promoted_rate"] = min(float(scenarios[n]["promoted_rate"]) for n in GOOD)  # type: ignore[arg-type]
    out["seconds"] = round(time.perf_counter() - began, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
