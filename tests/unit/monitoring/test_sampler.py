"""The active sampler as a monitoring stage: batches, covered set, persistence, versions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from monitoring.metrics import MonitorMetrics
from monitoring.sampling import ActiveSampler, SamplerConfig, shift_weights
from monitoring.selection import select_batch
from monitoring.strategies import Pool
from nicheloop.contracts import FeedbackEvent, PredictionEvent
from nicheloop.review import QueuePolicy, ReviewQueue
from nicheloop.store import ReviewItem, Store

D = 8


def event(i: int, rng: np.random.Generator, version: str = "1", sha: str | None = None) -> PredictionEvent:
    p = rng.dirichlet([1.0, 1.0, 1.0])
    return PredictionEvent(
        prediction_id=f"p{version}-{i}",
        model_name="m",
        model_version=version,
        label="abc"[int(np.argmax(p))],
        probs=p.tolist(),
        class_names=["a", "b", "c"],
        uncertainty=0.5,
        embedding=rng.normal(size=D).tolist(),
        image_sha256=sha or f"{version}-{i}".ljust(64, "0"),
    )


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Store, ReviewQueue, MonitorMetrics]:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    return store, ReviewQueue(store, QueuePolicy(max_depth=25)), MonitorMetrics()


def sampler(parts, tmp_path: Path, reference=None, **config) -> ActiveSampler:  # type: ignore[no-untyped-def]
    store, queue, metrics = parts
    ref = (
        reference
        if reference is not None
        else np.random.default_rng(5).normal(size=(30, D)).astype(np.float32)
    )
    return ActiveSampler(
        store,
        queue,
        tmp_path / "sampling",
        SamplerConfig(every=10, batch=4, **config),
        lambda version: ref,
        metrics,
    )


def feed(s: ActiveSampler, store: Store, events: list[PredictionEvent]) -> int:
    queued = 0
    for ev in events:
        store.add_prediction(ev)  # the joiner runs before the sampler
        queued += s("t", ev)
    return queued


def test_queues_a_batch_every_n_predictions_within_the_queue_depth(parts, tmp_path: Path) -> None:
    store, queue, metrics = parts
    s = sampler(parts, tmp_path)
    rng = np.random.default_rng(0)
    assert feed(s, store, [event(i, rng) for i in range(9)]) == 0
    assert feed(s, store, [event(9, rng)]) == 4
    assert feed(s, store, [event(i, rng) for i in range(10, 100)]) == 21  # capped by max_depth 25
    assert queue.stats()["queued"] == 25 and queue.room() == 0
    assert metrics.registry.get_sample_value("nicheloop_review_enqueued_total") == 25
    assert (
        metrics.registry.get_sample_value("nicheloop_sampling_index_vectors") == 30 + 25
    )  # reference + queued


def test_labeled_and_duplicate_images_are_never_queued(parts, tmp_path: Path) -> None:
    store, queue, _ = parts
    s = sampler(parts, tmp_path)
    rng = np.random.default_rng(1)
    events = [event(i, rng, sha="f" * 64 if i < 5 else None) for i in range(10)]  # five copies of one image
    for ev in events[5:9]:
        store.add_feedback(FeedbackEvent(prediction_id=ev.prediction_id, label="a"))
    feed(s, store, events)
    queued = queue.known([e.prediction_id for e in events])
    assert not queued & {e.prediction_id for e in events[5:9]}
    assert len(queued & {e.prediction_id for e in events[:5]}) == 1


def test_feedback_joins_the_covered_set_and_the_index_survives_a_restart(parts, tmp_path: Path) -> None:
    store, _, _ = parts
    s = sampler(parts, tmp_path)
    rng = np.random.default_rng(2)
    events = [event(i, rng) for i in range(10)]
    feed(s, store, events)
    before = len(s.index)
    feedback = FeedbackEvent(prediction_id=events[0].prediction_id, label="a")
    store.add_feedback(feedback)  # the joiner runs first
    s("t", feedback)
    s("t", FeedbackEvent(prediction_id="never-seen", label="a"))  # prediction not here yet: ignored
    assert len(s.index) == before + (events[0].prediction_id not in queue_ids(parts, events))
    s.select()  # within save_every_s of the last save: not written, yet rebuilt from the store below
    restarted = sampler(parts, tmp_path)
    feed(restarted, store, [event(100, rng)])
    assert set(s.index.keys) <= set(restarted.index.keys)
    assert (tmp_path / "sampling" / "covered-v1.npz").is_file()


def queue_ids(parts, events) -> set[str]:  # type: ignore[no-untyped-def]
    return parts[1].known([e.prediction_id for e in events])


def test_a_new_model_version_gets_its_own_index_and_pool(parts, tmp_path: Path) -> None:
    store, _, _ = parts
    s = sampler(parts, tmp_path)
    rng = np.random.default_rng(3)
    feed(s, store, [event(i, rng) for i in range(5)])
    feed(s, store, [event(0, rng, version="2")])
    assert s.version == "2" and len(s.pool) == 1 and (tmp_path / "sampling" / "covered-v1.npz").is_file()


def test_without_a_reference_it_starts_cold_and_still_queues(parts, tmp_path: Path) -> None:
    store, _, _ = parts

    def broken(version: str) -> np.ndarray:
        raise RuntimeError("registry down")

    s = ActiveSampler(
        store, parts[1], tmp_path / "sampling", SamplerConfig(every=10, batch=4), broken, parts[2]
    )
    rng = np.random.default_rng(4)
    assert feed(s, store, [event(i, rng) for i in range(10)]) == 4


def test_an_unknown_strategy_fails_at_start(parts, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="choose one of"):
        sampler(parts, tmp_path, strategy="clairvoyant")


def test_a_rollouts_candidate_is_not_taken_for_the_champion(parts, tmp_path: Path) -> None:
    store, queue, _ = parts
    s = sampler(parts, tmp_path)
    rng = np.random.default_rng(3)
    champion = [event(i, rng) for i in range(5)]
    arms = ["shadow", "candidate"] * 10
    others = [event(i, rng, version="2").model_copy(update={"arm": arm}) for i, arm in enumerate(arms)]
    assert feed(s, store, champion[:3] + others + champion[3:]) == 0
    assert s.version == "1" and s.seen == 5 and set(s.pool) == {e.prediction_id for e in champion}


def test_a_queued_item_carries_its_nearest_labeled_images(parts, tmp_path: Path) -> None:
    store, queue, _ = parts
    s = sampler(parts, tmp_path)
    rng = np.random.default_rng(3)
    labeled = [event(i, rng) for i in range(20)]
    for ev in labeled:  # labeled before the sampler starts: in the covered set from the store
        store.add_prediction(ev)
        store.add_feedback(FeedbackEvent(prediction_id=ev.prediction_id, label=ev.label))
    fresh = [event(i, rng) for i in range(100, 110)]
    assert feed(s, store, fresh) == 4
    for _ in range(4):
        task = queue.claim_task("ann")
        assert task is not None
        near = task.similar
        similarity = [n.similarity for n in near]
        assert len(near) == 6 and similarity == sorted(similarity, reverse=True)
        # they are the nearest labeled images, by the index's own (centred, unit) embeddings
        me = next(e for e in fresh if e.prediction_id == task.prediction_id)
        x = s.index.prepare(np.asarray(me.embedding))
        ys = s.index.prepare(np.stack([e.embedding for e in labeled]))
        nearest = np.argsort(((ys - x) ** 2).sum(1))[:6]
        assert [n.image_url for n in near] == [f"/v1/images/{labeled[j].image_sha256}" for j in nearest]
        assert [n.label for n in near] == [labeled[j].label for j in nearest]
        # the reviewer holding the task may see those images, another reviewer may not
        sha = near[0].image_url.rsplit("/", 1)[1]
        assert queue.shows("ann", sha) and not queue.shows("bob", sha)


def _served(i: int, rng: np.random.Generator, at: float, leans: int | None = None) -> PredictionEvent:
    """A champion answer served at ``at``; ``leans``: the class a shift pushes it to."""
    p = rng.dirichlet([1.0, 1.0, 1.0]) if leans is None else rng.dirichlet([1.0, 1.0, 1.0]) * 0.3
    if leans is not None:
        p[leans] += 0.7
    return PredictionEvent(
        prediction_id=f"s-{i}",
        model_name="m",
        model_version="1",
        label="abc"[int(np.argmax(p))],
        probs=p.tolist(),
        class_names=["a", "b", "c"],
        uncertainty=0.5,
        embedding=rng.normal(size=D).tolist(),
        image_sha256=f"s-{i}".ljust(64, "0"),
        created_at=datetime.fromtimestamp(at, UTC),
    )


def test_while_an_alarm_holds_most_of_a_batch_is_traffic_served_since(parts, tmp_path: Path) -> None:
    store, queue, metrics = parts
    alarm = 1_800_000_000.0
    holding: dict[str, float | None] = {"since": None}
    s = ActiveSampler(
        store,
        ReviewQueue(store, QueuePolicy(max_depth=100)),
        tmp_path / "sampling",
        SamplerConfig(every=10_000, batch=10, alarm_share=0.8),
        lambda version: np.random.default_rng(5).normal(size=(30, D)).astype(np.float32),
        metrics,
        alarm_since=lambda version: holding["since"],
    )
    rng = np.random.default_rng(3)
    feed(s, store, [_served(i, rng, alarm - 1000 + i) for i in range(90)])
    feed(s, store, [_served(90 + i, rng, alarm + i, leans=2) for i in range(30)])

    def queued_ids() -> set[str]:
        with Session(store.engine) as session:
            return set(session.scalars(select(ReviewItem.prediction_id)))

    assert s.select() == 10
    calm = sum(int(pid.removeprefix("s-")) >= 90 for pid in queued_ids())
    assert calm <= 6  # a quarter of the pool, as uncertainty and diversity pick
    holding["since"] = alarm
    assert s.select() == 10
    since = sum(int(pid.removeprefix("s-")) >= 90 for pid in queued_ids()) - calm
    assert since >= 8
    assert metrics.registry.get_sample_value("nicheloop_review_enqueued_after_alarm_total") == since


def test_class_weights_split_the_quota_toward_the_classes_a_shift_pushed_images_into() -> None:
    before = np.array([0, 1, 2] * 20)
    after = np.array([2] * 25 + [0] * 5)
    w = shift_weights(before, after, 3)
    assert w[2] > 2.0 and w[0] == 1.0 and w[1] == 1.0
    assert shift_weights(before[:10], after, 3) == [1.0, 1.0, 1.0]  # too little before to judge
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=300)
    emb = rng.normal(size=(300, D))
    pool = Pool(probs, emb / np.linalg.norm(emb, axis=1, keepdims=True))
    leaning = select_batch(pool, 12, strategy_name="random", class_quota=1.0, class_weights=[0.0, 0.0, 1.0])
    assert (pool.predicted[leaning.indices] == 2).all()
    even = select_batch(pool, 12, strategy_name="random", class_quota=1.0)
    assert np.bincount(pool.predicted[even.indices], minlength=3).tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="class_weights"):
        select_batch(pool, 12, class_weights=[1.0, -1.0, 1.0])


def _shadow(twin: PredictionEvent, *, disputes: bool) -> PredictionEvent:
    """The candidate's shadow answer on ``twin``'s image: another label, or the same."""
    label = "abc"[("abc".index(twin.label) + 1) % 3] if disputes else twin.label
    return twin.model_copy(
        update={"prediction_id": f"s-{twin.prediction_id}", "model_version": "2", "arm": "shadow"}
        | {"label": label, "paired_with": twin.prediction_id}
    )


@pytest.mark.parametrize("share", [1.0, 0.0])
def test_images_a_shadow_candidate_answers_otherwise_are_queued_first(
    parts, tmp_path: Path, share: float
) -> None:
    store, _, metrics = parts
    queue = ReviewQueue(store, QueuePolicy(max_depth=100))
    s = ActiveSampler(
        store,
        queue,
        tmp_path / "sampling",
        SamplerConfig(every=10_000, batch=4, dispute_share=share),
        lambda version: np.random.default_rng(5).normal(size=(30, D)).astype(np.float32),
        metrics,
    )
    rng = np.random.default_rng(4)
    champion = [event(i, rng) for i in range(40)]
    disputed = {champion[i].prediction_id for i in (5, 11, 17, 23, 32, 38)}
    stream: list[PredictionEvent] = []
    for i, ev in enumerate(champion):
        shadow = _shadow(ev, disputes=ev.prediction_id in disputed)
        # the topic does not order a twin and its shadow: two shadows come before their twins
        stream += [shadow, ev] if i in (5, 23) else [ev, shadow]
    feed(s, store, stream)
    assert s.seen == 40  # shadow answers are not queued as the champion's

    def queued() -> dict[str, float]:
        with Session(store.engine) as session:
            return dict(session.execute(select(ReviewItem.prediction_id, ReviewItem.priority)).all())

    assert s.select() == 4
    first = queued()
    if share == 0.0:  # off: the disputes are picked as any image, and rank as any
        assert all(p <= 1.0 for p in first.values())
        assert metrics.registry.get_sample_value("nicheloop_review_enqueued_disputed_total") == 0
        return
    assert set(first) < disputed and all(p >= 1.0 for p in first.values())
    assert s.select() == 4
    second = {pid: p for pid, p in queued().items() if pid not in first}
    assert disputed - set(first) < set(second)  # the two disputes left, then two others
    assert sorted(p >= 1.0 for p in second.values()) == [False, False, True, True]
    assert metrics.registry.get_sample_value("nicheloop_review_enqueued_disputed_total") == 6
    # reviewers are offered the disputed images first
    item = queue.claim("r1")
    assert item is not None and item.prediction_id in disputed
