"""The shadow and canary gates on live figures: each holds on thin evidence, fails with a reason and
its figures, passes a good candidate; health gates are hard, statistical ones are not."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nicheloop.latency import BASE_MS, GROWTH, TOP, bucket, quantile_ms
from nicheloop.registry import VersionInfo
from rollout.gates import Arm, Evidence, Gate, GateResult, Inputs, Live, Paired, evaluate, gates
from rollout.gates.drift import InputDrift, PredictionDrift
from rollout.gates.health import ErrorRate, Latency
from rollout.plan import STOPGAP_PLAN, RolloutPlan
from tests.unit.rollout.arms import CHAMPION, GOOD

PLAN = RolloutPlan(min_requests=100, min_labels=200, alpha=0.05, accuracy_margin=0.03)


ALIKE = Inputs(candidate=4000, champion=40000, distances={"brightness": 0.02, "sharpness": 0.03})


def _evidence(
    candidate: Arm = GOOD, champion: Arm = CHAMPION, paired: Paired | None = None, inputs: Inputs = ALIKE
) -> Evidence:
    live = Live(
        champion,
        candidate,
        paired or Paired(pairs=500, agree=480, labeled=300, candidate_only=9, champion_only=8),
        inputs,
    )
    versions = [VersionInfo("m", v, f"run{v}", {}, []) for v in ("1", "2")]
    return Evidence(None, *versions, live=live, plan=PLAN)  # type: ignore[arg-type]


def _by_name(results: list[GateResult]) -> dict[str, GateResult]:
    return {r.gate: r for r in results}


def test_each_phase_runs_its_gates() -> None:
    assert set(gates("shadow")) == {
        "error_rate",
        "latency_p99",
        "calibration",
        "agreement",
        "paired_accuracy",
        "prediction_drift",
    }
    assert set(gates("canary")) == {
        "error_rate",
        "latency_p99",
        "calibration",
        "accuracy",
        "prediction_drift",
        "input_drift",
    }


@pytest.mark.parametrize("phase", ["shadow", "canary"])
def test_a_candidate_like_the_champion_passes_every_gate(phase: str) -> None:
    results = evaluate(_evidence(), phase)  # type: ignore[arg-type]
    assert [r.verdict for r in results] == ["pass"] * len(results), [r.reason for r in results]


def test_thin_evidence_holds_every_gate() -> None:
    thin = Arm(calls=10, errors=0, p99_ms=50.0, labels=5, correct=5, ece=0.0)
    for phase in ("shadow", "canary"):
        few = Paired(pairs=10, agree=10, labeled=3)
        results = evaluate(_evidence(thin, thin, few, Inputs(10, 10, {"brightness": 0.1})), phase)  # type: ignore[arg-type]
        assert {r.verdict for r in results} == {"hold"}, [(r.gate, r.reason) for r in results]


def test_errors_and_latency_fail_hard_with_their_figures() -> None:
    timed = {bucket(70.0): 940, bucket(400.0): 60}  # 6 % of calls take 400 ms
    bad = Arm(calls=1000, errors=60, p99_ms=400.0, labels=800, correct=760, ece=0.03, latency=timed)
    results = _by_name(evaluate(_evidence(bad), "canary"))
    errors, latency = results["error_rate"], results["latency_p99"]
    assert errors.verdict == latency.verdict == "fail" and errors.hard and latency.hard
    assert (
        "6.0% of the candidate's calls failed" in errors.reason
        and errors.figures["champion_error_rate"] == 0.002
    )
    assert (
        latency.figures["ratio"] == 5.0
        and "400 ms" in latency.reason
        and "60 of 1000 calls" in latency.reason
    )
    assert latency.figures["slower_share"] == 0.06 and 0.01 < latency.figures["slower_share_low"] < 0.06


def test_a_slow_call_or_two_on_thin_counts_holds_the_latency_gate() -> None:
    """2 slow calls in 100 put the p99 at 400 ms (the p99 of 100 calls is nearly their slowest), 5x
    the champion's: over the ratio as a point estimate, but too few calls to say that more than 1 %
    of them are slow: the step waits; with 40 slow calls in 1000 it is beyond doubt."""
    few = dataclasses.replace(GOOD, calls=100, p99_ms=400.0, latency={bucket(70.0): 98, bucket(400.0): 2})
    latency = _by_name(evaluate(_evidence(few), "canary"))["latency_p99"]
    assert latency.verdict == "hold" and "not yet beyond doubt" in latency.reason
    many = dataclasses.replace(few, calls=1000, latency={bucket(70.0): 960, bucket(400.0): 40})
    assert _by_name(evaluate(_evidence(many), "canary"))["latency_p99"].verdict == "fail"


def test_untimed_shadow_calls_leave_latency_to_the_canary_and_an_untimed_champion_holds() -> None:
    """Shadow calls at idle priority are counted without their latency (the wait for spare CPU is
    not the candidate's): the gate passes them on to canary, where the candidate answers and is timed."""
    untimed = dataclasses.replace(GOOD, p99_ms=None)
    latency = _by_name(evaluate(_evidence(untimed), "shadow"))["latency_p99"]
    assert (
        latency.verdict == "pass" and latency.hard and "judged from the first canary step" in latency.reason
    )
    assert latency.figures == {"calls": 4000.0}
    no_champion = _by_name(evaluate(_evidence(GOOD, dataclasses.replace(CHAMPION, p99_ms=None)), "shadow"))
    assert no_champion["latency_p99"].verdict == "hold"
    slow = dataclasses.replace(GOOD, p99_ms=420.0, latency={bucket(70.0): 3800, bucket(400.0): 200})
    assert _by_name(evaluate(_evidence(slow), "shadow"))["latency_p99"].verdict == "fail"  # timed: judged


def test_a_failed_call_or_two_on_thin_counts_holds_rather_than_rolling_back() -> None:
    """2 failed calls in 100 read 2 % against the champion's 0.2 %: over the 1-point allowance as a
    point estimate, well within what chance gives an equal candidate, and too few calls to tell it
    from a candidate failing 5 % of them: the step waits for more."""
    few = Arm(calls=100, errors=2, p99_ms=80.0, labels=80, correct=76, ece=0.03)
    errors = _by_name(evaluate(_evidence(few), "canary"))["error_rate"]
    assert errors.verdict == "hold" and errors.figures["candidate_error_rate"] == 0.02
    assert (
        errors.figures["candidate_error_rate_low"]
        < 0.002 + 0.01
        < errors.figures["candidate_error_rate_high"]
    )
    many = dataclasses.replace(few, calls=4000, errors=12)  # 0.3 %: within the allowance beyond doubt
    assert _by_name(evaluate(_evidence(many), "canary"))["error_rate"].verdict == "pass"


def _ever_fails(
    gate: Gate, arms: Callable[[int, int], tuple[Arm, Arm]], *, streams: int, ticks: int
) -> float:
    """Share of ``streams`` in which ``gate``, read after every tick from the fifth on (the plan's
    ``min_requests`` at 20 candidate calls a tick), ever fails; ``arms(stream, tick)`` gives the
    candidate's and the champion's figures over the window so far."""
    failed = 0
    for s in range(streams):
        failed += any(gate(_evidence(*arms(s, t))).verdict == "fail" for t in range(4, ticks))
    return failed / streams


def _error_gate_ever_fails(rate: float, *, seed: int, streams: int = 300, ticks: int = 40) -> float:
    """How often the error-rate gate ever fails a candidate failing ``rate`` of its calls (20
    candidate and 380 champion calls a tick, the champion failing 0.1 % of its calls)."""
    rng = np.random.default_rng(seed)
    cand = np.cumsum(rng.binomial(20, rate, (streams, ticks)), 1)
    champ = np.cumsum(rng.binomial(380, 0.001, (streams, ticks)), 1)
    return _ever_fails(
        ErrorRate(),
        lambda s, t: (
            Arm(calls=20 * (t + 1), errors=int(cand[s, t])),
            Arm(calls=380 * (t + 1), errors=int(champ[s, t])),
        ),
        streams=streams,
        ticks=ticks,
    )


def _cumulative_histograms(ms: np.ndarray) -> np.ndarray:
    """(streams, ticks, calls) latencies -> (streams, ticks, buckets) counts of the window so far."""
    k = np.clip(np.ceil(np.log(np.maximum(ms, BASE_MS) / BASE_MS) / np.log(GROWTH) - 1e-9), 0, TOP)
    counts = np.zeros((*ms.shape[:2], TOP + 1), dtype=np.int64)
    s, t = np.indices(ms.shape[:2])
    np.add.at(counts, (s[..., None], t[..., None], k.astype(np.int64)), 1)
    return np.cumsum(counts, axis=1)


def _latency_gate_ever_fails(slow_share: float, *, seed: int, streams: int = 200, ticks: int = 40) -> float:
    """How often the latency gate ever fails a candidate whose ``slow_share`` of calls take 300 ms
    more (20 candidate and 380 champion calls a tick, both about 60 ms with a lognormal spread)."""
    rng = np.random.default_rng(seed)
    cand_ms = rng.lognormal(np.log(60), 0.3, (streams, ticks, 20))
    cand_ms += 300.0 * (rng.random(cand_ms.shape) < slow_share)
    cand = _cumulative_histograms(cand_ms)
    champ = _cumulative_histograms(rng.lognormal(np.log(60), 0.3, (streams, ticks, 380)))

    def arm(hist: np.ndarray) -> Arm:
        timed = {int(k): int(n) for k, n in enumerate(hist) if n}
        return Arm(calls=int(hist.sum()), p99_ms=quantile_ms(timed, 0.99), latency=timed)

    return _ever_fails(
        Latency(), lambda s, t: (arm(cand[s, t]), arm(champ[s, t])), streams=streams, ticks=ticks
    )


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_reading_the_latency_gate_every_tick_keeps_its_level_and_catches_slow_calls(seed: int) -> None:
    assert _latency_gate_ever_fails(0.0, seed=seed) <= PLAN.alpha
    assert _latency_gate_ever_fails(0.05, seed=seed) >= 0.9


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_reading_the_error_gate_every_tick_keeps_its_level_and_catches_five_percent(seed: int) -> None:
    assert _error_gate_ever_fails(0.001, seed=seed) <= PLAN.alpha
    assert _error_gate_ever_fails(0.05, seed=seed) >= 0.9


def test_a_candidate_ten_points_worse_fails_the_canary_accuracy_gate_not_hard() -> None:
    worse = Arm(calls=1000, errors=2, p99_ms=80.0, labels=400, correct=340, ece=0.03)  # 85 % against 95 %
    champion = Arm(calls=9000, errors=2, p99_ms=80.0, labels=4000, correct=3800, ece=0.03)
    accuracy = _by_name(evaluate(_evidence(worse, champion), "canary"))["accuracy"]
    assert accuracy.verdict == "fail" and not accuracy.hard and accuracy.figures["candidate_labels"] == 400


def test_shadow_disagreement_and_a_worse_paired_record_fail() -> None:
    results = _by_name(
        evaluate(
            _evidence(paired=Paired(pairs=500, agree=350, labeled=300, candidate_only=4, champion_only=30)),
            "shadow",
        )
    )
    assert results["agreement"].verdict == "fail" and "agree on at most" in results["agreement"].reason
    paired = results["paired_accuracy"]
    assert paired.verdict == "fail" and paired.figures["p_value"] < 0.001 and not paired.hard


def test_a_candidate_that_wins_the_disagreements_passes_the_paired_gate() -> None:
    better = Paired(pairs=500, agree=470, labeled=300, candidate_only=30, champion_only=4)
    assert _by_name(evaluate(_evidence(paired=better), "shadow"))["paired_accuracy"].verdict == "pass"


def test_calibration_fails_beyond_the_allowed_increase() -> None:
    loose = Arm(calls=1000, errors=2, p99_ms=80.0, labels=800, correct=760, ece=0.13)
    calibration = _by_name(evaluate(_evidence(loose), "canary"))["calibration"]
    assert calibration.verdict == "fail" and "ECE 0.130" in calibration.reason


def test_calibration_forgives_what_sampling_alone_explains_at_equal_counts() -> None:
    """At 200 labels a calibrated model's ECE reads about 0.04 +- 0.012 (nicheloop.calibration):
    an increase within three of those standard deviations of the allowance passes, a larger fails."""
    champion = dataclasses.replace(CHAMPION, ece=0.035, ece_bias=0.03, ece_sd=0.008)
    noisy = Arm(
        calls=1000, errors=2, p99_ms=80.0, labels=200, correct=180, ece=0.075, ece_bias=0.04, ece_sd=0.012
    )
    passed = _by_name(evaluate(_evidence(noisy, champion), "canary"))["calibration"]
    assert passed.verdict == "pass" and passed.figures["ece_increase"] == pytest.approx(0.03)
    assert passed.figures["allowance"] == pytest.approx(0.02 + 3 * (0.012**2 + 0.008**2) ** 0.5)
    off = dataclasses.replace(noisy, ece=0.15)
    assert _by_name(evaluate(_evidence(off, champion), "canary"))["calibration"].verdict == "fail"


def test_a_live_gate_without_live_figures_is_a_wiring_error() -> None:
    versions = [VersionInfo("m", v, f"run{v}", {}, []) for v in ("1", "2")]
    with pytest.raises(ValueError, match="needs Evidence.live"):
        evaluate(Evidence(None, *versions), "canary")  # type: ignore[arg-type]


def test_a_candidate_that_stops_saying_a_class_fails_the_drift_gate_before_any_label() -> None:
    never_pit = dataclasses.replace(
        GOOD, labels=0, correct=0, ece=None, predicted={"crack": 2400, "scratch": 1600}
    )
    drift = _by_name(evaluate(_evidence(never_pit), "canary"))["prediction_drift"]
    assert drift.verdict == "fail" and not drift.hard
    assert "'pit' for 0% of its images against the champion's 20%" in drift.reason
    assert drift.figures["largest_shift"] == pytest.approx(0.2) and drift.figures["largest_shift_low"] > 0.15


def test_class_shares_within_the_allowance_or_within_chance_pass_the_drift_gate() -> None:
    slightly = dataclasses.replace(GOOD, predicted={"crack": 2200, "scratch": 1100, "pit": 700})  # 0.05 apart
    assert _by_name(evaluate(_evidence(slightly), "canary"))["prediction_drift"].verdict == "pass"
    chance = dataclasses.replace(GOOD, predicted={"crack": 62, "scratch": 24, "pit": 14})  # 0.12, 100 images
    drift = _by_name(evaluate(_evidence(chance), "canary"))["prediction_drift"]
    assert drift.verdict == "pass" and drift.figures["largest_shift"] == pytest.approx(0.12)
    fewer = dataclasses.replace(GOOD, predicted={"crack": 35, "scratch": 10, "pit": 5})  # below min_requests
    assert _by_name(evaluate(_evidence(fewer), "canary"))["prediction_drift"].verdict == "hold"


def _drift_gate_ever_fails(shares: list[float], *, seed: int, streams: int = 200, ticks: int = 30) -> float:
    """How often the drift gate ever fails a candidate saying four classes in ``shares`` (20
    predictions a tick; the champion's 380 a tick evenly)."""
    rng = np.random.default_rng(seed)
    cand = np.cumsum(rng.multinomial(20, shares, (streams, ticks)), 1)
    champ = np.cumsum(rng.multinomial(380, [0.25] * 4, (streams, ticks)), 1)

    def said(counts: np.ndarray) -> Arm:
        return dataclasses.replace(CHAMPION, predicted={str(k): int(v) for k, v in enumerate(counts)})

    return _ever_fails(
        PredictionDrift(), lambda s, t: (said(cand[s, t]), said(champ[s, t])), streams=streams, ticks=ticks
    )


@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_reading_the_drift_gate_every_tick_keeps_its_level_and_catches_a_lost_class(seed: int) -> None:
    assert _drift_gate_ever_fails([0.25] * 4, seed=seed) <= PLAN.alpha
    assert _drift_gate_ever_fails([0.4, 0.3, 0.3, 0.0], seed=seed) >= 0.9  # one class never said


def test_cohorts_that_send_other_images_hold_the_canary_for_an_operator() -> None:
    darker = Inputs(candidate=2000, champion=20000, distances={"brightness": 0.4, "sharpness": 0.05})
    drift = _by_name(evaluate(_evidence(inputs=darker), "canary"))["input_drift"]
    assert drift.verdict == "hold" and "differ in brightness" in drift.reason and not drift.hard
    assert 0.15 < drift.figures["largest_distance_low"] < 0.4
    thin = Inputs(candidate=120, champion=2000, distances={"brightness": 0.25})  # could be chance
    assert _by_name(evaluate(_evidence(inputs=thin), "canary"))["input_drift"].verdict == "pass"


def test_the_input_gate_rarely_holds_cohorts_of_the_same_images() -> None:
    """Cohorts drawn from one distribution (13 statistics, 200 and 2,000 images, 300 seeds): the gate
    holds in at most alpha of them."""
    rng = np.random.default_rng(4)
    held = 0
    for _ in range(300):
        a, b = np.sort(rng.normal(size=(13, 200)), 1), np.sort(rng.normal(size=(13, 2000)), 1)
        distances = {}
        for k in range(13):
            grid = np.concatenate([a[k], b[k]])
            gap = (
                np.searchsorted(a[k], grid, side="right") / 200
                - np.searchsorted(b[k], grid, side="right") / 2000
            )
            distances[f"s{k}"] = float(np.abs(gap).max())
        plan = PLAN.model_copy(update={"max_input_shift": 0.0})  # any gap beyond chance holds
        evidence = dataclasses.replace(_evidence(inputs=Inputs(200, 2000, distances)), plan=plan)
        held += InputDrift()(evidence).verdict == "hold"
    assert held / 300 <= PLAN.alpha


def test_a_stopgap_must_win_its_labeled_shadow_pairs_or_goes_at_once() -> None:
    """The stopgap plan asks for no agreement (it changes answers on purpose) but for wins: more of
    20 labeled pairs right than the champion, beyond chance, else a hard failure."""
    plan = RolloutPlan(**STOPGAP_PLAN)

    def shadow(paired: Paired) -> dict[str, GateResult]:
        return _by_name(evaluate(dataclasses.replace(_evidence(paired=paired), plan=plan), "shadow"))

    few = shadow(Paired(pairs=500, agree=300, labeled=10, candidate_only=4, champion_only=0))
    assert few["paired_accuracy"].verdict == "hold" and few["agreement"].verdict == "pass"
    tied = shadow(Paired(pairs=500, agree=300, labeled=20, candidate_only=3, champion_only=3))[
        "paired_accuracy"
    ]
    assert tied.verdict == "fail" and tied.hard and "must win by 1" in tied.reason
    # 5 against 2: ahead by 3, as a coin is on 7 tosses one time in six (p = 0.23)
    lucky = shadow(Paired(pairs=500, agree=300, labeled=20, candidate_only=5, champion_only=2))[
        "paired_accuracy"
    ]
    assert lucky.verdict == "fail" and lucky.hard
    assert "beyond chance (one-sided McNemar p = 0.227" in lucky.reason
    won = shadow(Paired(pairs=500, agree=300, labeled=20, candidate_only=7, champion_only=1))[
        "paired_accuracy"
    ]
    assert won.verdict == "pass" and won.figures["candidate_only"] == 7
    # a trained candidate's plan asks for no wins: a tie passes
    assert _by_name(evaluate(_evidence(), "shadow"))["paired_accuracy"].verdict == "pass"
