"""The review queue: leases, concurrency, skips, expiry and the budget, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from nicheloop.contracts import FeedbackEvent, PredictionEvent, aware, utcnow
from nicheloop.errors import BudgetSpent, Conflict, InvalidInput, NotFound
from nicheloop.review import QueuePolicy, ReviewQueue
from nicheloop.review.queue import cohen_kappa, why_queued
from nicheloop.store import ReviewItem, Store
from tests.conftest import BACKENDS, postgres_database


def prediction(pid: str) -> PredictionEvent:
    return PredictionEvent(
        prediction_id=pid,
        model_name="m",
        model_version="1",
        label="a",
        probs=[0.6, 0.4],
        class_names=["a", "b"],
        uncertainty=0.8,
        embedding=[0.1, 0.2],
        image_sha256=pid.ljust(64, "0"),
    )


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "postgresql":
        return Store(
            postgres_database(f"queue_{request.node.name[:20].lower().replace('[', '_').replace(']', '')}")
        )
    return Store(f"sqlite:///{tmp_path / 'db.sqlite'}")


def filled(store: Store, n: int, **policy: float) -> ReviewQueue:
    queue = ReviewQueue(store, QueuePolicy(**policy))
    for i in range(n):
        store.add_prediction(prediction(f"p{i}"))
        assert queue.enqueue(f"p{i}", priority=i / n, predicted_label="a")
    return queue


def test_claims_follow_priority_and_labels_need_the_lease(store: Store) -> None:
    queue = filled(store, 3)
    assert not queue.enqueue("p1", 0.99)  # queued once, ever
    first = queue.claim("ann")
    assert first.prediction_id == "p2" and first.claimed_by == "ann" and first.lease_token
    with pytest.raises(Conflict, match="not leased to you"):
        queue.complete(first.task_id, "b", "forged-token")
    done_at = utcnow()
    queue.complete(first.task_id, "b", first.lease_token, now=done_at)
    # while the lease holds, the reviewer may correct the label (undo); after it, never
    assert queue.complete(first.task_id, "a", first.lease_token, now=done_at).label == "a"
    with pytest.raises(Conflict, match="already labeled"):
        queue.check_lease(first.task_id, first.lease_token)  # a first label only, without correcting
    with pytest.raises(Conflict, match="already labeled"):
        queue.complete(first.task_id, "b", first.lease_token, now=done_at + timedelta(hours=1))
    unclaimed = queue.claim("ann")
    with pytest.raises(NotFound):
        queue.complete(9999, "a", "x")
    assert queue.claim("bob").prediction_id == "p0" and unclaimed.prediction_id == "p1"
    assert queue.claim("bob") is None


def test_a_lease_is_renewed_up_to_its_longest_hold_and_a_skip_keeps_its_reason(store: Store) -> None:
    queue = filled(store, 2, lease_s=60)
    now = utcnow()
    item = queue.claim("ann", now=now)
    later = now + timedelta(seconds=50)
    assert aware(
        queue.renew(item.task_id, item.lease_token, now=later).lease_expires_at
    ) == later + timedelta(seconds=60)
    end = now + timedelta(seconds=4 * 60)  # MAX_HOLD leases from the claim at most
    assert (
        aware(queue.renew(item.task_id, item.lease_token, now=end - timedelta(seconds=10)).lease_expires_at)
        == end
    )
    with pytest.raises(Conflict, match="held for 4 leases"):
        queue.renew(item.task_id, item.lease_token, now=end)
    with pytest.raises(Conflict, match="not leased to you"):
        queue.renew(item.task_id, "forged", now=later)
    queue.skip(item.task_id, item.lease_token, now=later, reason="not a defect image")
    with Session(store.engine) as s:
        row = s.get(ReviewItem, item.task_id)
        assert row is not None and row.skip_reasons == ["not a defect image"] and row.skipped_by == ["ann"]


def test_why_an_item_was_queued_reads_as_a_sentence() -> None:
    assert "hesitates between b (48%) and a (42%)" in why_queued(["a", "b", "c"], [0.42, 0.48, 0.1], 0.9, 0.7)
    assert "unlike those labeled" in why_queued(["a", "b"], [0.97, 0.03], 0.05, 0.4)
    assert "unsure" in why_queued(["a", "b", "c"], [0.6, 0.2, 0.2], 0.5, 0.4)
    assert "answer this differently" in why_queued(["a", "b", "c"], [0.42, 0.48, 0.1], 0.9, 1.7)


def test_two_reviewers_claiming_at_once_never_get_the_same_item(store: Store) -> None:
    queue = filled(store, 40)
    got: dict[str, list[int]] = {"ann": [], "bob": []}
    rounds = threading.Barrier(2)

    def work(name: str) -> None:
        for _ in range(20):  # every round, both claims race each other
            rounds.wait()
            item = queue.claim(name)
            if item is not None:
                got[name].append(item.task_id)

    threads = [threading.Thread(target=work, args=(n,)) for n in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not set(got["ann"]) & set(got["bob"])
    assert sorted(got["ann"] + got["bob"]) == sorted(range(1, 41))
    assert len(got["ann"]) == len(got["bob"]) == 20
    assert queue.claim("cid") is None


def test_an_expired_lease_returns_the_item_and_the_late_label_is_refused(store: Store) -> None:
    queue = filled(store, 1, lease_s=60)
    now = utcnow()
    ann = queue.claim("ann", now=now)
    assert queue.claim("bob", now=now + timedelta(seconds=30)) is None  # still leased
    bob = queue.claim("bob", now=now + timedelta(seconds=61))
    assert bob.task_id == ann.task_id and bob.lease_token != ann.lease_token
    with pytest.raises(Conflict, match="handed out again"):
        queue.complete(ann.task_id, "a", ann.lease_token)
    assert queue.complete(bob.task_id, "b", bob.lease_token).label == "b"


def test_a_skipped_item_goes_to_someone_else_and_retires_after_max_skips(store: Store) -> None:
    queue = filled(store, 1, max_skips=2)
    item = queue.claim("ann")
    assert queue.skip(item.task_id, item.lease_token).status == "queued"
    assert queue.claim("ann") is None  # never offered again to who skipped it
    again = queue.claim("bob")
    assert queue.skip(again.task_id, again.lease_token).status == "skipped"
    assert queue.claim("cid") is None and queue.stats()["skipped"] == 1


def test_stale_items_expire_instead_of_being_handed_out(store: Store) -> None:
    queue = filled(store, 2, item_ttl_s=3600)
    later = utcnow() + timedelta(hours=2)
    assert queue.claim("ann", now=later) is None
    assert queue.stats(now=later)["expired"] == 2


def test_a_spent_budget_stops_claims_and_says_when_to_come_back(store: Store) -> None:
    queue = filled(store, 5, budget_per_hour=2, budget_per_day=3)
    now = utcnow()
    for _ in range(2):
        item = queue.claim("ann", now=now)
        queue.complete(item.task_id, "a", item.lease_token, now=now)
    with pytest.raises(BudgetSpent, match="hourly") as spent:
        queue.claim("ann", now=now + timedelta(minutes=1))
    assert 3500 < spent.value.retry_after_s <= 3600
    stats = queue.stats(now=now + timedelta(minutes=1))
    assert stats["budget"]["left_hour"] == 0 and stats["budget"]["left_day"] == 1 and stats["queued"] == 3
    item = queue.claim("ann", now=now + timedelta(hours=1, minutes=1))  # the hour rolled on
    queue.complete(item.task_id, "a", item.lease_token, now=now + timedelta(hours=1, minutes=1))
    with pytest.raises(BudgetSpent, match="daily"):
        queue.claim("ann", now=now + timedelta(hours=3))


def test_one_reviewer_cannot_spend_everyone_s_budget(store: Store) -> None:
    queue = filled(store, 6, budget_per_hour=10, budget_per_reviewer_hour=2, budget_per_reviewer_day=3)
    now = utcnow()
    for _ in range(2):
        item = queue.claim("ann", now=now)
        queue.complete(item.task_id, "a", item.lease_token, now=now)
    with pytest.raises(BudgetSpent, match="hourly per-reviewer") as spent:
        queue.claim("ann", now=now + timedelta(minutes=1))
    assert 3500 < spent.value.retry_after_s <= 3600
    assert queue.claim("bob", now=now + timedelta(minutes=1)) is not None  # the others go on
    item = queue.claim("ann", now=now + timedelta(hours=1, minutes=1))
    queue.complete(item.task_id, "a", item.lease_token, now=now + timedelta(hours=1, minutes=1))
    with pytest.raises(BudgetSpent, match="daily per-reviewer"):
        queue.claim("ann", now=now + timedelta(hours=3))
    assert queue.stats(now=now)["budget"]["per_reviewer_hour"] == 2


def test_an_operators_budget_replaces_the_settings_for_every_queue_on_the_store(store: Store) -> None:
    queue = filled(store, 6, budget_per_hour=5)
    other = ReviewQueue(store, QueuePolicy(budget_per_hour=5))  # another replica's queue
    before, after = queue.set_budgets({"budget_per_hour": 1}, by="ops")
    assert before["budget_per_hour"] == 5 and after["budget_per_hour"] == 1
    assert after["budget_per_day"] == QueuePolicy().budget_per_day  # the others stay the settings'
    other.claim("ann")
    with pytest.raises(BudgetSpent, match="hourly review budget of 1"):
        other.claim("bob")
    assert other.stats()["budget"]["per_hour"] == 1
    assert queue.set_budgets({"budget_per_hour": 3}, by="ops")[1]["budget_per_hour"] == 3  # changed again
    assert other.claim("bob") is not None
    for bad in ({"budget_per_week": 1}, {"budget_per_day": -1}):
        with pytest.raises(InvalidInput, match="budgets are counts"):
            queue.set_budgets(bad, by="ops")


def test_live_leases_count_against_the_budget(store: Store) -> None:
    queue = filled(store, 3, budget_per_hour=1)
    queue.claim("ann")
    with pytest.raises(BudgetSpent):
        queue.claim("bob")


def test_stats_report_depth_throughput_and_budget(store: Store) -> None:
    queue = filled(store, 4, lease_s=60)
    now = utcnow()
    done = queue.claim("ann", now=now)
    queue.complete(done.task_id, "a", done.lease_token, now=now + timedelta(seconds=12))
    queue.claim("bob", now=now)
    skipped = queue.claim("dan", now=now)
    queue.skip(skipped.task_id, skipped.lease_token, now=now, reason="unsure")
    stale = queue.claim("cid", now=now - timedelta(seconds=120))  # its lease has run out
    stats = queue.stats(now=now + timedelta(seconds=20))
    assert (stats["queued"], stats["in_review"], stats["done"]) == (2, 1, 1)
    assert (stats["skips"], stats["skip_rate"], stats["lapsed_leases"]) == (1, 0.5, 1)
    assert stats["labeled_last_hour"] == stats["labeled_last_day"] == 1
    assert stats["median_seconds_per_label"] == 12.0 and stats["oldest_queued_age_s"] >= 0
    assert stats["budget"]["left_hour"] == 120 - 2 and stale is not None
    assert queue.room() == 600 - 1


def test_an_older_database_gains_the_new_queue_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    with create_engine(url).begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE review_queue (task_id INTEGER PRIMARY KEY, prediction_id VARCHAR(128) "
                "UNIQUE, priority FLOAT, status VARCHAR(16), label VARCHAR(128), created_at DATETIME, "
                "claimed_at DATETIME)"
            )
        )
        conn.execute(
            text("INSERT INTO review_queue VALUES (1, 'old', 0.5, 'queued', NULL, '2026-01-01', NULL)")
        )
    store = Store(url)
    store.add_prediction(prediction("old"))
    item = ReviewQueue(store).claim("ann")
    assert item.prediction_id == "old" and item.lease_token


def test_gold_items_check_a_reviewer_against_known_labels_and_train_nothing(store: Store) -> None:
    queue = filled(store, 2)
    # an operator sets the share on another replica: this one's next claims follow
    ReviewQueue(store).set_shares({"gold_share": 1.0}, by="ops")  # every claim gold while there are some
    with pytest.raises(InvalidInput, match=r"fractions in \[0, 1\]"):
        ReviewQueue(store).set_shares({"gold_share": 1.5}, by="ops")
    for i, label in enumerate(["a", "b"]):  # two predictions users labeled, never queued
        store.add_prediction(prediction(f"u{i}"))
        store.add_feedback(FeedbackEvent(prediction_id=f"u{i}", label=label))
    got = [queue.claim("ann") for _ in range(3)]
    assert [g.kind for g in got if g] == ["gold", "gold", None]  # then the queue's own items
    gold = {g.prediction_id: g for g in got if g and g.kind == "gold"}
    assert set(gold) == {"u0", "u1"} and all(g.status == "claimed" for g in gold.values())
    queue.complete(gold["u0"].task_id, "a", gold["u0"].lease_token or "")  # right
    queue.complete(gold["u1"].task_id, "a", gold["u1"].lease_token or "")  # wrong...
    queue.complete(gold["u1"].task_id, "b", gold["u1"].lease_token or "")  # ...corrected under the lease
    bob = queue.claim("bob")
    assert bob is not None and bob.kind is None  # no gold left that bob could get
    queue.complete(bob.task_id, "b", bob.lease_token or "")
    assert queue.reviewer_quality()["gold"] == [
        {"reviewer": "ann", "answered": 2, "correct": 2, "accuracy": 1.0}
    ]


def test_an_overlap_item_goes_to_a_second_reviewer_once_the_first_lease_is_over(store: Store) -> None:
    queue = filled(store, 3, overlap_share=1.0, lease_s=60)
    now = utcnow()
    firsts = [queue.claim("ann", now=now) for _ in range(3)]
    for item, label in zip(firsts, ["a", "b", "a"]):
        assert item is not None
        queue.complete(item.task_id, label, item.lease_token or "", now=now)
    # ann may still correct them; nobody else is offered them while her leases hold
    assert queue.claim("bob", now=now + timedelta(seconds=30)) is None
    later = now + timedelta(seconds=120)
    assert queue.claim("ann", now=later) is None  # never her own again
    seconds = [queue.claim("bob", now=later) for _ in range(3)]
    assert sorted(s.prediction_id for s in seconds if s) == ["p0", "p1", "p2"]
    for item, label in zip(seconds, ["a", "b", "b"]):
        assert item is not None
        queue.complete(item.task_id, label, item.lease_token or "", now=later)
    assert queue.claim("cid", now=later + timedelta(seconds=120)) is None  # two answers are enough
    [pair] = queue.reviewer_quality()["pairs"]
    assert (pair["reviewers"], pair["items"], pair["agreed"]) == (["ann", "bob"], 3, 2)
    assert pair["kappa"] == pytest.approx(cohen_kappa(list(zip(["a", "b", "a"], ["a", "b", "b"]))))


def test_a_released_label_goes_to_the_second_reviewer_at_once_and_cannot_be_corrected(store: Store) -> None:
    queue = filled(store, 1, overlap_share=1.0, lease_s=600)
    now = utcnow()
    first = queue.claim("ann", now=now)
    assert first is not None and first.lease_token
    with pytest.raises(Conflict, match="label or skip it first"):
        queue.release(first.task_id, first.lease_token, now=now)  # not labeled yet
    queue.complete(first.task_id, "a", first.lease_token, now=now)
    assert queue.claim("bob", now=now + timedelta(seconds=1)) is None  # ann may still correct it
    queue.release(first.task_id, first.lease_token, now=now + timedelta(seconds=2))
    queue.release(first.task_id, first.lease_token, now=now + timedelta(seconds=3))  # twice: harmless
    with pytest.raises(Conflict, match="already labeled"):
        queue.complete(first.task_id, "b", first.lease_token, now=now + timedelta(seconds=4))
    second = queue.claim("bob", now=now + timedelta(seconds=5))
    assert second is not None and second.prediction_id == "p0"
    with pytest.raises(Conflict):  # bob holds it now: ann's old lease lets nothing go
        queue.release(first.task_id, first.lease_token, now=now + timedelta(seconds=6))
    with pytest.raises(NotFound):
        queue.release(9999, "x")


def test_a_doubted_label_gets_a_second_look_from_someone_else_once(store: Store) -> None:
    queue = filled(store, 2)
    first = queue.claim("ann")
    assert first is not None and queue.claim("ann") is not None  # p0 and p1, ann holds both
    queue.complete(first.task_id, "a", first.lease_token or "")
    assert not queue.second_opinion("p0", priority=5.0)  # still claimed by ann: it waits for her
    assert queue.second_opinion(first.prediction_id, priority=5.0)  # the gate doubts ann's label
    assert not queue.second_opinion(first.prediction_id, priority=5.0)  # queued already
    assert queue.claim("ann") is None  # not to the one who labeled it
    task = queue.claim_task("bob")
    assert task is not None and task.prediction_id == first.prediction_id
    assert task.why.startswith("a second look") and "ann" not in task.why
    queue.complete(task.task_id, "b", task.lease_token)
    assert queue.second_looks() == {first.prediction_id}
    assert store.counts()["review_answers"] == 2  # ann's and bob's: a second look counts both
    assert not queue.second_opinion(first.prediction_id, priority=5.0)  # once is enough
    assert queue.reviewer_quality()["pairs"] == []  # a doubted item is no fair sample of agreement
    # a user-labeled prediction never queued gets an item of its own
    store.add_prediction(prediction("u0"))
    store.add_feedback(FeedbackEvent(prediction_id="u0", label="a"))
    assert queue.second_opinion("u0", priority=5.0) and queue.claim("cid").prediction_id == "u0"


def test_cohen_kappa_is_agreement_beyond_chance() -> None:
    assert cohen_kappa([("a", "a"), ("b", "b")]) == 1.0
    # the textbook case: 20 yes-yes, 5 yes-no, 10 no-yes, 15 no-no: po 0.7, pe 0.5, kappa 0.4
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert cohen_kappa([("a", "b"), ("b", "a")]) == pytest.approx(-1.0)
    assert cohen_kappa([]) is None and cohen_kappa([("a", "a")]) == 1.0
