"""The loop of the demo against the real broker, MLflow, Ray Train and Ray Serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaProducer
from sqlalchemy import select
from sqlalchemy.orm import Session

from cli.demo import DEMO_PLAN, drive_rollout, run_loop, send_labeled, wait_for
from deploy.local import stack
from monitoring.drift.report import list_reports
from nicheloop.bus import dead_letters, parse_event, read_topic
from nicheloop.cluster import port_open
from nicheloop.contracts import (
    CHAMPION,
    DECISIONS_TOPIC,
    DRIFT_TOPIC,
    PREDICTIONS_TOPIC,
    PolicyDecided,
    PredictionEvent,
)
from nicheloop.driftlog import INPUT_MONITORS, DriftLog
from nicheloop.errors import NotFound
from nicheloop.keys import ApiKeys, Audit
from nicheloop.registry import MANIFEST, Registry
from nicheloop.review import QueuePolicy, ReviewQueue
from nicheloop.rollouts import Rollouts
from nicheloop.settings import Settings, settings_env
from nicheloop.store import LabeledExample, Store
from nicheloop.synthetic import DEMO_SHIFT, Shift, SyntheticStream
from rollout.operations import Operations
from rollout.plan import load_plan
from rollout.stats import mcnemar
from tests.integration.conftest import QUIET_POLICY, register_candidate, role

pytestmark = pytest.mark.integration

PREDICTIONS = 160


def test_the_whole_loop_counts_agree_across_systems(live: Settings) -> None:
    # the demo's six epochs: with three the candidate once lost its shadow to the champion (15
    # against 4 of 90 labeled pairs), and with two it sometimes did
    summary = run_loop(live, predictions=PREDICTIONS)
    print(json.dumps(summary))
    # every served prediction is one event in Kafka and one row in the store
    assert summary["predictions_served"] == summary["prediction_events_in_kafka"] >= PREDICTIONS
    # every feedback event (user and reviewer) was joined into a labeled example
    assert summary["feedback_joined"] == summary["feedback_events_in_kafka"] >= PREDICTIONS // 2
    assert summary["reviewed"] == summary["reviewed_by_demo"] >= 1
    # the retraining policy waits: a version was registered minutes ago (its cooldown)
    assert summary["policy_verdict"].startswith("wait (cooldown): the last run ended")
    # the shift is seen by the drift monitor, the unshifted stream is not
    assert summary["drift_detected_before"] is False and summary["drift_detected_after_shift"] is True
    assert summary["drift_score_after_shift"] > summary["drift_score_before"]
    # the alarm went out as drift events: raised for the served version, once per monitor
    drift = [parse_event(DRIFT_TOPIC, raw) for _, raw in read_topic(live.bootstrap_servers, DRIFT_TOPIC)]
    raised = [
        e.monitor
        for e in drift
        if e.state == "raised" and e.model_version == summary["champion_version_before"]
    ]
    assert raised and len(raised) == len(set(raised))
    # each alarm came with an Evidently report of its window, indexed for `nicheloop drift report`
    reports = [e for e in drift if e.state == "raised" and e.report]
    assert reports and all(Path(e.report).is_file() for e in reports if e.report)
    assert any("raised" in entry["reason"] for entry in list_reports(live.drift_report_dir))
    # a new version was trained, passed the gate and is what the endpoint serves now
    after = str(int(summary["champion_version_before"]) + 1)
    assert summary["champion_version_after"] == summary["served_version_after"] == after
    # on the same hold-out: the two accuracies differ by the images only one of them got right, and
    # the candidate lost none beyond chance (the demo plan's level; one image moves ~120 by a point)
    mine, theirs = summary["holdout_candidate_only"], summary["holdout_parent_only"]
    gained = summary["holdout_accuracy_after"] - summary["holdout_accuracy_before"]
    assert gained == pytest.approx((mine - theirs) / summary["holdout_examples"])
    assert mine >= theirs or mcnemar(mine, theirs) >= load_plan(DEMO_PLAN).alpha


def test_the_new_champion_carries_lineage(live: Settings) -> None:
    registry = Registry(live.tracking_uri, live.model_name)
    champion = registry.resolve(CHAMPION)
    loaded = registry.load(champion.version)
    assert len(champion.tags["snapshot_digest"]) == 64 and champion.tags["parent_version"].isdigit()
    assert json.loads(champion.tags["train_config"])["epochs"] >= 1
    ref = loaded.reference
    assert ref.embeddings.ndim == 2 and ref.embeddings.shape[1] > 0 and len(ref.stats) == len(ref.embeddings)
    assert len(ref.probs) == len(ref.labels) == len(ref.embeddings) and 0.0 <= ref.accuracy <= 1.0
    assert ref.early.shape == (len(ref.embeddings), 24 + 40)  # lite0's stride-4 and stride-8 maps
    # what the endpoint publishes is comparable with it: the same early features, row for row
    events = [
        parse_event(PREDICTIONS_TOPIC, raw)
        for _, raw in read_topic(live.bootstrap_servers, PREDICTIONS_TOPIC)
    ]
    served = [e for e in events if isinstance(e, PredictionEvent) and e.model_name == live.model_name]
    assert served and all(len(e.early_embedding) == ref.early.shape[1] for e in served)
    assert loaded.model.class_names == ["crazing", "inclusion", "patches", "scratches"]


def test_the_controller_weighs_the_retraining_policy_and_says_its_verdict(live: Settings) -> None:
    """After the loop the champion is the retrained version; the rollout's labels came after its
    snapshot, so they are new; the controller's verdict is on Kafka, in the audit log, in its
    metrics and in `nicheloop policy explain`."""
    champion = Registry(live.tracking_uri, live.model_name).resolve(CHAMPION).version

    def said() -> list[PolicyDecided]:
        events = [
            parse_event(DECISIONS_TOPIC, raw)
            for _, raw in read_topic(live.bootstrap_servers, DECISIONS_TOPIC)
        ]
        return [e for e in events if isinstance(e, PolicyDecided) and e.champion == champion]

    wait_for(
        "the policy's verdict on the new champion", lambda: bool(said()), timeout=3 * live.policy_every_s + 30
    )
    verdict = said()[-1]
    assert verdict.action in ("train", "wait") and verdict.reason and verdict.figures["new_labels"] > 0
    trail = Audit(Store(live.db_url)).read(action="policy")
    assert any(e.actor == "policy" and e.target == f"champion {champion}" for e in trail)
    out = subprocess.run(
        [sys.executable, "-m", "cli", "policy", "explain", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, **settings_env(live)},
        check=True,
    ).stdout
    explained = json.loads(out)
    assert explained["evidence"]["champion"] == champion and explained["evidence"]["new_labels"] > 0
    assert explained["decision"]["action"] in ("train", "wait")
    controller = f"http://{live.host}:{live.controller_port}"
    metrics = httpx.get(f"{controller}/metrics", headers=role(live, "operator"), timeout=10).text
    assert "nicheloop_policy_decision{" in metrics and "nicheloop_policy_new_labels" in metrics


def test_the_policy_retrains_and_rolls_the_candidate_out_by_itself(live: Settings) -> None:
    """An operator edits the policy so that the labels already new fire it: the controller trains,
    registers and starts the rollout with no other step; the gates end it on labeled traffic."""
    registry, store = Registry(live.tracking_uri, live.model_name), Store(live.db_url)
    before = registry.resolve(CHAMPION).version
    policy_file = live.retrain_policy
    assert policy_file is not None
    ops = Operations(Rollouts(store), registry)

    def started() -> dict[str, Any] | None:
        status = ops.status()
        return status if status["state"] in ("shadow", "canary") and status["candidate"] != before else None

    try:
        # only the labels rule can fire: the rollout's labels are new since the champion's snapshot
        policy_file.write_text(
            "new_labels: 1\ncooldown_s: 0\naccuracy_min_labels: 1000000\nalarm_hold_s: 1e9\n"
        )
        wait_for(
            "the policy to start a run", lambda: bool(Audit(store).read(action="policy.run")), timeout=60
        )
        wait_for(
            "the policy's candidate in its rollout", lambda: started() is not None, timeout=600, every=3.0
        )
    finally:
        policy_file.write_text(QUIET_POLICY)  # one run is enough; the next look reloads it
    status = started()
    assert status is not None
    first = ops.history(status["rollout_id"])[0]
    assert first["actor"] == "policy"
    run = Audit(store).read(action="policy.run")[0]
    assert run.actor == "policy" and run.detail["rule"] == "labels" and Path(run.detail["log"]).exists()
    done = Audit(store).read(action="policy.run.done")[0]
    assert done.detail["version"] == status["candidate"]
    assert registry.version(status["candidate"]).tags["parent_version"] == before
    client = httpx.Client(base_url=live.serve_url, timeout=60, headers=role(live, "app"))
    final = drive_rollout(client, ops, SyntheticStream(seed=11, size=live.image_size), shift=DEMO_SHIFT)
    assert final["state"] in ("baked", "rolled_back")  # the gates' call, on live labels
    decided = [e for e in Audit(store).read(action="policy.decided") if e.target == f"champion {before}"]
    assert any(e.detail["action"] == "train" and e.detail["rule"] == "labels" for e in decided)


# another camera than the demo's: darker and grainy, so that whichever version is champion by now
# (a retrained one has seen the demo's shift) sees images it was not made for
NIGHT_CAMERA = Shift(brightness=-0.25, contrast=1.2, noise_std=0.08)


def test_the_policy_makes_a_stopgap_on_an_image_alarm_and_a_trained_candidate_retires_it(
    live: Settings,
) -> None:
    """With the stopgap on, an image or embedding alarm makes the controller recalibrate the
    champion's batch-norm statistics in a child process, register the result tagged ``stopgap_of``
    with the champion's manifest, and start it in shadow on the stopgap plan (every request
    mirrored); a trained candidate started meanwhile rolls the stopgap back and takes its place."""
    registry, store = Registry(live.tracking_uri, live.model_name), Store(live.db_url)
    champion = registry.resolve(CHAMPION)
    ops, drift = Operations(Rollouts(store), registry), DriftLog(store)
    policy_file = live.retrain_policy
    assert policy_file is not None and ops.status()["state"] not in ("shadow", "canary", "hold")
    client = httpx.Client(base_url=live.serve_url, timeout=60, headers=role(live, "app"))
    night = SyntheticStream(seed=93, size=live.image_size)
    try:
        policy_file.write_text(QUIET_POLICY.replace("stopgap_images: 0", "stopgap_images: 64"))
        wait_for(
            "an image or embedding alarm on the champion",
            lambda: (
                drift.alarm_since(champion.version, INPUT_MONITORS) is not None
                or send_labeled(client, night, 50, shift=NIGHT_CAMERA)
            ),
            timeout=600,
            every=1.0,
        )
        wait_for(
            "the policy's stopgap in shadow",
            lambda: (
                registry.stopgap_of(champion.version) is not None
                and ops.status().get("candidate") == registry.stopgap_of(champion.version).version
            ),
            timeout=300,
            every=3.0,
        )
    finally:
        policy_file.write_text(QUIET_POLICY)
    made = registry.stopgap_of(champion.version)
    assert made is not None and made.tags["parent_version"] == champion.version
    status = ops.status()
    assert status["state"] == "shadow" and status["mirror"] == 1.0 and status["champion"] == champion.version
    run = [e for e in Audit(store).read(action="policy.run") if e.detail["rule"] == "stopgap"][0]
    assert run.actor == "policy" and "image or embedding alarm" in run.detail["reason"]
    assert registry.artifact_text(made.run_id, MANIFEST) == registry.artifact_text(champion.run_id, MANIFEST)
    assert int(made.tags["stopgap_images"]) >= 32 and "holdout_accuracy" in registry.run_metrics(made.run_id)
    # a trained candidate ends the stopgap's rollout and starts in its place
    trained = register_candidate(live, registry, trained=True)
    started = ops.start(actor="test", version=trained.version)
    assert started["candidate"] == trained.version and started["state"] == "shadow"
    ended = ops.history(status["rollout_id"])[-1]
    assert ended["to_state"] == "rolled_back" and f"trained version {trained.version}" in ended["reason"]
    assert registry.resolve(CHAMPION).version == champion.version
    ops.act("rollback", actor="test", reason="the stopgap test is done")


@pytest.mark.parametrize(
    "kwargs, status",
    [
        ({"content": b"definitely not an image", "headers": {"content-type": "image/png"}}, 400),
        ({"content": b""}, 400),
        ({"files": {"image": ("x.png", b"\x89PNG\r\n\x1a\n garbage", "image/png")}}, 400),
        ({"json": {"image_b64": "***"}}, 400),
        ({"content": b"0" * (20 * 1024 * 1024)}, 413),
        (
            {"content": b'{"image_b64": ' + b"[" * 200_000, "headers": {"content-type": "application/json"}},
            400,
        ),
        (
            {
                "content": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n",
                "headers": {"content-type": "image/png"},
            },
            400,
        ),
    ],
)
def test_bad_predict_requests_get_4xx(live: Settings, kwargs, status: int) -> None:
    kwargs = dict(kwargs)  # the parameters are shared by both backends' runs
    headers = {**role(live, "app"), **kwargs.pop("headers", {})}
    resp = httpx.post(f"{live.serve_url}/v1/predict", timeout=60, headers=headers, **kwargs)
    assert resp.status_code == status and resp.json()["detail"]


def test_bad_feedback_and_review_get_4xx(live: Settings, png: bytes) -> None:
    c = httpx.Client(base_url=live.serve_url, timeout=60, headers=role(live, "app"))
    rv = role(live, "reviewer")
    pid = c.post("/v1/predict", files={"image": ("x.png", png, "image/png")}).json()["prediction_id"]
    unknown_id = c.post(
        "/v1/feedback", json={"prediction_id": "0" * 32 + ".0123456789abcdef", "label": "crazing"}
    )
    assert unknown_id.status_code == 404 and "unknown prediction_id" in unknown_id.json()["detail"]
    unknown_label = c.post("/v1/feedback", json={"prediction_id": pid, "label": "rust"})
    assert unknown_label.status_code == 400 and "unknown label" in unknown_label.json()["detail"]
    assert c.post("/v1/feedback", json={"label": "crazing"}).status_code == 422
    lease = {"label": "crazing", "lease_token": "t"}
    assert c.post("/v1/review/987654", json=lease, headers=rv).status_code == 404
    assert c.post("/v1/review/987654", json=lease).status_code == 403  # an app may not label
    assert c.post("/v1/review/987654", json=lease, headers={"X-API-Key": ""}).status_code == 401
    assert c.post("/v1/review/987654/skip", json={"lease_token": "t"}, headers=rv).status_code == 404
    assert c.post("/v1/review/987654", json={"label": "crazing"}, headers=rv).status_code == 422  # no lease
    assert c.get("/v1/images/" + "0" * 64, headers=rv).status_code == 404
    # hostile: each of these was a 500 once (docs/serving.md, "Hostile input"), through the real ingress
    json_type = {"content-type": "application/json"}
    forged = c.post("/v1/feedback", json={"prediction_id": "0" * 32 + "." + "é" * 16, "label": "crazing"})
    assert forged.status_code == 404
    assert c.post("/v1/review/" + "9" * 21, json=lease, headers=rv).status_code == 422
    assert c.post("/v1/feedback", content=b"[" * 50_000, headers=json_type).status_code == 400
    huge = c.post("/v1/feedback", content=b'{"label": "' + b"x" * 10**6 + b'"}', headers=json_type)
    assert huge.status_code == 413 and "limit" in huge.json()["detail"]
    assert c.get("/healthz").status_code == 200 and c.get("/readyz").json()["ready"] is True


def _wait(what: str, check, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except NotFound:
            pass
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def test_two_reviewers_over_http_leases_skips_labels_and_stats(live: Settings, png: bytes) -> None:
    c = httpx.Client(base_url=live.serve_url, timeout=60, headers=role(live, "app"))
    store = Store(live.db_url)
    keys = ApiKeys(store)  # two reviewers: each is who their key names
    as_ann, as_bob = (
        {"X-API-Key": keys.create(name=n, role="reviewer", created_by="t")[0]} for n in ("ann", "bob")
    )
    queue = ReviewQueue(store, QueuePolicy.from_settings(live))
    pids = [
        c.post("/v1/predict", files={"image": ("x.png", png, "image/png")}).json()["prediction_id"]
        for _ in range(2)
    ]
    for i, pid in enumerate(pids):
        _wait("the monitor to store the prediction", lambda pid=pid: store.prediction(pid))
        queue.enqueue(pid, priority=100.0 + i)  # ahead of anything the sampler queued
    ann = c.get("/v1/review/next", headers=as_ann).json()
    bob = c.get("/v1/review/next", headers=as_bob).json()
    assert ann["task_id"] != bob["task_id"] and {ann["prediction_id"], bob["prediction_id"]} == set(pids)
    stolen = c.post(
        f"/v1/review/{ann['task_id']}",
        json={"label": "crazing", "lease_token": bob["lease_token"]},
        headers=as_bob,
    )
    assert stolen.status_code == 409 and "not leased to you" in stolen.json()["detail"]
    skipped = c.post(
        f"/v1/review/{ann['task_id']}/skip", json={"lease_token": ann["lease_token"]}, headers=as_ann
    )
    assert skipped.status_code == 200 and skipped.json()["status"] == "queued"
    done = c.post(
        f"/v1/review/{bob['task_id']}",
        json={"label": "patches", "lease_token": bob["lease_token"]},
        headers=as_bob,
    )
    assert done.status_code == 202 and done.json()["source"] == "reviewer"
    # a second label under the running lease corrects the first: the newest reviewer label wins
    again = c.post(
        f"/v1/review/{bob['task_id']}",
        json={"label": "crazing", "lease_token": bob["lease_token"]},
        headers=as_bob,
    )
    assert again.status_code == 202
    stats = c.get("/v1/review/stats", headers=as_ann).json()
    assert stats["done"] >= 1 and stats["budget"]["left_hour"] < live.review_budget_per_hour
    # the label came back through Kafka as reviewer feedback and was joined
    _wait(
        "the corrected reviewer label to be joined",
        lambda: _reviewer_label(store, bob["prediction_id"]) == "crazing",
    )
    assert c.get("/v1/review/next", headers=as_bob).json()["task_id"] == ann["task_id"]


def _reviewer_label(store: Store, prediction_id: str) -> str | None:
    with Session(store.engine) as s:
        return s.scalar(
            select(LabeledExample.label).where(
                LabeledExample.prediction_id == prediction_id, LabeledExample.source == "reviewer"
            )
        )


def test_malformed_events_are_dead_lettered_with_a_reason(live: Settings) -> None:
    producer = KafkaProducer(bootstrap_servers=live.bootstrap_servers)
    producer.send(PREDICTIONS_TOPIC, key=b"garbage-1", value=b"{not json")
    forged = {  # parses, but its version would name a folder outside the drift reports'
        "prediction_id": "forged-1",
        "model_name": "m",
        "model_version": "../../outside",
        "label": "crazing",
        "probs": [1.0],
        "class_names": ["crazing"],
        "uncertainty": 0.0,
        "embedding": [0.0],
        "image_sha256": "0" * 64,
    }
    producer.send(PREDICTIONS_TOPIC, key=b"forged-1", value=json.dumps(forged).encode())
    producer.flush()
    producer.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        letters = {
            d.key: d for d in dead_letters(live.bootstrap_servers) if d.key in ("garbage-1", "forged-1")
        }
        if len(letters) == 2:
            assert letters["garbage-1"].topic == PREDICTIONS_TOPIC
            assert "PredictionEvent" in letters["garbage-1"].reason
            assert "model_version" in letters["forged-1"].reason
            return
        time.sleep(1)
    pytest.fail(f"the malformed records never all reached the dead-letter topic: {sorted(letters)}")


def test_stack_status_says_what_runs_where(live: Settings) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cli", "stack", "status"],
        capture_output=True,
        text=True,
        env={**os.environ, **settings_env(live)},
        check=True,
    ).stdout
    for name, address in (
        ("kafka", live.bootstrap_servers),
        ("mlflow", live.tracking_uri),
        ("monitor", "/metrics"),
        ("controller", "/v1/rollouts/status"),
    ):
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert "running" in line and address in line


def test_http_reaches_the_gateway_through_the_configured_ingress(live: Settings, png: bytes) -> None:
    """HAProxy (the default) lists the gateway replica as a live server; with the Python proxy
    nothing of HAProxy's runs. The endpoint answers either way."""
    stats_port = live.ingress_ports[0] + 1
    resp = httpx.post(f"{live.serve_url}/v1/predict", content=png, timeout=30, headers=role(live, "app"))
    assert resp.status_code == 200, resp.text
    if live.serve_ingress == "proxy":
        assert not port_open(live.host, stats_port)
        return
    rows = httpx.get(f"http://{live.host}:{stats_port}/stats;csv", timeout=10).text.splitlines()
    gateways = [row.split(",") for row in rows if "SERVE_REPLICA_nicheloop-gateway" in row]
    # field 17 of HAProxy's CSV is the server's status; at least one gateway replica takes traffic
    assert gateways and any(fields[17] == "UP" for fields in gateways), rows


def test_broker_down_while_predictions_are_served(live: Settings, png: bytes) -> None:
    """Every request is answered during the outage; every event reaches Kafka after it (runs last)."""
    outage_s = float(os.environ.get("NICHELOOP_OUTAGE_S", "60"))
    stack.kill_process(live, "kafka")
    answered, statuses = [], []
    with httpx.Client(base_url=live.serve_url, timeout=60, headers=role(live, "app")) as client:
        deadline = time.monotonic() + outage_s
        while time.monotonic() < deadline:
            resp = client.post("/v1/predict", files={"image": ("x.png", png, "image/png")})
            statuses.append(resp.status_code)
            if resp.status_code == 200:
                answered.append(resp.json()["prediction_id"])
    depth_during = _spool_depth(live)
    reported = _reported_spool(live, lambda spool: spool["by_role"].get("gateway", 0) > 0)
    stack.start_kafka(live)
    assert answered and statuses.count(200) == len(statuses), f"not all answered: {set(statuses)}"
    assert depth_during > 0, "the gateway should spool events while the broker is down"
    missing = set(answered)
    deadline = time.monotonic() + 240
    while missing and time.monotonic() < deadline:
        time.sleep(5)
        try:
            missing -= {k for k, _ in read_topic(live.bootstrap_servers, PREDICTIONS_TOPIC)}
        except Exception:  # noqa: BLE001 - the broker may still be starting
            continue
    print(
        json.dumps(
            {
                "outage_s": outage_s,
                "answered": len(answered),
                "spooled_at_end_of_outage": depth_during,
                "undelivered": len(missing),
            }
        )
    )
    assert not missing, f"{len(missing)} of {len(answered)} prediction events never reached Kafka"
    deadline = time.monotonic() + 60
    while _spool_depth(live) and time.monotonic() < deadline:
        time.sleep(1)
    assert _spool_depth(live) == 0
    # the operator saw the gateways' waiting events in the controller's status, and sees them delivered
    assert reported["depth"] >= reported["by_role"]["gateway"] > 0, reported
    assert _reported_spool(live, lambda spool: spool["depth"] == 0)["spools"] >= 1


def _reported_spool(live: Settings, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The spool summary of the controller's status once ``wanted`` holds (publishers report every 10 s)."""
    url = f"http://{live.host}:{live.controller_port}/v1/rollouts/status"
    spool: dict[str, Any] = {}
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        spool = httpx.get(url, timeout=30, headers=role(live, "operator")).json()["spool"]
        if wanted(spool):
            return spool
        time.sleep(1)
    raise AssertionError(f"the controller's spool summary never came to the expected state: {spool}")


def _spool_depth(live: Settings) -> int:
    text = httpx.get(f"{live.serve_url}/metrics", timeout=30, headers=role(live, "operator")).text
    return int(
        float(
            next(
                line.split()[-1]
                for line in text.splitlines()
                if line.startswith("nicheloop_event_spool_depth")
            )
        )
    )
