"""Gold items and overlap on the whole stack: an operator turns them on at run time through the
controller, two reviewers work the queue through the gateway, and the controller reports each
reviewer's accuracy on gold items and the pair's Cohen's kappa, in its API and its Prometheus
metrics. Gold answers train nothing (no feedback event); both overlap answers are feedback."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cli.demo import wait_for
from nicheloop.bus import parse_event, read_topic
from nicheloop.contracts import FEEDBACK_TOPIC, FeedbackEvent
from nicheloop.keys import ApiKeys
from nicheloop.review import QueuePolicy, ReviewQueue
from nicheloop.review.queue import cohen_kappa
from nicheloop.settings import Settings
from nicheloop.store import LabeledExample, Prediction, ReviewItem, Store
from nicheloop.synthetic import SyntheticStream, png_bytes
from tests.integration.conftest import role

pytestmark = pytest.mark.integration

GOLD, SHARED = 4, 4


def _predict(app: httpx.Client, seed: int, n: int) -> list[dict[str, Any]]:
    files = (
        {"image": ("x.png", png_bytes(img), "image/png")}
        for img, _ in SyntheticStream(seed=seed, size=64).take(n)
    )
    return [app.post("/v1/predict", files=f).raise_for_status().json() for f in files]


def _claim(gateway: httpx.Client, key: str) -> dict[str, Any]:
    got = gateway.get("/v1/review/next", headers={"X-API-Key": key})
    assert got.status_code == 200, got.text
    task: dict[str, Any] = got.json()
    return task


def _label(gateway: httpx.Client, key: str, task: dict[str, Any], label: str) -> None:
    body = {"label": label, "lease_token": task["lease_token"]}
    sent = gateway.post(f"/v1/review/{task['task_id']}", json=body, headers={"X-API-Key": key})
    assert sent.status_code == 202, sent.text


def test_gold_accuracy_and_kappa_of_two_reviewers_reach_the_operator(live: Settings) -> None:
    store = Store(live.db_url)
    queue = ReviewQueue(store, QueuePolicy.from_settings(live))
    budgets, _ = queue.set_budgets({"budget_per_hour": 10_000, "budget_per_day": 10_000}, by="test")
    backend = store.engine.dialect.name
    ann, bob = f"gold-ann-{backend}", f"gold-bob-{backend}"
    keys = {n: ApiKeys(store).create(name=n, role="reviewer", created_by="test")[0] for n in (ann, bob)}
    ops = httpx.Client(
        base_url=f"http://{live.host}:{live.controller_port}", timeout=60, headers=role(live, "operator")
    )
    gateway = httpx.Client(base_url=live.serve_url, timeout=60)
    app = httpx.Client(base_url=live.serve_url, timeout=60, headers=role(live, "app"))
    # the gold pool: predictions their users labeled; then items the sampler would queue
    answers = _predict(app, 61, GOLD)
    users, classes = [a["prediction_id"] for a in answers], sorted(answers[0]["probs"])
    for pid in users:
        app.post("/v1/feedback", json={"prediction_id": pid, "label": classes[0]}).raise_for_status()
    queued = [a["prediction_id"] for a in _predict(app, 62, SHARED)]

    def joined() -> bool:
        with Session(store.engine) as s:
            labeled = s.scalars(
                select(LabeledExample.prediction_id).where(
                    LabeledExample.prediction_id.in_(users), LabeledExample.source == "user"
                )
            ).all()
        return len(labeled) == GOLD and len(store.existing(Prediction.prediction_id, queued)) == SHARED

    wait_for("the monitor to store the predictions and join the users' labels", joined, timeout=300)
    for i, pid in enumerate(queued):  # ahead of anything else queued (the sampler may have queued them)
        if not queue.enqueue(pid, priority=2000.0 - i):
            with Session(store.engine) as s, s.begin():
                s.execute(
                    update(ReviewItem).where(ReviewItem.prediction_id == pid).values(priority=2000.0 - i)
                )
    try:
        # every claim a gold item: ann answers three right and one wrong (she cannot tell them apart)
        assert ops.put("/v1/review/shares", json={"gold": 1.0, "overlap": 0.0}).status_code == 200
        golds = [_claim(gateway, keys[ann]) for _ in range(GOLD)]
        expected = {
            i.prediction_id: str(i.expected)
            for i in _items(store, [g["prediction_id"] for g in golds])
            if i.kind == "gold"
        }
        assert len(expected) == GOLD and not set(expected) & set(queued)
        for n, task in enumerate(golds):
            right = expected[task["prediction_id"]]
            _label(gateway, keys[ann], task, right if n else next(c for c in classes if c != right))
        # every labeled item to a second reviewer: ann labels the queued ones...
        assert ops.put("/v1/review/shares", json={"gold": 0.0, "overlap": 1.0}).status_code == 200
        firsts = [_claim(gateway, keys[ann]) for _ in range(SHARED)]
        assert sorted(t["prediction_id"] for t in firsts) == sorted(queued)
        ann_says = {t["prediction_id"]: classes[n % 2] for n, t in enumerate(firsts)}
        for task in firsts:
            _label(gateway, keys[ann], task, ann_says[task["prediction_id"]])
    finally:
        ops.put(
            "/v1/review/shares", json={"gold": live.review_gold_share, "overlap": live.review_overlap_share}
        )
        queue.set_budgets(budgets, by="test")
    # ...and gives their leases back (as the page does once they leave its undo reach): bob gets them
    for task in firsts:
        lease = {"lease_token": task["lease_token"]}
        let_go = gateway.post(
            f"/v1/review/{task['task_id']}/release", json=lease, headers={"X-API-Key": keys[ann]}
        )
        assert let_go.status_code == 200, let_go.text
    seconds = [_claim(gateway, keys[bob]) for _ in range(SHARED)]
    assert sorted(t["prediction_id"] for t in seconds) == sorted(queued)
    bob_says = {
        pid: label if n else next(c for c in classes if c != label)
        for n, (pid, label) in enumerate(ann_says.items())
    }
    for task in seconds:
        _label(gateway, keys[bob], task, bob_says[task["prediction_id"]])

    quality = ops.get("/v1/review/quality").json()
    assert [g for g in quality["gold"] if g["reviewer"] == ann] == [
        {"reviewer": ann, "answered": GOLD, "correct": GOLD - 1, "accuracy": 0.75}
    ]
    [pair] = [p for p in quality["pairs"] if p["reviewers"] == [ann, bob]]
    kappa = cohen_kappa([(ann_says[pid], bob_says[pid]) for pid in queued])
    assert (pair["items"], pair["agreed"]) == (SHARED, SHARED - 1)
    assert pair["kappa"] == pytest.approx(kappa)
    metrics = ops.get("/metrics").text
    assert f'nicheloop_review_gold_accuracy{{reviewer="{ann}"}} 0.75' in metrics
    shown = re.search(rf'nicheloop_review_kappa{{reviewer_a="{ann}",reviewer_b="{bob}"}} (\S+)', metrics)
    assert shown is not None and float(shown.group(1)) == pytest.approx(kappa)
    # gold answers are not feedback; both reviewers' overlap answers are, with each as the actor
    events = [
        e
        for e in (
            parse_event(FEEDBACK_TOPIC, raw) for _, raw in read_topic(live.bootstrap_servers, FEEDBACK_TOPIC)
        )
        if isinstance(e, FeedbackEvent) and e.actor in (ann, bob)
    ]
    assert not {e.prediction_id for e in events} & set(expected)
    assert sorted((e.actor, e.prediction_id) for e in events) == sorted(
        (who, pid) for who in (ann, bob) for pid in queued
    )


def _items(store: Store, prediction_ids: list[str]) -> list[ReviewItem]:
    with Session(store.engine) as s:
        return list(s.scalars(select(ReviewItem).where(ReviewItem.prediction_id.in_(prediction_ids))))
