from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from nicheloop.contracts import FeedbackEvent, PredictionEvent, utcnow
from nicheloop.errors import NotFound
from nicheloop.store import LabeledExample, ServerSecret, Store, is_holdout

CLASSES = ["a", "b"]


def prediction(pid: str, sha: str = "0" * 64, uncertainty: float = 0.5) -> PredictionEvent:
    return PredictionEvent(
        prediction_id=pid,
        model_name="m",
        model_version="1",
        label="a",
        probs=[0.7, 0.3],
        class_names=CLASSES,
        uncertainty=uncertainty,
        embedding=[0.1, 0.2, 0.3],
        image_sha256=sha,
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_prediction_then_feedback_makes_one_labeled_example(store: Store) -> None:
    assert store.add_prediction(prediction("p1"))
    assert store.add_feedback(FeedbackEvent(prediction_id="p1", label="b"))
    rows = store.labeled_examples()
    assert [(r.prediction_id, r.label, r.predicted_label, r.source) for r in rows] == [
        ("p1", "b", "a", "user")
    ]


def test_feedback_before_its_prediction_is_joined_when_it_arrives(store: Store) -> None:
    store.add_feedback(FeedbackEvent(prediction_id="p1", label="b"))
    assert store.labeled_examples() == []
    store.add_prediction(prediction("p1"))
    assert [r.label for r in store.labeled_examples()] == ["b"]


def test_replays_are_idempotent(store: Store) -> None:
    fb = FeedbackEvent(prediction_id="p1", label="b")
    assert store.add_prediction(prediction("p1")) and store.add_feedback(fb)
    assert not store.add_prediction(prediction("p1")) and not store.add_feedback(fb)
    counts = store.counts()
    assert (counts["predictions"], counts["feedback"], counts["labeled_examples"]) == (1, 1, 1)


def test_newest_label_per_source_wins_and_reviewer_outranks_user(store: Store) -> None:
    store.add_prediction(prediction("p1"))
    t0 = utcnow()
    store.add_feedback(FeedbackEvent(prediction_id="p1", label="a", created_at=t0))
    store.add_feedback(FeedbackEvent(prediction_id="p1", label="b", created_at=t0 + timedelta(seconds=1)))
    assert [r.label for r in store.labeled_examples()] == ["b"]
    store.add_feedback(FeedbackEvent(prediction_id="p1", label="a", source="reviewer"))
    assert store.counts()["labeled_examples"] == 2
    assert [(r.label, r.source) for r in store.labeled_examples()] == [("a", "reviewer")]


def test_recent_embeddings_oldest_first(store: Store) -> None:
    for i in range(3):
        store.add_prediction(
            prediction(f"p{i}").model_copy(
                update={"embedding": [float(i)] * 3, "created_at": utcnow() + timedelta(seconds=i)}
            )
        )
    emb = store.recent_embeddings(2)
    np.testing.assert_array_equal(emb[:, 0], [1.0, 2.0])


def test_unknown_prediction_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="unknown prediction_id"):
        store.prediction("nope")


def test_holdout_split_is_deterministic_and_about_one_in_five(store: Store) -> None:
    shas = [f"{i:064x}" for i in range(2000)]
    share = sum(map(store.is_holdout, shas)) / len(shas)
    assert 0.15 < share < 0.25
    assert [store.is_holdout(s) for s in shas[:50]] == [store.is_holdout(s) for s in shas[:50]]


def test_holdout_is_keyed_by_a_secret_each_database_makes_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    shas = [f"{i:064x}" for i in range(400)]
    first, again, other = Store(url), Store(url), Store(f"sqlite:///{tmp_path / 'b.db'}")
    sides = [first.is_holdout(s) for s in shas]
    assert sides == [again.is_holdout(s) for s in shas]  # every opener of one database agrees
    assert sides != [other.is_holdout(s) for s in shas]  # another secret, another split
    public = [is_holdout(s, b"") for s in shas]  # nobody can predict the split without the key
    assert sides != public


def test_rows_labeled_before_the_secret_are_split_again_under_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = Store(url)
    shas = [f"{i:064x}" for i in range(100)]
    for sha in shas:
        old.add_seed_example(sha, "a")
    with Session(old.engine) as s, s.begin():  # as an older release left it: no secret, public split
        s.execute(delete(ServerSecret))
        s.execute(update(LabeledExample).values(holdout=False))
    upgraded = Store(url)
    held = {r.image_sha256 for r in upgraded.labeled_examples(holdout=True)}
    assert held == {sha for sha in shas if upgraded.is_holdout(sha)} and held


def test_seed_examples_are_labeled_without_a_prediction(store: Store) -> None:
    assert store.add_seed_example("f" * 64, "a") and not store.add_seed_example("f" * 64, "a")
    assert [(r.source, r.label) for r in store.labeled_examples()] == [("seed", "a")]


def test_pending_feedback_expires_after_its_ttl_but_still_joins(store: Store) -> None:
    old = utcnow() - timedelta(days=8)
    store.add_feedback(FeedbackEvent(prediction_id="late", label="a", created_at=old))
    store.add_feedback(FeedbackEvent(prediction_id="fresh", label="a"))
    assert store.counts()["feedback_pending"] == 2
    assert store.expire_pending(timedelta(days=7)) == 1
    assert store.expire_pending(timedelta(days=7)) == 0  # counted once
    assert store.counts()["feedback_expired"] == 1
    store.add_prediction(prediction("late"))  # days later: still joined
    assert [r.prediction_id for r in store.labeled_examples()] == ["late"]
    assert store.counts()["feedback_pending"] == 1


def test_content_hash_ignores_row_ids_and_arrival_order(tmp_path: Path) -> None:
    a, b = Store(f"sqlite:///{tmp_path / 'a.db'}"), Store(f"sqlite:///{tmp_path / 'b.db'}")
    t = utcnow()
    events = [
        prediction("p1", "1" * 64),
        prediction("p2", "2" * 64),
        FeedbackEvent(feedback_id="f1", prediction_id="p1", label="b", created_at=t),
        FeedbackEvent(feedback_id="f2", prediction_id="p2", label="a", created_at=t),
    ]
    for store, order in ((a, events), (b, events[::-1])):
        for ev in order:
            (store.add_prediction if isinstance(ev, PredictionEvent) else store.add_feedback)(ev)
    assert a.content_hash() == b.content_hash()
    a.add_feedback(FeedbackEvent(prediction_id="p1", label="a", source="reviewer"))
    assert a.content_hash() != b.content_hash()


def test_a_prediction_keeps_the_arm_that_made_it(store: Store) -> None:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from nicheloop.store import Prediction

    store.add_prediction(prediction("p1"))
    store.add_prediction(prediction("p2").model_copy(update={"arm": "shadow"}))
    with Session(store.engine) as s:
        arms = dict(s.execute(select(Prediction.prediction_id, Prediction.arm)).tuples().all())
    assert arms == {"p1": "champion", "p2": "shadow"}


def test_an_event_from_an_older_gateway_is_the_champions() -> None:
    old = prediction("p1").model_dump(mode="json")
    del old["arm"]
    assert PredictionEvent.model_validate(old).arm == "champion"


def test_an_excluded_actors_labels_leave_every_snapshot_and_other_labels_take_over(any_store: Store) -> None:
    from training.data import snapshot

    any_store.add_prediction(prediction("p1", sha="1" * 64))
    any_store.add_prediction(prediction("p2", sha="2" * 64))
    any_store.add_feedback(FeedbackEvent(prediction_id="p1", label="a", source="user", actor="app-1"))
    any_store.add_feedback(FeedbackEvent(prediction_id="p1", label="b", source="reviewer", actor="mallory"))
    any_store.add_feedback(FeedbackEvent(prediction_id="p2", label="b", source="reviewer", actor="mallory"))
    assert {(r.prediction_id, r.label, r.actor) for r in any_store.labeled_examples()} == {
        ("p1", "b", "mallory"),  # a reviewer's label wins over the app's
        ("p2", "b", "mallory"),
    }
    assert any_store.exclude_actor("mallory", by="admin", reason="labels at random")
    assert not any_store.exclude_actor("mallory", by="admin", reason="again")
    assert {(r.prediction_id, r.label, r.actor) for r in any_store.labeled_examples()} == {
        ("p1", "a", "app-1")
    }
    snap = snapshot(any_store)
    assert snap.excluded_actors == ("mallory",) and '"excluded_actors": ["mallory"]' in snap.manifest()
