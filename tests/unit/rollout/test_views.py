"""What the operator page reads from the controller besides the rollout: the drift timeline, one
window with its images and a signed link to its Evidently report, and the stored images."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from nicheloop.blobs import BlobStore
from nicheloop.contracts import FeedbackEvent, PredictionEvent
from nicheloop.driftlog import DriftLog, DriftWindow
from nicheloop.keys import ApiKeys
from nicheloop.rollouts import Rollouts
from rollout.operations import Operations
from rollout.runner import controller_api
from tests.unit.rollout.test_controller import Registry

START = datetime.now(UTC) - timedelta(minutes=30)


def _prediction(i: int, sha: str) -> PredictionEvent:
    return PredictionEvent(
        prediction_id=f"p{i}",
        model_name="m",
        model_version="3",
        label="a",
        probs=[0.9, 0.1],
        class_names=["a", "b"],
        uncertainty=0.1,
        embedding=[0.0, 1.0],
        image_sha256=sha,
        created_at=START + timedelta(seconds=i),
        arm="champion",
    )


def _window(change: str | None, *, report: str | None, p: float, first: int, last: int) -> DriftWindow:
    return DriftWindow(
        model_version="3",
        monitor="image",
        feed="inputs",
        status="ok",
        n=last - first + 1,
        alpha=0.01,
        drifted=p < 0.01,
        alarm=p < 0.01,
        score=1 - p,
        p_value=p,
        change=change,
        started_at=START + timedelta(seconds=first),
        ended_at=START + timedelta(seconds=last),
        report=report,
    )


def test_operators_read_the_drift_timeline_a_windows_images_and_its_report_by_a_signed_link(
    rollouts: Rollouts, tmp_path: Path
) -> None:
    store, blobs = rollouts.store, BlobStore(str(tmp_path / "blobs"))
    reports = tmp_path / "reports"
    (reports / "3").mkdir(parents=True)
    page = reports / "3" / "alarm.html"
    page.write_text("<html><script>1</script>evidently</html>")
    images = [blobs.put(f"image {i}".encode()) for i in range(20)]
    for i, sha in enumerate(images):
        store.add_prediction(_prediction(i, sha))
    log = DriftLog(store)
    log.record([_window(None, report=None, p=0.4, first=0, last=9)])
    log.record([_window("raised", report=str(page), p=1e-5, first=10, last=19)])
    log.record([_window(None, report=str(tmp_path / "elsewhere.html"), p=1e-5, first=10, last=19)])
    keys = ApiKeys(store)
    ops = {"X-API-Key": keys.create(name="ops", role="operator", created_by="t")[0]}
    rev = {"X-API-Key": keys.create(name="rev", role="reviewer", created_by="t")[0]}
    app = controller_api(Operations(rollouts, Registry()), blobs=blobs, reports=reports)
    client = TestClient(app, raise_server_exceptions=False, headers=ops)

    timeline = client.get("/v1/drift/timeline", params={"hours": 2}).json()
    assert [(w["change"], w["p_value"], w["report"]) for w in timeline["windows"]] == [
        (None, 0.4, False),
        ("raised", 1e-5, True),
        (None, 1e-5, True),
    ]
    assert client.get("/v1/drift/timeline", headers=rev).status_code == 403
    assert client.get("/v1/drift/timeline", params={"hours": 0}).status_code == 422

    raised = timeline["windows"][1]
    shown = client.get(f"/v1/drift/windows/{raised['id']}").json()
    # the sample is of the window's span: images 10..19, each readable by the operator
    assert len(shown["images"]) == 10 and set(shown["images"]) == set(images[10:])
    assert client.get(f"/v1/images/{shown['images'][0]}").content.startswith(b"image 1")
    assert client.get(f"/v1/images/{shown['images'][0]}", headers=rev).status_code == 403
    # the report opens by its signed link alone, sandboxed; a forged or stale link does not
    report = client.get(shown["report_url"], headers={"X-API-Key": ""})
    assert report.status_code == 200 and b"evidently" in report.content
    assert report.headers["content-security-policy"].startswith("sandbox allow-scripts")
    forged = shown["report_url"].replace("sig=", "sig=0")[:-1]
    assert client.get(forged).status_code == 403
    stale = int(time.time()) - 1
    assert (
        client.get(f"/v1/drift/windows/{raised['id']}/report?expires={stale}&sig={'0' * 64}").status_code
        == 403
    )
    # a report path outside the reports folder is never read; unknown windows are a 404
    outside = client.get(f"/v1/drift/windows/{timeline['windows'][2]['id']}").json()
    gone = client.get(outside["report_url"])
    assert gone.status_code == 404 and "gone from" in gone.json()["detail"]
    assert client.get("/v1/drift/windows/999").status_code == 404
    # an outcome window's sample is of the images whose user labels came in its span
    labeled_at = datetime.now(UTC)
    for i in (3, 4, 5):
        store.add_feedback(FeedbackEvent(prediction_id=f"p{i}", label="b", created_at=labeled_at))
    span = dict(started_at=labeled_at - timedelta(seconds=1), ended_at=labeled_at + timedelta(seconds=1))
    log.record(
        [
            dataclasses.replace(
                _window("raised", report=None, p=1e-4, first=0, last=1),
                feed="outcomes",
                monitor="label",
                **span,
            )
        ]
    )
    outcomes = client.get("/v1/drift/timeline").json()["windows"][-1]
    assert set(client.get(f"/v1/drift/windows/{outcomes['id']}").json()["images"]) == set(images[3:6])
    assert client.get(f"/v1/drift/windows/{timeline['windows'][0]['id']}").json()["report_url"] is None
