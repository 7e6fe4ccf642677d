"""The reviewer page in Debian's Chromium, against the gateway's routes (model, publisher and
registry are the stand-ins of :mod:`tests.unit.services.fakes`; the store, queue and page are
real; tests/integration/test_review_page.py runs it on the whole stack): keyboard only, where the
model looked, undo, a skip with its reason, a wrong role refused, no serious accessibility
violation."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from nicheloop.contracts import FeedbackEvent
from nicheloop.review import QueuePolicy, ReviewQueue
from nicheloop.store import ReviewItem
from services.api import api
from services.deps import GatewayResources, get_resources
from tests.browser import NEXT_ITEM, screenshot, serious_violations, serving, sign_in
from tests.unit.services.fakes import OneVersion, ready

ITEMS = 6


@pytest.fixture
def gateway(
    client: TestClient, res: GatewayResources, registry: OneVersion, png: bytes
) -> Iterator[tuple[str, GatewayResources]]:
    """The gateway on a local port with ``ITEMS`` predictions queued for review."""
    ready(res, registry)
    res = dataclasses.replace(res, queue=ReviewQueue(res.store, QueuePolicy(budget_per_hour=100)))
    api.dependency_overrides[get_resources] = lambda: res
    for _ in range(ITEMS):
        client.post("/v1/predict", content=png)
    for i, (_, _, event) in enumerate(list(res.publisher.events)):  # type: ignore[attr-defined]
        res.store.add_prediction(event)
        near = [{"image_sha256": event.image_sha256, "label": "crack", "distance": 0.1}]  # the sampler's
        res.queue.enqueue(event.prediction_id, priority=1.0 - i / 10, neighbours=near if i == 0 else None)
    with serving(api) as url:
        yield url, res


def _labels(res: GatewayResources) -> list[FeedbackEvent]:
    return [e for _, _, e in res.publisher.events if isinstance(e, FeedbackEvent)]  # type: ignore[attr-defined]


def _wait_sent(page: Any, n: int) -> None:
    page.wait_for_function(
        "n => window.nicheloopReview.confirmed + window.nicheloopReview.failed.length >= n", arg=n
    )


def test_a_reviewer_labels_by_keyboard_alone_undoes_and_skips(
    browser: Any, gateway: tuple[str, GatewayResources], as_role: dict[str, dict[str, str]], axe_js: str
) -> None:
    url, res = gateway
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    try:
        sign_in(page, f"{url}/review", as_role["reviewer"]["X-API-Key"])
        page.wait_for_selector("#work:not([hidden]) #top li")
        assert page.text_content("#who") == "Signed in as test-reviewer"
        assert "Why this item" in page.text_content("#why")
        page.wait_for_function("() => window.nicheloopReview.similarShown !== undefined")
        assert page.text_content("#similar figure figcaption") == "crack · 95\u00a0%"
        assert serious_violations(page, axe_js) == []
        screenshot(page, "review-page")
        shown = page.get_attribute("#image", "src")
        page.keyboard.press(".")  # where the model looked
        page.wait_for_function("() => window.nicheloopReview.saliency.on")
        assert page.get_attribute("#image", "src") != shown
        assert "Where version 1 looked for" in page.text_content("#saliency-note")
        screenshot(page, "review-page-saliency")
        page.keyboard.press(".")  # and back to the image
        assert page.get_attribute("#image", "src") == shown and not page.text_content("#saliency-note")
        first = page.evaluate("window.nicheloopReview.current.task_id")
        page.keyboard.press("Enter")  # the model's top class
        page.keyboard.press("2")  # its second
        page.wait_for_function(NEXT_ITEM, arg=first)
        page.keyboard.press("Backspace")  # undo the "2": the task comes back, labeled anew
        page.keyboard.press("c")  # "crack" by its letter
        page.keyboard.press("/")
        assert page.is_visible("#skip")
        page.keyboard.press("2")  # "not a defect image"
        page.keyboard.press("?")
        assert page.is_visible("#help")
        page.keyboard.press("Escape")
        _wait_sent(page, 4)  # the first label, the "2", its correction and the skip
        assert page.evaluate("window.nicheloopReview.failed.length") == 0
        assert page.evaluate("window.nicheloopReview.timings.length") >= 3
    finally:
        page.close()
    labels = _labels(res)
    assert [e.actor for e in labels] == ["test-reviewer"] * 3 and {e.source for e in labels} == {"reviewer"}
    assert (
        labels[1].prediction_id == labels[2].prediction_id and labels[2].label == "crack"
    )  # the newest wins
    with Session(res.store.engine) as s:
        skipped = [r for r in s.query(ReviewItem) if r.skip_reasons]
    assert [r.skip_reasons for r in skipped] == [["not a defect image"]]
    assert res.queue.stats()["done"] == 2


def test_a_key_of_another_role_or_none_gets_no_review_work(
    browser: Any, gateway: tuple[str, GatewayResources], as_role: dict[str, dict[str, str]]
) -> None:
    url, res = gateway
    page = browser.new_page()
    try:
        page.goto(f"{url}/review")
        for key, words in [(as_role["app"]["X-API-Key"], "for reviewers"), ("nlk_" + "x" * 43, "not one of")]:
            page.fill("#key", key)
            page.keyboard.press("Enter")
            page.wait_for_function("() => document.getElementById('signin-error').textContent.length > 0")
            assert words in page.text_content("#signin-error")
            assert page.is_hidden("#work")
            page.evaluate("document.getElementById('signin-error').textContent = ''")
    finally:
        page.close()
    assert res.queue.stats()["in_review"] == 0  # nothing was leased to anyone
