"""The operator page on the whole stack, in Debian's Chromium: after the demo's shifted stream the
drift timeline shows the alarm the monitor raised, with a sample of the window's images and its
Evidently report; the operator starts a candidate and rolls it back from the page, and the audit
log on the page shows both acts under the operator's name."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from cli.demo import demo_keys, send_labeled, wait_for
from nicheloop.driftlog import DriftLog
from nicheloop.registry import Registry
from nicheloop.rollouts import Rollouts
from nicheloop.settings import Settings
from nicheloop.store import Store
from nicheloop.synthetic import DEMO_SHIFT, SyntheticStream
from tests.browser import screenshot, sign_in
from tests.integration.conftest import register_candidate, role

pytestmark = pytest.mark.integration


def _raised(store: Store) -> bool:
    windows = DriftLog(store).timeline(since=datetime(2000, 1, 1, tzinfo=UTC))
    return any(w.change == "raised" for w in windows)


def _confirm(page: Any, action: str, reason: str) -> str:
    page.evaluate("() => { document.getElementById('act-result').textContent = ''; }")
    page.click(f"#controls button[data-action={action}]")
    page.fill("#confirm-reason", reason)
    page.click("#confirm-yes")
    page.wait_for_function("() => document.getElementById('act-result').textContent.length > 0")
    return str(page.text_content("#act-result"))


def test_an_operator_sees_the_drift_alarm_and_rolls_a_candidate_back_from_the_page(
    live: Settings, browser: Any
) -> None:
    store = Store(live.db_url)
    rollouts = Rollouts(store)
    # a shifted stream raises an alarm (the whole loop's test may have sent one already), and
    # the monitor stores its window
    if not _raised(store):
        with httpx.Client(base_url=live.serve_url, timeout=60, headers=role(live, "app")) as app:
            send_labeled(app, SyntheticStream(seed=77, size=64), 300, shift=DEMO_SHIFT)
    wait_for("the monitor to store a raised alarm", lambda: _raised(store), timeout=300)
    candidate = register_candidate(live, Registry(live.tracking_uri, live.model_name), trained=True)
    operator = demo_keys(live)["operator"]
    backend = store.engine.dialect.name
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    try:
        sign_in(page, f"http://{live.host}:{live.controller_port}/operate", operator)
        page.wait_for_selector("#drift-alarms button.alarm-raised")
        assert page.locator("#drift-charts circle.drifted").count() >= 1
        page.locator("#drift-alarms button.alarm-raised", has_text="image alarm raised").first.click()
        page.wait_for_function("() => window.nicheloopOperate.drift.open?.images > 0")
        with page.expect_popup() as opened:
            page.click("#drift-report")
        report = opened.value
        report.wait_for_load_state()  # Evidently's scripts draw it, in the sandbox the route sets
        report.wait_for_function("() => document.body.innerText.includes('Drift')", timeout=60_000)
        report.close()
        screenshot(page, f"operate-page-live-drift-{backend}")
        # every publisher (gateways, monitor, controller) reports its spool: none waits here
        page.wait_for_function(
            "() => /events waiting for Kafka0 in [1-9]\\d* spools/"
            ".test(document.getElementById('status').textContent)"
        )

        assert "done (shadow)" in _confirm(page, "start", "")
        page.wait_for_function(
            "v => document.getElementById('status').textContent.includes(v)", arg=candidate.version
        )
        assert "done (rolled_back)" in _confirm(page, "rollback", "drifted line, not this candidate's day")
        page.wait_for_function(
            "() => document.getElementById('audit').textContent.includes(\"not this candidate's day\")"
        )
        audit = page.text_content("#audit") or ""
        assert "rollout.rollback" in audit and "rollout.start" in audit and "demo-operator" in audit
        screenshot(page, f"operate-page-live-rollback-{backend}")
    finally:
        page.close()
    latest = rollouts.latest()
    assert latest is not None and (latest.state, latest.candidate) == ("rolled_back", candidate.version)
