"""The operator page in Debian's Chromium, against the controller's routes (MLflow is the stand-in
registry of tests/unit/rollout/test_controller.py; the store and the page are real): an operator
starts a candidate and rolls it back, each act confirmed and in the audit log on the page; sets a
review budget; sees a drift alarm on the timeline and opens its window's images and Evidently
report; another role is refused; no serious accessibility violation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from nicheloop.blobs import BlobStore
from nicheloop.contracts import FeedbackEvent, utcnow
from nicheloop.driftlog import DriftLog
from nicheloop.keys import ApiKeys, Audit
from nicheloop.latency import bucket
from nicheloop.review import QueuePolicy, ReviewQueue
from nicheloop.rollouts import ArmCalls, Rollout, Rollouts
from nicheloop.store import Store
from nicheloop.synthetic import SyntheticStream, png_bytes
from rollout.operations import Operations
from rollout.policy import RetrainPolicy
from rollout.retrain import PolicyEvidence, PolicyLoop
from rollout.runner import controller_api
from tests.browser import screenshot, serious_violations, serving, sign_in
from tests.unit.rollout.test_controller import Registry
from tests.unit.rollout.test_evidence import _prediction as _scored
from tests.unit.rollout.test_retrain import Registry as PolicyRegistry
from tests.unit.rollout.test_retrain import _served as _labeled
from tests.unit.rollout.test_views import _prediction, _window


@pytest.fixture
def controller(rollouts: Rollouts) -> Iterator[tuple[str, Rollouts, dict[str, str]]]:
    ops = Operations(rollouts, Registry())
    ops.adopt(actor="setup", reason="the first champion", version="1")
    keys = ApiKeys(rollouts.store)
    made = {
        role: keys.create(name=f"page-{role}", role=role, created_by="t")[0]
        for role in ("operator", "reviewer")
    }
    policy = PolicyLoop(
        PolicyEvidence(rollouts.store, PolicyRegistry(None, newest=3600, t0=time.time())),
        RetrainPolicy(),
        holder="t",
        model_name="m",
    )
    with serving(controller_api(ops, review=QueuePolicy(budget_per_hour=120), policy=policy)) as url:
        yield url, rollouts, made


def _confirm(page: Any, action: str, reason: str) -> None:
    page.click(f"button[data-action={action}]")
    assert page.is_visible("#confirm")
    page.fill("#confirm-reason", reason)
    page.click("#confirm-yes")
    result = "policy-result" if action.startswith("policy-") else "act-result"
    page.wait_for_function(f"() => document.getElementById('{result}').textContent.length > 0")


def test_an_operator_starts_and_rolls_back_a_candidate_and_the_audit_log_shows_it(
    browser: Any, controller: tuple[str, Rollouts, dict[str, str]], axe_js: str
) -> None:
    url, rollouts, keys = controller
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    try:
        sign_in(page, f"{url}/operate", keys["operator"])
        page.wait_for_selector("#work:not([hidden]) #status dd")
        assert page.text_content("#who") == "Signed in as page-operator"
        page.click("#controls button[data-action=start]")
        page.click("#confirm-no")  # asked, then thought better of it: nothing moves
        assert page.is_hidden("#confirm") and rollouts.live() is None
        _confirm(page, "start", "")
        assert "done (shadow)" in page.text_content("#act-result")
        page.wait_for_function("() => document.getElementById('status').textContent.includes('shadow')")
        live = rollouts.live()
        assert live is not None and live.id is not None
        calls = ArmCalls(300, 3, {bucket(50.0): 300})
        rollouts.add_calls({(live.id, "champion"): calls}, now=time.time())  # as a gateway flushes
        page.wait_for_function(
            "() => document.querySelectorAll('#arms tbody tr').length === 1", timeout=15_000
        )
        assert page.text_content("#arms tbody tr").startswith("champion1")  # 300 calls over 300 s
        _confirm(page, "rollback", "drift on the new line")
        assert "done (rolled_back)" in page.text_content("#act-result")
        page.wait_for_function(
            "() => document.getElementById('audit').textContent.includes('drift on the new line')"
        )
        audit = page.text_content("#audit")
        assert "rollout.rollback" in audit and "rollout.start" in audit and "page-operator" in audit
        page.fill("#budget-form input[name=per_hour]", "30")
        page.click("#budget-form button[type=submit]")
        page.wait_for_function(
            "() => document.getElementById('budget-result').textContent === 'Budgets set.'"
        )
        page.fill("#shares-form input[name=gold]", "10")
        page.fill("#shares-form input[name=overlap]", "25")
        # a refresh while the operator is on the second field keeps the first one's edit
        updated = page.text_content("#updated")
        page.wait_for_function(
            "u => document.getElementById('updated').textContent !== u", arg=updated, timeout=15_000
        )
        assert page.input_value("#shares-form input[name=gold]") == "10"
        page.click("#shares-form button[type=submit]")
        page.wait_for_function("() => document.getElementById('shares-result').textContent === 'Shares set.'")
        assert ReviewQueue(rollouts.store).shares() == {"gold_share": 0.1, "overlap_share": 0.25}
        assert page.locator("#share-chart path.share").count() == 1
        assert serious_violations(page, axe_js) == []
        screenshot(page, "operate-page")
    finally:
        page.close()
    latest = rollouts.latest()
    assert latest is not None and latest.state == "rolled_back"
    entries = Audit(rollouts.store).read()
    assert [e.action for e in entries][:4] == [
        "review.shares",
        "review.budget",
        "rollout.rollback",
        "rollout.start",
    ]
    assert entries[0].detail == {
        "before": {"gold": 0.0, "overlap": 0.0},
        "after": {"gold": 0.1, "overlap": 0.25},
    }
    assert (
        entries[1].detail["after"]["per_hour"] == 30
        and entries[2].detail["reason"] == "drift on the new line"
    )


def test_a_reviewer_key_gets_no_operator_page(
    browser: Any, controller: tuple[str, Rollouts, dict[str, str]]
) -> None:
    url, rollouts, keys = controller
    page = browser.new_page()
    try:
        sign_in(page, f"{url}/operate", keys["reviewer"])
        page.wait_for_function("() => document.getElementById('signin-error').textContent.length > 0")
        assert "for operators" in page.text_content("#signin-error") and page.is_hidden("#work")
    finally:
        page.close()
    assert Audit(rollouts.store).read() == []


def test_an_operator_sees_a_drift_alarm_on_the_timeline_and_opens_its_images_and_report(
    browser: Any, rollouts: Rollouts, tmp_path: Path, axe_js: str
) -> None:
    store, blobs = rollouts.store, BlobStore(str(tmp_path / "blobs"))
    (tmp_path / "reports" / "3").mkdir(parents=True)
    report = tmp_path / "reports" / "3" / "alarm.html"
    report.write_text("<html><body><h1>evidently data drift</h1></body></html>")
    shas = [blobs.put(png_bytes(img)) for img, _ in SyntheticStream(seed=3, size=64).take(20)]
    for i, sha in enumerate(shas):
        store.add_prediction(_prediction(i, sha))
    log = DriftLog(store)
    log.record([_window(None, report=None, p=0.3, first=0, last=9)])
    log.record([_window("raised", report=str(report), p=1e-6, first=10, last=19)])
    ops = Operations(rollouts, Registry())
    key = ApiKeys(store).create(name="page-operator", role="operator", created_by="t")[0]
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    app = controller_api(ops, blobs=blobs, reports=tmp_path / "reports")
    try:
        with serving(app) as url:
            sign_in(page, f"{url}/operate", key)
            page.wait_for_selector("#drift-alarms button.alarm-raised")
            assert "Alarm raised now: image" in page.text_content("#drift-summary")
            assert page.locator("#drift-charts circle").count() == 2
            assert page.locator("#drift-charts circle.drifted").count() == 1
            page.click("#drift-alarms button.alarm-raised")
            page.wait_for_function("() => window.nicheloopOperate.drift.open?.images === 10")
            assert "alarm raised" in page.text_content("#drift-window-title")
            assert page.locator("#drift-images img").count() == 10
            assert serious_violations(page, axe_js) == []
            screenshot(page, "operate-page-drift")
            with page.expect_popup() as opened:
                page.click("#drift-report")
            popup = opened.value
            popup.wait_for_load_state()
            assert "evidently data drift" in popup.text_content("h1")
            popup.close()
    finally:
        page.close()


def test_an_operator_reads_per_class_figures_and_sees_where_the_candidate_disagrees(
    browser: Any, rollouts: Rollouts, tmp_path: Path, axe_js: str
) -> None:
    store, blobs, now = rollouts.store, BlobStore(str(tmp_path / "blobs")), time.time()
    rollouts.record_champion("1", previous=None, actor="t", reason="first", now=now - 600)
    rollouts.create(Rollout("2", "1", mirror=0.5, entered_at=now), plan={}, actor="t", reason="", now=now)
    said = [("a", "a"), ("a", "b"), ("b", "b"), ("a", "b"), ("b", "a")]  # champion, candidate
    truth = ["a", "b", "b", "b", None]
    for i, (img, _) in enumerate(SyntheticStream(seed=4, size=64).take(len(said))):
        sha = blobs.put(png_bytes(img))
        champ, cand = said[i]
        store.add_prediction(
            _scored(f"c{i}", "1", champ, now + 1 + i, arm="champion").model_copy(update={"image_sha256": sha})
        )
        store.add_prediction(
            _scored(f"s{i}", "2", cand, now + 1 + i, arm="shadow", paired_with=f"c{i}").model_copy(
                update={"image_sha256": sha}
            )
        )
        if truth[i] is not None:
            store.add_feedback(FeedbackEvent(prediction_id=f"c{i}", label=truth[i]))
    _gold_and_overlap(store)
    key = ApiKeys(store).create(name="page-operator", role="operator", created_by="t")[0]
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    try:
        with serving(controller_api(Operations(rollouts, Registry()), blobs=blobs)) as url:
            sign_in(page, f"{url}/operate", key)
            page.wait_for_function("() => window.nicheloopOperate.classes?.n === 4")
            # labeled a, b, b, b; the champion said a, a, b, a
            assert page.locator("#confusion tbody tr").count() == 2
            assert page.locator("#confusion tbody tr").nth(1).text_content() == "b21"
            assert page.locator("#per-class tbody tr").count() == 2
            assert page.locator("#mix-chart rect").count() >= 1
            page.wait_for_function("() => document.querySelectorAll('#gallery img').length === 3")
            assert "3 with different answers" in page.text_content("#versions-summary")
            assert "champion 50 %, candidate 100 %" in page.text_content("#versions-summary")
            assert "+67 points" in page.text_content("#versions-classes")  # class b: 1 of 3, then 3 of 3
            page.wait_for_function("() => window.nicheloopOperate.agreement !== undefined")
            assert "users: 2 of 4 agreed (50 %)" in page.text_content("#agreement-legend")
            page.wait_for_function("() => window.nicheloopOperate.reviewers !== undefined")
            assert page.text_content("#gold tbody") == "ann11 (100 %)"
            assert page.text_content("#kappa tbody") == "ann · bob111.00"
            assert serious_violations(page, axe_js) == []
            screenshot(page, "operate-page-quality")
    finally:
        page.close()


def _gold_and_overlap(store: Store) -> None:
    """ann answers a gold item rightly; ann then bob label the same queued item alike."""
    gold = ReviewQueue(store, QueuePolicy(gold_share=1.0)).claim("ann")
    assert gold is not None and gold.kind == "gold" and gold.expected
    ReviewQueue(store).complete(gold.task_id, gold.expected, gold.lease_token or "")
    overlap, now = ReviewQueue(store, QueuePolicy(overlap_share=1.0, lease_s=60)), utcnow()
    overlap.enqueue("c4", priority=1.0)
    for who, at in (("ann", now), ("bob", now + timedelta(seconds=120))):
        item = overlap.claim(who, now=at)
        assert item is not None and item.prediction_id == "c4"
        overlap.complete(item.task_id, "a", item.lease_token or "", now=at)


def test_an_operator_reads_the_policys_verdict_and_pauses_it_with_a_reason(
    browser: Any, controller: tuple[str, Rollouts, dict[str, str]]
) -> None:
    url, rollouts, keys = controller
    for i, truth in enumerate("bba"):  # three new labels, two of class b
        _labeled(rollouts.store, f"n{i}", time.time() - 60, "a", truth)
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    try:
        sign_in(page, f"{url}/operate", keys["operator"])
        page.wait_for_selector("#policy dd")
        assert page.text_content("#policy-verdict").startswith("Wait (cooldown)")  # the champion is new
        assert "new labels3 (b 2, a 1)" in page.text_content("#policy")  # most first
        assert "acts on its verdicts" in page.text_content("#policy")
        assert "none: no image or embedding alarm" in page.text_content("#policy")  # no stopgap due
        assert "new worldnone: the champion was trained for the world its line began in" in page.text_content(
            "#policy"
        )
        assert page.is_hidden("[data-action=policy-resume]")
        _confirm(page, "policy-pause", "relabeling the scratches")
        assert "done (paused)" in page.text_content("#policy-result")
        page.wait_for_function(
            "() => document.getElementById('policy').textContent.includes('paused by page-operator')"
        )
        assert rollouts.policy_pause() is not None and page.is_hidden("[data-action=policy-pause]")
        _confirm(page, "policy-resume", "")  # a reason is required
        assert "refused (422)" in page.text_content("#policy-result")
        _confirm(page, "policy-resume", "done relabeling")
        page.wait_for_function(
            "() => document.getElementById('policy').textContent.includes('acts on its verdicts')"
        )
        assert rollouts.policy_pause() is None
    finally:
        page.close()
    assert [e.action for e in Audit(rollouts.store).read(action="policy")] == [
        "policy.resume",
        "policy.pause",
    ]
