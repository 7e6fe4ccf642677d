"""The gateway's routes on a plain FastAPI client, their resources swapped in with
``dependency_overrides``: a real model, SQLite store, blob store and review queue; the Kafka
publisher is a recorder (its delivery is tested against a real broker in integration)."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import io

from fastapi.testclient import TestClient
from PIL import Image

from nicheloop.contracts import FEEDBACK_TOPIC, PREDICTIONS_TOPIC, FeedbackEvent, PredictionEvent
from nicheloop.keys import ApiKeys
from nicheloop.review import QueuePolicy, ReviewQueue
from services.api import api
from services.deps import GatewayResources, get_resources
from services.inference import ModelOutput, Pixels
from tests.unit.services.fakes import LocalPredictor, OneVersion, ready

JSON = {"content-type": "application/json"}
Roles = dict[str, dict[str, str]]  # role -> its caller's headers (the ``as_role`` fixture)


def test_not_ready_without_a_champion(client: TestClient, png: bytes) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 503
    resp = client.post("/v1/feedback", json={"prediction_id": "x.y", "label": "ok"})
    assert resp.status_code == 503 and "bootstrap" in resp.json()["detail"]


def test_a_prediction_is_answered_stored_and_published(
    client: TestClient, res: GatewayResources, registry: OneVersion, png: bytes, as_role: Roles
) -> None:
    ready(res, registry)
    assert client.get("/readyz").json() == {"ready": True, "model_version": "1"}
    body = client.post("/v1/predict", files={"image": ("a.png", png, "image/png")}).json()
    assert body["model_version"] == "1" and set(body["probs"]) == {"crack", "ok"}
    [(topic, key, event)] = res.publisher.events  # type: ignore[attr-defined]
    assert (topic, key) == (PREDICTIONS_TOPIC, body["prediction_id"])
    assert isinstance(event, PredictionEvent) and event.image_stats and event.label == body["label"]
    assert client.get(f"/v1/images/{event.image_sha256}", headers=as_role["operator"]).content == png
    not_yours = client.get(f"/v1/images/{event.image_sha256}", headers=as_role["reviewer"])
    assert not_yours.status_code == 404 and "no task of yours" in not_yours.json()["detail"]
    assert client.get(f"/v1/images/{event.image_sha256}").status_code == 403  # not the app's to read
    assert client.post("/v1/predict", content=b"not an image").status_code == 400


def test_feedback_needs_an_issued_id_and_a_known_label(
    client: TestClient, res: GatewayResources, registry: OneVersion, png: bytes
) -> None:
    ready(res, registry)
    pid = client.post("/v1/predict", content=png).json()["prediction_id"]
    assert (
        client.post("/v1/feedback", json={"prediction_id": "0" * 32 + ".abc", "label": "ok"}).status_code
        == 404
    )
    assert client.post("/v1/feedback", json={"prediction_id": pid, "label": "dent"}).status_code == 400
    resp = client.post("/v1/feedback", json={"prediction_id": pid, "label": "crack"})
    assert resp.status_code == 202 and resp.json()["source"] == "user"
    topic, _, sent = res.publisher.events[-1]  # type: ignore[attr-defined]
    assert topic == FEEDBACK_TOPIC and sent.actor == "test-app"  # who gave the label: the key's name


def test_a_caller_over_its_rate_gets_429_and_others_go_on(
    client: TestClient,
    res: GatewayResources,
    registry: OneVersion,
    png: bytes,
    as_role: dict[str, dict[str, str]],
) -> None:
    ready(res, registry)
    res.rates.per_s, res.rates.burst = 0.01, 2
    for _ in range(2):
        assert client.post("/v1/predict", content=png).status_code == 200
    refused = client.post("/v1/feedback", json={"prediction_id": "x", "label": "crack"})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "test-app sends feedback faster" in refused.json()["detail"]
    other = {"X-API-Key": ApiKeys(res.store).create(name="other-app", role="app", created_by="test")[0]}
    assert client.post("/v1/predict", content=png, headers=other).status_code == 200
    metrics = client.get("/metrics", headers=as_role["operator"]).text
    assert "nicheloop_caller_rate_refused_total 1.0" in metrics


def test_an_app_labels_only_its_own_predictions(
    client: TestClient, res: GatewayResources, registry: OneVersion, png: bytes
) -> None:
    ready(res, registry)
    pid = client.post("/v1/predict", content=png).json()["prediction_id"]
    other = {"X-API-Key": ApiKeys(res.store).create(name="other-app", role="app", created_by="test")[0]}
    resp = client.post("/v1/feedback", json={"prediction_id": pid, "label": "crack"}, headers=other)
    assert resp.status_code == 404 and "its own predictions" in resp.json()["detail"]
    assert client.post("/v1/feedback", json={"prediction_id": pid, "label": "crack"}).status_code == 202


def test_a_review_task_is_leased_labeled_once_and_skips_go_back(
    client: TestClient, res: GatewayResources, registry: OneVersion, png: bytes, as_role: Roles
) -> None:
    ann = as_role["reviewer"]  # the reviewer is who the key names: "test-reviewer"
    ready(res, registry)
    assert client.get("/v1/review/next", headers=ann).status_code == 204
    for _ in range(2):
        client.post("/v1/predict", content=png)
    for _, _, event in list(res.publisher.events):  # type: ignore[attr-defined]
        res.store.add_prediction(event)
        res.queue.enqueue(event.prediction_id, 0.5)
    task = client.get("/v1/review/next", headers=ann).json()
    assert task["image_url"].startswith("/v1/images/") and task["class_names"] == ["crack", "ok"]
    assert client.get(task["image_url"], headers=ann).content == png  # the image of ann's own task
    bo = {"X-API-Key": ApiKeys(res.store).create(name="bo", role="reviewer", created_by="t")[0]}
    assert client.get(task["image_url"], headers=bo).status_code == 404  # not bo's task
    label = {"label": "ok", "lease_token": task["lease_token"]}
    resp = client.post(f"/v1/review/{task['task_id']}", json=label, headers=ann)
    assert resp.status_code == 202 and resp.json()["source"] == "reviewer"
    assert res.publisher.events[-1][2].actor == "test-reviewer"  # type: ignore[attr-defined]
    # a second label under the running lease corrects the first (the reviewer's undo)
    corrected = client.post(f"/v1/review/{task['task_id']}", json={**label, "label": "crack"}, headers=ann)
    assert corrected.status_code == 202 and res.publisher.events[-1][2].label == "crack"  # type: ignore[attr-defined]
    assert len(task["probs"]) == 2 and abs(sum(task["probs"]) - 1) < 1e-5 and task["why"]
    # out of the page's undo reach: the lease is given back, and the label can no longer change
    lease = {"lease_token": task["lease_token"]}
    released = client.post(f"/v1/review/{task['task_id']}/release", json=lease, headers=ann)
    assert released.status_code == 200 and released.json()["lease_expires_at"] < task["lease_expires_at"]
    assert client.post(f"/v1/review/{task['task_id']}", json=label, headers=ann).status_code == 409
    other = client.get("/v1/review/next", headers=ann).json()
    unlabeled = {"lease_token": other["lease_token"]}
    assert (
        client.post(f"/v1/review/{other['task_id']}/release", json=unlabeled, headers=ann).status_code == 409
    )
    renewed = client.post(
        f"/v1/review/{other['task_id']}/renew", json={"lease_token": other["lease_token"]}, headers=ann
    )
    assert renewed.status_code == 200 and renewed.json()["lease_expires_at"] >= other["lease_expires_at"]
    skipped = client.post(
        f"/v1/review/{other['task_id']}/skip",
        json={"lease_token": other["lease_token"], "reason": "not a defect image"},
        headers=ann,
    )
    assert skipped.json()["status"] == "queued"
    assert client.get("/v1/whoami", headers=ann).json() == {"name": "test-reviewer", "role": "reviewer"}
    assert client.get("/v1/review/next", headers=ann).status_code == 204  # not again
    stats = client.get("/v1/review/stats", headers=as_role["operator"]).json()
    assert stats["done"] == 1 and stats["queued"] == 1 and stats["budget"]["left_hour"] == 4
    assert client.post("/v1/review/999", json=label, headers=ann).status_code == 404
    assert client.post("/v1/review/999", json=label).status_code == 403  # an app may not label


def test_hostile_ids_and_bodies_get_a_4xx_not_a_500(
    client: TestClient, res: GatewayResources, registry: OneVersion, as_role: Roles
) -> None:
    ready(res, registry)
    forged = client.post("/v1/feedback", json={"prediction_id": "a" * 32 + "." + "é" * 16, "label": "ok"})
    assert forged.status_code == 404  # a non-ASCII tag is simply not one we issued
    for path in ("/v1/review/100000000000000000000", "/v1/review/100000000000000000000/skip"):
        answer = client.post(path, json={"label": "ok", "lease_token": "t"}, headers=as_role["reviewer"])
        assert answer.status_code == 422
    deep = client.post("/v1/predict", content=b'{"image_b64": ' + b"[" * 200_000, headers=JSON)
    assert deep.status_code == 400 and "image_b64" in deep.json()["detail"]
    huge = client.post("/v1/feedback", content=b'{"prediction_id": "' + b"a" * 10**7 + b'"}', headers=JSON)
    assert huge.status_code == 413 and res.publisher.events == []  # type: ignore[attr-defined]


def test_metrics_show_the_spool(client: TestClient, as_role: Roles) -> None:
    text = client.get("/metrics", headers=as_role["operator"]).text
    assert "nicheloop_event_spool_capacity 100.0" in text and "nicheloop_event_spool_depth 0.0" in text


class SlowPredictor(LocalPredictor):
    async def predict(self, pixels: Pixels) -> ModelOutput:
        await asyncio.sleep(5)
        raise AssertionError("the deadline should have fired first")


def test_a_slow_predictor_gets_a_504_naming_it_and_readiness_still_answers(
    client: TestClient, res: GatewayResources, registry: OneVersion, png: bytes
) -> None:
    ready(res, registry)
    slow = SlowPredictor(res.predictor.champion)  # type: ignore[attr-defined]
    settings = res.settings.model_copy(update={"predict_timeout_s": 0.05})
    api.dependency_overrides[get_resources] = lambda: dataclasses.replace(
        res, predictor=slow, settings=settings
    )
    try:
        answer = client.post("/v1/predict", content=png)
        assert answer.status_code == 504 and "NICHELOOP_PREDICT_TIMEOUT_S" in answer.json()["detail"]
        assert client.get("/readyz").status_code == 200
    finally:
        api.dependency_overrides.clear()


def test_a_full_replica_sheds_at_once_with_retry_after(
    client: TestClient, res: GatewayResources, registry: OneVersion, png: bytes, as_role: Roles
) -> None:
    ready(res, registry)
    res.admission.inside = res.admission.limit  # every place taken
    answer = client.post("/v1/predict", content=png)
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert "busy" in answer.json()["detail"] and res.admission.shed == 1
    # refused at the door: before the credential is checked or the body read
    stranger = client.post("/v1/predict", content=b"not an image", headers={"X-API-Key": "nl_nobody"})
    assert stranger.status_code == 503 and res.admission.shed == 2
    assert client.get("/readyz").status_code == 200  # other routes are not admitted
    res.admission.inside = 0
    assert client.post("/v1/predict", content=b"not an image").status_code == 400
    assert res.admission.inside == 0  # a refused body gives its place back
    served = client.post("/v1/predict", content=png)
    assert served.status_code == 200 and res.admission.inside == 0
    steps = {part.split(";")[0] for part in served.headers["server-timing"].split(", ")}
    assert steps == {"prepare", "model", "forward", "publish"}  # the fake predictor has no replica
    assert "nicheloop_predictions_shed_total 2.0" in client.get("/metrics", headers=as_role["operator"]).text


def test_the_resources_dependency_runs_on_the_event_loop() -> None:
    # FastAPI runs a plain-function dependency in a worker thread: a hop on every request
    assert inspect.iscoroutinefunction(get_resources)


def test_the_reviewer_page_is_served_from_the_gateways_origin_and_nothing_else_is(client: TestClient) -> None:
    page = client.get("/review", headers={"X-API-Key": ""})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/pages/review.js">' in page.text and "http" not in page.text.lower()
    script = client.get("/pages/review.js", headers={"X-API-Key": ""})
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "/v1/review/next" in script.text and "https://" not in script.text  # no CDN
    for name in ("..%2Fapi.py", "__init__.py", "secret.key", "review.py"):
        assert client.get(f"/pages/{name}").status_code == 404, name


def _predicted_and_queued(client: TestClient, res: GatewayResources, png: bytes) -> PredictionEvent:
    """One prediction of ``png``, stored and queued for review (as the monitor would)."""
    client.post("/v1/predict", content=png)
    event = res.publisher.events[-1][2]  # type: ignore[attr-defined]
    res.store.add_prediction(event)
    res.queue.enqueue(event.prediction_id, 0.5)
    return event


def test_a_reviewer_sees_where_the_served_model_looked_once_computed_then_cached(
    client: TestClient, res: GatewayResources, registry: OneVersion, png: bytes, as_role: Roles
) -> None:
    ready(res, registry)
    event = _predicted_and_queued(client, res, png)
    task = client.get("/v1/review/next", headers=as_role["reviewer"]).json()
    url = f"{task['image_url']}/saliency"
    shown = client.get(url, headers=as_role["reviewer"])
    assert shown.status_code == 200 and shown.headers["content-type"] == "image/png"
    assert shown.headers["x-model-version"] == "1" and shown.headers["x-saliency-class"] in ("crack", "ok")
    overlay = Image.open(io.BytesIO(shown.content))
    assert overlay.size == (32, 32)  # the model's input: what it saw
    assert (res.settings.home.resolve() / "saliency" / "1" / f"{event.image_sha256}.png").is_file()

    async def broken(pixels: Pixels) -> None:
        raise AssertionError("the cache should have answered")

    res.predictor.saliency = broken  # type: ignore[method-assign]
    again = client.get(url, headers=as_role["operator"])  # an operator may see any image's
    assert again.status_code == 200 and again.content == shown.content
    bo = {"X-API-Key": ApiKeys(res.store).create(name="bo", role="reviewer", created_by="t")[0]}
    assert client.get(url, headers=bo).status_code == 404  # not bo's task
    assert client.get(url).status_code == 403  # an app's key
    assert client.get(f"/v1/images/{'0' * 64}/saliency", headers=as_role["operator"]).status_code == 404


def test_a_gold_answer_is_kept_by_the_queue_and_never_published(
    client: TestClient, res: GatewayResources, registry: OneVersion, png: bytes, as_role: Roles
) -> None:
    ready(res, registry)
    client.post("/v1/predict", content=png)
    event = res.publisher.events[-1][2]  # type: ignore[attr-defined]
    res.store.add_prediction(event)
    res.store.add_feedback(FeedbackEvent(prediction_id=event.prediction_id, label="crack"))  # a user's
    gold = dataclasses.replace(res, queue=ReviewQueue(res.store, QueuePolicy(gold_share=1.0)))
    api.dependency_overrides[get_resources] = lambda: gold
    task = client.get("/v1/review/next", headers=as_role["reviewer"]).json()
    assert task["prediction_id"] == event.prediction_id and "gold" not in str(task)  # not told
    published = len(res.publisher.events)  # type: ignore[attr-defined]
    answer = {"label": "ok", "lease_token": task["lease_token"]}
    done = client.post(f"/v1/review/{task['task_id']}", json=answer, headers=as_role["reviewer"])
    assert done.status_code == 202 and done.json()["source"] == "reviewer"  # answered alike
    assert len(res.publisher.events) == published  # type: ignore[attr-defined]
    assert gold.queue.reviewer_quality()["gold"] == [
        {"reviewer": "test-reviewer", "answered": 1, "correct": 0, "accuracy": 0.0}
    ]
