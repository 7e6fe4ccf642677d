"""The retraining policy's evidence read from the store, the drift log and the registry, and the
decision `nicheloop policy explain` prints (SQLite here; PostgreSQL under the integration mark)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cli.main import app
from cli.rollout import render_decision
from nicheloop.bus import parse_event
from nicheloop.contracts import DECISIONS_TOPIC, FeedbackEvent, PolicyDecided, PredictionEvent
from nicheloop.driftlog import DriftLog, DriftWindow
from nicheloop.errors import GateRefused
from nicheloop.keys import ApiKeys, Audit
from nicheloop.registry import MANIFEST, STOPGAP_OF, WORLD_SINCE, VersionInfo
from nicheloop.rollouts import Rollout, Rollouts
from nicheloop.store import Store
from rollout.operations import Operations
from rollout.plan import STOPGAP_PLAN, RolloutPlan
from rollout.policy import RetrainPolicy, load_policy
from rollout.retrain import PolicyEvidence, PolicyLoop, PolicyRuns, explain
from rollout.runner import controller_api, rollout_metrics

T0 = 1_800_000_000.0
NOW = T0 + 1000


class Registry:
    """The champion ``1`` of run ``run1``, registered two days before T0, trained on the images
    ``p*``; the newest version ``newest`` seconds before T0 (or ``t0``)."""

    def __init__(self, manifest: str | None, newest: float = 86_400, t0: float = T0) -> None:
        self.manifest, self.newest, self.t0, self.reads = manifest, newest, t0, 0
        self.tags: dict[str, dict[str, str]] = {}  # version -> its tags (a stopgap's: stopgap_of)
        self.metrics: dict[str, dict[str, float]] = {}  # run id -> its metrics beside holdout_accuracy
        self.champion = "1"

    def resolve(self, alias: str) -> VersionInfo:
        return VersionInfo(
            "m", self.champion, f"run{self.champion}", self.tags.get(self.champion, {}), [alias],
            created_at=self.t0 - 2 * 86_400,
        )  # fmt: skip

    def version(self, version: str) -> VersionInfo:
        return VersionInfo("m", version, f"run{version}", self.tags.get(version, {}), [])

    def stopgap_of(self, version: str) -> VersionInfo | None:
        made = [v for v, tags in self.tags.items() if tags.get(STOPGAP_OF) == version]
        return self.version(made[0]) if made else None

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return {"holdout_accuracy": 0.95} | self.metrics.get(run_id, {})

    def artifact_text(self, run_id: str, name: str) -> str | None:
        assert name == MANIFEST and run_id == f"run{self.champion}"  # a stopgap keeps its parent's
        self.reads += 1
        return self.manifest

    def newest_at(self) -> float | None:
        return self.t0 - self.newest


def _sha(pid: str) -> str:
    return hashlib.sha256(pid.encode()).hexdigest()


def _served(store: Store, pid: str, at: float, said: str, truth: str) -> None:
    """A champion answer ``said`` at ``at``, then a user's label ``truth`` of it."""
    store.add_prediction(
        PredictionEvent(
            prediction_id=pid,
            model_name="m",
            model_version="1",
            label=said,
            probs=[0.9, 0.1] if said == "a" else [0.1, 0.9],
            class_names=["a", "b"],
            uncertainty=0.2,
            embedding=[0.0],
            image_sha256=_sha(pid),
            created_at=datetime.fromtimestamp(at, UTC),
        )
    )
    store.add_feedback(FeedbackEvent(prediction_id=pid, label=truth))


def _window(
    monitor: str, at: float, *, alarm: bool, change: str | None, began: float | None = None
) -> DriftWindow:
    return DriftWindow(
        model_version="1",
        monitor=monitor,
        feed="inputs",
        status="ok",
        n=200,
        alpha=0.01,
        drifted=alarm,
        alarm=alarm,
        change=change,
        evaluated_at=datetime.fromtimestamp(at, UTC),
        started_at=datetime.fromtimestamp(began, UTC) if began is not None else None,
    )


def _world(store: Store) -> None:
    """10 labels the champion trained on; 20 new before the alarm (half right); 30 after it (all
    wrong). The embedding alarm was raised first but cleared; the image alarm still holds."""
    for i in range(10):
        _served(store, f"p{i}", T0 - 1000 + i, "a", "a")
    for i in range(20):
        _served(store, f"q{i}", T0 + 10 + i, "a", "a" if i % 2 else "b")
    for i in range(30):
        _served(store, f"r{i}", T0 + 200 + i, "a", "b")
    log = DriftLog(store)
    log.record([_window("embedding", T0 + 50, alarm=True, change="raised")])
    log.record([_window("image", T0 + 100, alarm=True, change="raised")])
    log.record([_window("embedding", T0 + 120, alarm=False, change="cleared")])
    log.record([_window("image", T0 + 150, alarm=True, change=None)])


def _manifest() -> str:
    return json.dumps(
        {
            "train": [[_sha(f"p{i}"), "a"] for i in range(8)],
            "holdout": [[_sha("p8"), "a"]],
            "held_back": [[_sha("p9"), "a", "suspected error"]],
        }
    )


def test_evidence_counts_new_labels_post_alarm_traffic_and_the_users_verdict(any_store: Store) -> None:
    _world(any_store)
    registry = Registry(_manifest())
    source = PolicyEvidence(any_store, registry)
    ev = source.gather(NOW)
    assert ev.new_labels == 50  # the ten the manifest names (trained, held out, held back) are not new
    assert ev.alarm_since == T0 + 100  # the image alarm; the embedding alarm has cleared
    assert ev.labels_after_alarm == 30
    assert ev.new_by_class == {"a": 10, "b": 40} and ev.after_alarm_by_class == {"b": 30}
    assert ev.user_labels == 60
    assert ev.accuracy_drop_points == round(100 * (0.95 - 20 / 60), 2)
    assert (ev.champion_since, ev.last_run_at) == (T0 - 2 * 86_400, T0 - 86_400)
    assert ev.rollout_live is False and ev.budget_left_hour is not None and ev.budget_left_hour > 0
    source.gather(NOW)
    assert registry.reads == 1  # a champion's manifest is read once

    held = explain(ev, RetrainPolicy())  # 60 users' labels are too few to judge accuracy by
    why = held["decision"]["reason"]
    assert held["decision"]["action"] == "wait" and "450 more new labels" in why
    assert "15.0 min more alarm" in why and "70 more labels" in why
    accuracy = explain(ev, RetrainPolicy(accuracy_min_labels=50))
    assert (accuracy["decision"]["action"], accuracy["decision"]["rule"]) == ("train", "accuracy")
    drift = explain(ev, RetrainPolicy(alarm_hold_s=600, labels_after_alarm=30))
    assert drift["decision"]["rule"] == "drift" and drift["evidence"]["labels_after_alarm"] == 30
    assert "confirm it, most of b (30) (policy" in drift["decision"]["reason"]
    assert "  new_by_class           a 10, b 40\n" in render_decision(drift)
    assert "  alarm_since            2027-01-15 08:01:40 UTC\n" in render_decision(drift)  # T0 + 100
    recent = PolicyEvidence(any_store, Registry(_manifest(), newest=3600)).gather(NOW)
    cooling = explain(recent, RetrainPolicy(alarm_hold_s=600, labels_after_alarm=30))["decision"]
    assert cooling["rule"] == "cooldown" and "ended 1.3 h ago; 4.7 h of cooldown left" in cooling["reason"]
    assert render_decision(drift).startswith("train (drift): a drift alarm has held for 15.0 min")


def test_the_labels_of_the_window_that_raised_the_alarm_confirm_it(any_store: Store) -> None:
    """Traffic in the raising window was served in the new world before the verdict: its labels
    count, while the alarm's hold still runs from when it was raised."""
    _world(any_store)
    DriftLog(any_store).record([_window("prediction", T0 + 160, alarm=True, change="raised", began=T0 + 20)])
    ev = PolicyEvidence(any_store, Registry(_manifest())).gather(NOW)
    assert ev.alarm_since == T0 + 100  # the image alarm is older; its window began when it was raised
    assert ev.labels_after_alarm == 30 + 10  # q10..q19 were served after the prediction window began
    why = explain(ev, RetrainPolicy())["decision"]["reason"]
    assert "60 more labels of the alarm's traffic" in why


def test_a_champion_trained_for_a_new_world_counts_that_worlds_labels_for_the_recovery_rule(
    any_store: Store,
) -> None:
    _world(any_store)
    registry = Registry(_manifest())
    assert PolicyEvidence(any_store, registry).gather(NOW).world_since is None  # the first world's
    registry.tags["1"] = {WORLD_SINCE: repr(T0 + 100)}
    registry.metrics["run1"] = {"world_labels": 25.0}
    ev = PolicyEvidence(any_store, registry).gather(NOW)
    # r0..r29 were served since the world began; q*, new too, were served before
    assert (ev.world_since, ev.world_labels, ev.world_new_labels, ev.new_labels) == (T0 + 100, 25, 30, 50)
    assert "70 more labels of the new world" in explain(ev, RetrainPolicy())["decision"]["reason"]
    recovery = explain(ev, RetrainPolicy(labels_after_alarm=20))["decision"]
    assert (recovery["action"], recovery["rule"]) == ("train", "recovery")
    # a stopgap champion is its parent's patch: the parent's world and labels stand
    registry.tags["2"], registry.champion = {STOPGAP_OF: "1"}, "2"
    registry.manifest = _manifest()
    patched = PolicyEvidence(any_store, registry).gather(NOW)
    assert (patched.world_since, patched.world_labels, patched.world_new_labels) == (T0 + 100, 25, 30)


def test_a_live_rollout_waits_and_a_champion_without_manifest_counts_every_label_new(
    any_store: Store,
) -> None:
    _world(any_store)
    Rollouts(any_store).create(Rollout("2", "1", entered_at=NOW), plan={}, actor="t", reason="", now=NOW)
    for manifest in (None, "not json"):
        ev = PolicyEvidence(any_store, Registry(manifest)).gather(NOW)
        assert ev.new_labels == 60 and ev.rollout_live
        out = explain(ev, RetrainPolicy())
        assert (out["decision"]["action"], out["decision"]["rule"]) == ("wait", "rollout")


def test_no_alarm_no_user_labels_leaves_those_figures_out(any_store: Store) -> None:
    ev = PolicyEvidence(any_store, Registry(_manifest())).gather(NOW)
    assert (ev.new_labels, ev.alarm_since, ev.labels_after_alarm, ev.user_labels) == (0, None, 0, 0)
    assert ev.accuracy_drop_points is None
    assert explain(ev, RetrainPolicy())["decision"]["rule"] == "evidence"


def test_explain_refuses_a_policy_key_it_does_not_know() -> None:
    result = CliRunner().invoke(app, ["policy", "explain", "--set", "alarm_hold=3"])
    assert result.exit_code == 1 and "alarm_hold" in result.output


def test_the_loop_says_each_new_verdict_once_on_kafka_and_in_the_audit_log(any_store: Store) -> None:
    _world(any_store)
    sent: list[PolicyDecided] = []
    down = {"kafka": True}

    def announce(event: PolicyDecided) -> None:
        if down["kafka"]:
            raise ConnectionError("broker away")
        sent.append(event)

    evidence = PolicyEvidence(any_store, Registry(_manifest()))
    loop = PolicyLoop(
        evidence,
        RetrainPolicy(),
        holder="a",
        model_name="m",
        announce=announce,
        audit=Audit(any_store),
        every_s=30,
    )
    first = loop.step(NOW)
    assert first is not None and first["decision"]["action"] == "wait" and loop.latest == first
    assert sent == [] and Audit(any_store).read(action="policy") == []  # Kafka away: said next look
    assert loop.step(NOW + 10) is None  # not due yet
    down["kafka"] = False
    loop.step(NOW + 30)
    loop.step(NOW + 60)  # the same verdict: not said again
    assert [(e.action, e.rule, e.champion) for e in sent] == [("wait", "evidence", "1")]
    assert sent[0].figures["new_labels"] == 50 and "now" not in sent[0].figures
    assert parse_event(DECISIONS_TOPIC, sent[0].model_dump_json().encode()) == sent[0]
    loop.policy = RetrainPolicy(alarm_hold_s=600, labels_after_alarm=30)
    loop.step(NOW + 90)
    assert [(e.action, e.rule) for e in sent][-1] == ("train", "drift")
    said = sent[-1].figures  # per class, flat
    assert (said["new_by_class.a"], said["new_by_class.b"], said["after_alarm_by_class.b"]) == (10, 40, 30)
    assert parse_event(DECISIONS_TOPIC, sent[-1].model_dump_json().encode()) == sent[-1]
    trail = Audit(any_store).read(action="policy")
    assert [(e.action, e.actor, e.detail["action"], e.detail["rule"]) for e in trail] == [
        ("policy.decided", "policy", "train", "drift"),
        ("policy.decided", "policy", "wait", "evidence"),
    ]
    other = PolicyLoop(evidence, RetrainPolicy(), holder="b", model_name="m", announce=announce)
    assert other.step(NOW + 100) is None  # "a" holds the policy's lease


def test_metrics_and_http_show_the_latest_verdict(any_store: Store) -> None:
    _world(any_store)
    registry = Registry(_manifest())
    loop = PolicyLoop(PolicyEvidence(any_store, registry), RetrainPolicy(), holder="a", model_name="m")
    text = rollout_metrics(Rollouts(any_store), {"ticks": 1, "errors": 0}, policy=loop.step(NOW)).decode()
    assert 'nicheloop_policy_decision{action="wait",rule="evidence"} 1.0' in text
    assert "nicheloop_policy_new_labels 50.0" in text and "nicheloop_policy_alarm_age_seconds 900.0" in text
    assert 'nicheloop_policy_new_labels_by_class{class="b"} 40.0' in text
    assert 'nicheloop_policy_labels_after_alarm_by_class{class="b"} 30.0' in text
    assert "nicheloop_policy_world_labels 0.0" in text and "nicheloop_policy_world_age" not in text
    registry.tags["1"] = {WORLD_SINCE: repr(T0 + 100)}  # the champion was trained for a new world
    later = PolicyLoop(PolicyEvidence(any_store, registry), RetrainPolicy(), holder="a", model_name="m")
    text = rollout_metrics(Rollouts(any_store), {"ticks": 1, "errors": 0}, policy=later.step(NOW)).decode()
    assert "nicheloop_policy_world_new_labels 30.0" in text
    assert "nicheloop_policy_world_age_seconds 900.0" in text
    keys = ApiKeys(any_store)
    operator = {"Authorization": f"Bearer {keys.create(name='ops', role='operator', created_by='t')[0]}"}
    app = controller_api(Operations(Rollouts(any_store), registry), policy=loop)
    with TestClient(app) as client:
        got = client.get("/v1/policy/decision", headers=operator)
        assert got.status_code == 200 and got.json()["decision"]["rule"] == "evidence"
        reviewer = {"Authorization": f"Bearer {keys.create(name='rev', role='reviewer', created_by='t')[0]}"}
        assert client.get("/v1/policy/decision", headers=reviewer).status_code == 403


class Ops:
    """Starts rollouts as :class:`rollout.operations.Operations` would, or refuses them."""

    def __init__(self, refuse: Exception | None = None) -> None:
        self.started: list[tuple[str, str | None, RolloutPlan | None]] = []
        self.refuse = refuse

    def start(
        self, *, actor: str, version: str | None = None, plan: RolloutPlan | None = None
    ) -> dict[str, Any]:
        if self.refuse is not None:
            raise self.refuse
        self.started.append((actor, version, plan))
        return {"rollout_id": 7}


def _child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _until_ended(runs: PolicyRuns, now: float) -> dict[str, Any]:
    for _ in range(200):
        outcome = runs.poll(now)
        if outcome is not None:
            return outcome
        time.sleep(0.05)
    raise AssertionError("the child did not end")


TRAINS = "import json, sys; print('epoch 1', file=sys.stderr); print(json.dumps({'version': '2', 'x': 1}))"


def test_a_train_verdict_runs_the_command_then_rolls_its_version_out_once(
    any_store: Store, tmp_path: Path
) -> None:
    _world(any_store)
    ops, plan = Ops(), RolloutPlan(min_labels=40)
    runs = PolicyRuns(
        ops, command=_child(TRAINS), log_dir=tmp_path / "logs", plan=plan, audit=Audit(any_store)
    )
    fires = RetrainPolicy(alarm_hold_s=600, labels_after_alarm=30, cooldown_s=3600)
    loop = PolicyLoop(
        PolicyEvidence(any_store, Registry(_manifest())),
        fires,
        holder="a",
        model_name="m",
        audit=Audit(any_store),
        every_s=1,
        runs=runs,
    )
    first = loop.step(NOW)
    assert first is not None and first["acted"] and first["decision"]["rule"] == "drift"
    outcome = _until_ended(runs, NOW + 5)
    assert outcome["version"] == "2" and outcome["returncode"] == 0 and outcome["rollout"] == 7
    assert ops.started == [("policy", "2", plan)]
    after = loop.step(NOW + 10)  # the run ended at NOW + 5: the cooldown holds
    assert after is not None and after["decision"]["rule"] == "cooldown" and not after["acted"]
    trail = [(e.action, e.detail.get("rule")) for e in Audit(any_store).read(action="policy")]
    assert trail == [
        ("policy.decided", "cooldown"),
        ("policy.run.done", "drift"),
        ("policy.run", "drift"),
        ("policy.decided", "drift"),
    ]
    assert "epoch 1" in Path(Audit(any_store).read(action="policy.run")[0].detail["log"]).read_text()


def test_a_failed_run_is_audited_with_its_log_and_cools_down_and_a_refused_candidate_is_said(
    any_store: Store, tmp_path: Path
) -> None:
    _world(any_store)
    fires = RetrainPolicy(alarm_hold_s=600, labels_after_alarm=30, cooldown_s=3600)
    failing = PolicyRuns(
        Ops(),
        command=_child("import sys; print('out of memory', file=sys.stderr); sys.exit(3)"),
        log_dir=tmp_path,
        plan=RolloutPlan(),
        audit=Audit(any_store),
    )
    loop = PolicyLoop(
        PolicyEvidence(any_store, Registry(_manifest())),
        fires,
        holder="a",
        model_name="m",
        every_s=1,
        runs=failing,
    )
    loop.step(NOW)
    outcome = _until_ended(failing, NOW + 2)
    assert outcome["version"] is None and "exit 3" in outcome["error"] and "out of memory" in outcome["error"]
    assert Audit(any_store).read(action="policy.run.failed")[0].detail["returncode"] == 3
    cooling = loop.step(NOW + 3)
    assert cooling is not None and cooling["decision"]["rule"] == "cooldown"  # no retry storm

    refusing = PolicyRuns(
        Ops(refuse=GateRefused("held-out loss worse")),
        command=_child(TRAINS),
        log_dir=tmp_path,
        plan=RolloutPlan(),
        audit=Audit(any_store),
    )
    refusing.start(rule="drift", reason="r", champion="1", now=NOW)
    refused = _until_ended(refusing, NOW + 1)
    assert refused["rollout"] is None and "held-out loss worse" in refused["error"]
    assert Audit(any_store).read(action="policy.rollout.refused")[0].target == "version 2"


def test_a_paused_policy_decides_but_starts_nothing_and_an_edited_policy_file_is_reloaded(
    any_store: Store, tmp_path: Path
) -> None:
    _world(any_store)
    rollouts = Rollouts(any_store)
    assert rollouts.pause_policy(by="ops", reason="label audit this week") is True
    assert rollouts.pause_policy(by="ops", reason="again") is False
    path = tmp_path / "policy.yaml"
    path.write_text("alarm_hold_s: 600\nlabels_after_alarm: 30\n")
    runs = PolicyRuns(Ops(), command=_child(TRAINS), log_dir=tmp_path, plan=RolloutPlan())
    loop = PolicyLoop(
        PolicyEvidence(any_store, Registry(_manifest())),
        load_policy(path),
        holder="a",
        model_name="m",
        audit=Audit(any_store),
        every_s=1,
        runs=runs,
        policy_file=path,
    )
    paused = loop.step(NOW)
    assert paused is not None and paused["decision"]["action"] == "train" and not paused["acted"]
    assert paused["paused"]["by"] == "ops" and not runs.running
    assert "paused by ops" in render_decision(paused)
    path.write_text("alarm_hold_s: 3600\n")
    os.utime(path, (NOW + 1, NOW + 1))
    assert rollouts.resume_policy() is True and rollouts.resume_policy() is False
    resumed = loop.step(NOW + 2)
    assert (
        resumed is not None and resumed["decision"]["action"] == "wait" and loop.policy.alarm_hold_s == 3600
    )
    reload = Audit(any_store).read(action="policy.reload")[0]
    assert reload.detail["changed"]["alarm_hold_s"] == [600.0, 3600.0]
    path.write_text("alarm_hold_s: -1\n")  # does not load: the policy in force stays
    os.utime(path, (NOW + 3, NOW + 3))
    loop.step(NOW + 4)
    assert loop.policy.alarm_hold_s == 3600


def test_operators_pause_and_resume_over_http_audited(any_store: Store) -> None:
    keys = ApiKeys(any_store)
    operator = {"X-API-Key": keys.create(name="ops", role="operator", created_by="t")[0]}
    app_reviewer = {"X-API-Key": keys.create(name="rev", role="reviewer", created_by="t")[0]}
    loop = PolicyLoop(
        PolicyEvidence(any_store, Registry(_manifest())), RetrainPolicy(), holder="a", model_name="m"
    )
    app = controller_api(Operations(Rollouts(any_store), Registry(None)), policy=loop)
    with TestClient(app) as client:
        assert client.post("/v1/policy/pause", json={"reason": "x"}, headers=app_reviewer).status_code == 403
        assert client.post("/v1/policy/pause", json={}, headers=operator).status_code == 422
        got = client.post("/v1/policy/pause", json={"reason": "relabeling"}, headers=operator).json()
        assert got["new"] and got["paused"]["by"] == "ops"
        assert client.get("/v1/policy/decision", headers=operator).json()["paused"]["reason"] == "relabeling"
        assert client.post("/v1/policy/resume", json={"reason": "done"}, headers=operator).json()["new"]
        assert client.get("/v1/policy/decision", headers=operator).json()["paused"] is None
    trail = [(e.action, e.actor, e.detail["reason"]) for e in Audit(any_store).read(action="policy")]
    assert trail == [("policy.resume", "ops", "done"), ("policy.pause", "ops", "relabeling")]


STOPGAP = "import json, sys; print(json.dumps({'version': '3', 'argv': sys.argv[1:]}))"


def test_an_image_alarm_makes_one_stopgap_per_champion_rolled_out_on_its_plan(
    any_store: Store, tmp_path: Path
) -> None:
    _world(any_store)
    ops, plan = Ops(), RolloutPlan(**STOPGAP_PLAN)
    stopgaps = PolicyRuns(ops, command=_child(STOPGAP), log_dir=tmp_path, plan=plan, audit=Audit(any_store))
    registry = Registry(_manifest())
    waits = RetrainPolicy(alarm_hold_s=1e9, stopgap_images=64)  # no rule trains: the stopgap comes first
    loop = PolicyLoop(
        PolicyEvidence(any_store, registry),
        waits,
        holder="a",
        model_name="m",
        audit=Audit(any_store),
        every_s=1,
        stopgaps=stopgaps,
    )
    first = loop.step(NOW)
    assert first is not None and first["acted"] and first["decision"]["action"] == "wait"
    assert (
        "image or embedding alarm" in first["stopgap_due"]
        and first["evidence"]["input_alarm_since"] == T0 + 100
    )
    assert "stopgap due: an image or embedding alarm has held" in render_decision(first)
    outcome = _until_ended(stopgaps, NOW + 1)
    assert outcome["version"] == "3" and ops.started == [("policy", "3", plan)]
    assert json.loads(Path(outcome["out"]).read_text())["argv"] == ["--images", "64"]
    trail = [(e.action, e.detail["rule"]) for e in Audit(any_store).read(action="policy.run")]
    assert trail == [("policy.run.done", "stopgap"), ("policy.run", "stopgap")]
    registry.tags["3"] = {STOPGAP_OF: "1"}  # the registry knows 3 as champion 1's stopgap: no second
    later = loop.step(NOW + 10)
    assert later is not None and not later["acted"] and later["evidence"]["stopgap"] == "3"
    # served as champion, the stopgap is weighed as the version it patches: that version's alarm
    # and labels stand, and its own rollout held no run back
    registry.champion = "3"
    ev = PolicyEvidence(any_store, registry).gather(NOW + 20)
    assert (ev.champion, ev.stopgap, ev.alarm_since, ev.input_alarm_since) == ("3", "3", T0 + 100, None)
    assert ev.labels_after_alarm == 30 and ev.new_labels == 50
