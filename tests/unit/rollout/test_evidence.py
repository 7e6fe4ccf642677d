"""The live gates' evidence read from the store: calls and latency per arm as the gateways flushed
them, labels through feedback (for shadow, through the champion twin), the step's window only
(SQLite here; PostgreSQL under the integration mark)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from nicheloop.contracts import IMAGE_STATS, FeedbackEvent, PredictionEvent
from nicheloop.latency import bucket
from nicheloop.rollouts import ArmCalls, Rollout, Rollouts
from nicheloop.store import Store
from rollout.evidence import StoreEvidence
from rollout.plan import RolloutPlan

T0 = 1_800_000_000.0  # when the rollout entered shadow
PLAN = RolloutPlan()


def _prediction(pid: str, version: str, label: str, at: float, **kw: object) -> PredictionEvent:
    sure = [0.9, 0.1] if label == "a" else [0.1, 0.9]
    return PredictionEvent(
        prediction_id=pid,
        model_name="m",
        model_version=version,
        label=label,
        probs=sure,
        class_names=["a", "b"],
        uncertainty=0.2,
        embedding=[0.0],
        image_sha256=pid.ljust(64, "0"),
        created_at=datetime.fromtimestamp(at, UTC),
        **kw,
    )


def _calls(calls: int, errors: int, ms: float) -> ArmCalls:
    return ArmCalls(calls, errors, {bucket(ms): calls})


def test_shadow_evidence_pairs_labels_through_the_champion_twin(any_store: Store) -> None:
    rollouts, store = Rollouts(any_store), any_store
    r = rollouts.create(Rollout("2", "1", mirror=0.5, entered_at=T0), plan={}, actor="t", reason="", now=T0)
    store.add_prediction(_prediction("old", "1", "a", T0 - 60))  # before the window
    store.add_feedback(FeedbackEvent(prediction_id="old", label="a"))
    truth = ["a", "a", "b", "b", None, None]
    said = [("a", "a"), ("a", "b"), ("b", "b"), ("a", "b"), ("a", "a"), ("b", "a")]  # champion, candidate
    for i, (champ_said, cand_said) in enumerate(said):
        store.add_prediction(_prediction(f"c{i}", "1", champ_said, T0 + i, arm="champion"))
        store.add_prediction(_prediction(f"s{i}", "2", cand_said, T0 + i, arm="shadow", paired_with=f"c{i}"))
        if truth[i] is not None:
            store.add_feedback(FeedbackEvent(prediction_id=f"c{i}", label=truth[i]))
    store.add_feedback(FeedbackEvent(prediction_id="c1", label="b"))  # a later label wins
    rid = r.id or 0
    rollouts.add_calls(
        {(rid, "champion"): _calls(200, 2, 80.0), (rid, "shadow"): _calls(100, 5, 300.0)}, now=T0 + 10
    )
    rollouts.add_calls({(r.id or 0, "shadow"): _calls(50, 50, 1.0)}, now=T0 - 1)  # before the window

    live = StoreEvidence(rollouts).live(r, PLAN, T0 + 20)
    assert (live.paired.pairs, live.paired.agree, live.paired.labeled) == (6, 3, 4)
    # labels a, b, b, b: the candidate said a, b, b, b (all right); the champion a, a, b, a
    assert (live.paired.candidate_only, live.paired.champion_only) == (2, 0)
    assert (live.candidate.labels, live.candidate.correct) == (4, 4)
    assert (live.champion.labels, live.champion.correct) == (4, 2)
    assert (live.champion.calls, live.champion.errors, live.candidate.calls, live.candidate.errors) == (
        200,
        2,
        100,
        5,
    )
    assert live.champion.p99_ms == pytest.approx(80, rel=0.1) and live.candidate.p99_ms == pytest.approx(
        300, rel=0.1
    )
    assert live.candidate.ece is not None and live.champion.ece is not None
    assert live.candidate.ece == pytest.approx(0.1) and live.champion.ece > live.candidate.ece
    # what each said of every image in the window, labeled or not (the drift gate's counts)
    assert live.champion.predicted == {"a": 4, "b": 2} and live.candidate.predicted == {"a": 3, "b": 3}


def test_canary_evidence_is_the_candidates_answers_over_the_steps_window(any_store: Store) -> None:
    rollouts, store = Rollouts(any_store), any_store
    shadow = rollouts.create(
        Rollout("2", "1", mirror=0.5, entered_at=T0), plan={}, actor="t", reason="", now=T0
    )
    t1 = T0 + 100
    r = rollouts.record(
        shadow,
        dataclasses.replace(shadow, state="canary", share=0.05, entered_at=t1, revision=1),
        actor="t",
        reason="",
    )
    store.add_prediction(_prediction("x", "2", "a", T0 + 5, arm="candidate"))  # the shadow step's
    store.add_feedback(FeedbackEvent(prediction_id="x", label="a"))
    for i in range(10):
        arm, version = ("candidate", "2") if i % 2 else ("champion", "1")
        # the candidate's cohort sends brighter images, of the same size
        stats = dict.fromkeys(IMAGE_STATS, 1.0) | {
            "brightness": 200.0 + i if arm == "candidate" else 50.0 + i
        }
        store.add_prediction(_prediction(f"p{i}", version, "a", t1 + i, arm=arm, image_stats=stats))
        store.add_feedback(FeedbackEvent(prediction_id=f"p{i}", label="a" if i < 8 else "b"))
    store.add_prediction(_prediction("o", "3", "a", t1, arm="champion"))  # some other version
    store.add_feedback(FeedbackEvent(prediction_id="o", label="a"))
    live = StoreEvidence(rollouts).live(r, PLAN, t1 + 20)
    assert (live.candidate.labels, live.candidate.correct) == (5, 4)  # p1 p3 p5 p7 right, p9 wrong
    assert (live.champion.labels, live.champion.correct) == (5, 4)
    assert live.paired.pairs == 0 and live.candidate.calls == 0 and live.candidate.p99_ms is None
    # the cohorts' images, statistic by statistic: apart in brightness, alike in the rest
    assert (live.inputs.candidate, live.inputs.champion) == (5, 5)
    assert live.inputs.distances["brightness"] == 1.0 and live.inputs.distances["width"] == 0.0
