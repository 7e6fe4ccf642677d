"""Per-class figures and champion-against-candidate views for the operator page, from the store
(the controller's routes; SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from nicheloop.contracts import FeedbackEvent
from nicheloop.keys import ApiKeys
from nicheloop.review import QueuePolicy, ReviewQueue
from nicheloop.rollouts import Rollout, Rollouts
from nicheloop.store import Store
from rollout.operations import Operations
from rollout.quality import class_figures
from rollout.runner import controller_api
from tests.unit.rollout.test_controller import Registry
from tests.unit.rollout.test_evidence import _prediction


def test_class_figures_count_the_confusion_and_leave_out_what_has_no_denominator() -> None:
    f = class_figures(["a", "a", "b", "b", "x"], ["a", "b", "b", "b", "a"], ["a", "b", "c"])
    assert f["classes"] == ["a", "b", "c", "x"]  # a label outside the model's classes gets a row
    assert f["confusion"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    a, b, c, _ = f["per_class"]
    assert (a["precision"], a["recall"], a["labeled"], a["predicted"]) == (0.5, 0.5, 2, 2)
    assert (b["precision"], b["recall"]) == (pytest.approx(2 / 3), 1.0)
    assert (c["precision"], c["recall"]) == (None, None)  # never labeled, never predicted
    assert (f["n"], f["accuracy"]) == (5, 0.6)
    assert class_figures([], [], ["a"])["accuracy"] is None


def test_operators_read_per_class_figures_and_champion_against_candidate(any_store: Store) -> None:
    now = datetime.now(UTC).timestamp()
    rollouts = Rollouts(any_store)
    rollouts.record_champion("1", previous=None, actor="t", reason="first", now=now - 600)
    r = rollouts.create(
        Rollout("2", "1", mirror=0.5, entered_at=now - 60), plan={}, actor="t", reason="", now=now - 60
    )
    truth = ["a", "a", "b", "b", None, None]
    said = [("a", "a"), ("a", "b"), ("b", "b"), ("a", "b"), ("a", "a"), ("b", "a")]  # champion, candidate
    for i, (champ, cand) in enumerate(said):
        any_store.add_prediction(_prediction(f"c{i}", "1", champ, now + 1 + i, arm="champion"))
        any_store.add_prediction(
            _prediction(f"s{i}", "2", cand, now + 1 + i, arm="shadow", paired_with=f"c{i}")
        )
        if truth[i] is not None:
            any_store.add_feedback(FeedbackEvent(prediction_id=f"c{i}", label=truth[i]))
    any_store.add_feedback(FeedbackEvent(prediction_id="c5", label="a", source="reviewer"))
    key = ApiKeys(any_store).create(name="ops", role="operator", created_by="t")[0]
    client = TestClient(controller_api(Operations(rollouts, Registry())), headers={"X-API-Key": key})

    classes = client.get("/v1/quality/classes").json()  # the recorded champion, users' labels
    assert classes["version"] == "1" and classes["classes"] == ["a", "b"]
    assert classes["confusion"] == [[2, 0], [1, 1]] and classes["accuracy"] == 0.75
    assert sum(sum(c.values()) for c in classes["mix"]["counts"]) == 6  # every champion prediction
    assert any(c is not None and c == pytest.approx(0.9) for c in classes["mix"]["confidence"])
    reviewer = client.get("/v1/quality/classes", params={"source": "reviewer"}).json()
    assert reviewer["n"] == 1 and reviewer["confusion"] == [[0, 1], [0, 0]]  # c5: labeled a, said b
    assert client.get("/v1/quality/classes", params={"source": "robot"}).status_code == 422
    agreement = client.get("/v1/quality/agreement").json()
    # users labeled c0..c3 a, a, b, b; the champion said a, a, b, a...
    assert sum(b["n"] for b in agreement["user"]) == 4 and sum(b["agree"] for b in agreement["user"]) == 3
    # ...and a reviewer c5 (said b, labeled a)
    assert [(b["n"], b["agree"]) for b in agreement["reviewer"] if b["n"]] == [(1, 0)]

    v = client.get("/v1/quality/versions").json()
    assert (v["rollout_id"], v["champion"], v["candidate"]) == (r.id, "1", "2")
    # on the same five labeled images (the reviewer's label too) the candidate is right four
    # times, the champion three
    same = v["same_images"]
    assert (same["candidate"]["accuracy"], same["champion"]["accuracy"]) == (0.8, 0.6)
    assert (v["shadow_pairs"], v["disagreements"]) == (6, 3)
    assert [g["image"][:2] for g in v["gallery"]] == ["s5", "s3", "s1"]  # newest first
    assert v["gallery"][1] == {"image": "s3".ljust(64, "0"), "champion": "a", "candidate": "b", "truth": "b"}
    assert set(v["lineage"]) == {"1", "2"}


def test_quality_views_say_what_is_missing(any_store: Store) -> None:
    key = ApiKeys(any_store).create(name="ops", role="operator", created_by="t")[0]
    client = TestClient(
        controller_api(Operations(Rollouts(any_store), Registry())),
        headers={"X-API-Key": key},
        raise_server_exceptions=False,
    )
    none = client.get("/v1/quality/classes")
    assert none.status_code == 404 and "no champion" in none.json()["detail"]
    assert client.get("/v1/quality/classes", params={"version": "9"}).json()["n"] == 0
    assert "no rollout yet" in client.get("/v1/quality/versions").json()["detail"]


def test_operators_read_reviewers_gold_accuracy_and_kappa_on_the_page_route_and_metrics(
    any_store: Store,
) -> None:
    for i, label in enumerate(["a", "b"]):
        any_store.add_prediction(_prediction(f"u{i}", "1", "a", datetime.now(UTC).timestamp()))
        any_store.add_feedback(FeedbackEvent(prediction_id=f"u{i}", label=label))
    gold = ReviewQueue(any_store, QueuePolicy(gold_share=1.0))
    for reviewer in ("ann", "ann"):
        item = gold.claim(reviewer)
        assert item is not None and item.kind == "gold"
        gold.complete(item.task_id, "a", item.lease_token or "")  # right on u0, wrong on u1 (in either order)
    key = ApiKeys(any_store).create(name="ops", role="operator", created_by="t")[0]
    client = TestClient(
        controller_api(Operations(Rollouts(any_store), Registry())), headers={"X-API-Key": key}
    )
    quality = client.get("/v1/review/quality").json()
    assert quality == {
        "gold": [{"reviewer": "ann", "answered": 2, "correct": 1, "accuracy": 0.5}],
        "pairs": [],
    }
    metrics = client.get("/metrics").text
    assert 'nicheloop_review_gold_accuracy{reviewer="ann"} 0.5' in metrics
    assert 'nicheloop_review_gold_answered{reviewer="ann"} 2.0' in metrics
