"""The reviewer page on the whole stack, in Debian's Chromium: a reviewer signs in and labels
twenty queued items by keyboard alone, looks where the model looked on one, undoes one and skips
one; every decision is a reviewer feedback event on Kafka, joined in the store with the reviewer
as its actor."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from nicheloop.bus import parse_event, read_topic
from nicheloop.contracts import FEEDBACK_TOPIC, FeedbackEvent, aware, utcnow
from nicheloop.keys import ApiKeys
from nicheloop.review import QueuePolicy, ReviewQueue
from nicheloop.settings import Settings
from nicheloop.store import LabeledExample, Prediction, ReviewItem, Store
from nicheloop.synthetic import SyntheticStream, png_bytes
from tests.browser import NEXT_ITEM, screenshot, sign_in
from tests.integration.conftest import role

pytestmark = pytest.mark.integration

LABELED, SKIPPED = 20, 1


def _until(what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def test_a_reviewer_labels_twenty_items_by_keyboard_and_every_decision_is_joined(
    live: Settings, browser: Any
) -> None:
    store = Store(live.db_url)
    queue = ReviewQueue(store, QueuePolicy.from_settings(live))
    before, _ = queue.set_budgets({"budget_per_hour": 10_000, "budget_per_day": 10_000}, by="test")
    backend = store.engine.dialect.name
    name = f"page-reviewer-{backend}"
    key, _ = ApiKeys(store).create(name=name, role="reviewer", created_by="test")
    app = httpx.Client(base_url=live.serve_url, timeout=60, headers=role(live, "app"))
    pids = [
        app.post("/v1/predict", files={"image": ("x.png", png_bytes(img), "image/png")}).json()[
            "prediction_id"
        ]
        for img, _ in SyntheticStream(seed=41, size=64).take(LABELED + SKIPPED + 3)
    ]
    # the monitor may be working through a backlog (the broker outage test before this one)
    _until(
        "the monitor to store the predictions",
        lambda: len(store.existing(Prediction.prediction_id, pids)) == len(pids),
        timeout=300,
    )
    # ahead of anything else queued; the active sampler may have queued some of these already
    # (enqueue is idempotent), so their priority is raised in place
    already = {pid: 1000.0 - i for i, pid in enumerate(pids) if not queue.enqueue(pid, priority=1000.0 - i)}
    with Session(store.engine) as s, s.begin():
        for pid, priority in already.items():
            s.execute(update(ReviewItem).where(ReviewItem.prediction_id == pid).values(priority=priority))
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        sign_in(page, f"{live.serve_url}/review", key)
        page.wait_for_selector("#work:not([hidden]) #top li")
        page.keyboard.press(".")  # where the served model looked: a predictor replica's Grad-CAM
        page.wait_for_function("() => window.nicheloopReview.saliency.on", timeout=60_000)
        assert "looked for" in (page.text_content("#saliency-note") or "")
        page.keyboard.press(".")
        keys = ["Enter", "2", "Enter", "c", "Enter"] * 4  # the top class, the second, a letter
        for i, pressed in enumerate(keys, start=1):
            shown = page.evaluate("window.nicheloopReview.current.task_id")
            page.keyboard.press(pressed)
            page.wait_for_function(NEXT_ITEM, arg=shown)
            if i == 5:  # undo the fifth label and give it again by the top class
                page.keyboard.press("Backspace")
                page.wait_for_function("id => window.nicheloopReview.current?.task_id === id", arg=shown)
                page.keyboard.press("Enter")
        page.keyboard.press("/")
        page.keyboard.press("1")  # skip: unsure
        page.wait_for_function(
            "n => window.nicheloopReview.confirmed + window.nicheloopReview.failed.length >= n",
            arg=LABELED + 1 + SKIPPED,
        )
        assert page.evaluate("window.nicheloopReview.failed.length") == 0
        screenshot(page, f"review-page-live-{backend}")
    finally:
        page.close()
        queue.set_budgets(before, by="test")  # the other tests see the settings' budgets again
    # every label is a reviewer feedback event on Kafka, with the reviewer as its actor
    events = [
        parse_event(FEEDBACK_TOPIC, raw) for _, raw in read_topic(live.bootstrap_servers, FEEDBACK_TOPIC)
    ]
    mine = [e for e in events if isinstance(e, FeedbackEvent) and e.actor == name]
    assert len(mine) == LABELED + 1 and {e.source for e in mine} == {"reviewer"}
    labeled = {e.prediction_id for e in mine}
    assert len(labeled) == LABELED and labeled <= set(pids)
    # and joined in the store, the corrected one with its newest label
    newest = {e.prediction_id: e.label for e in sorted(mine, key=lambda e: e.created_at)}

    def joined() -> dict[str, str]:
        with Session(store.engine) as s:
            rows = s.execute(
                select(LabeledExample.prediction_id, LabeledExample.label).where(
                    LabeledExample.actor == name, LabeledExample.source == "reviewer"
                )
            ).all()
        return dict(rows) if len(rows) == LABELED else {}

    assert _until("the reviewer's labels to be joined", joined, timeout=300) == newest
    with Session(store.engine) as s:
        rows = s.scalars(select(ReviewItem.skip_reasons).where(ReviewItem.prediction_id.in_(pids)))
        reasons: list[list[str]] = [r for r in rows if r]
    assert reasons == [["unsure"]]
    # the skip, the 21st decision, took the first label out of undo's reach: its lease was given back

    def released() -> list[int]:
        with Session(store.engine) as s:
            done = s.scalars(
                select(ReviewItem).where(ReviewItem.prediction_id.in_(pids), ReviewItem.status == "done")
            ).all()
        return [r.task_id for r in done if r.lease_expires_at and aware(r.lease_expires_at) <= utcnow()]

    assert len(_until("the first label's lease to be given back", released, timeout=30)) == 1
