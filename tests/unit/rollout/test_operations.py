"""The operators' verbs over HTTP (the controller process's API) and on the command line: each is
stored with its actor, refused with a clear 4xx when it does not apply, and shown on /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cli.rollout import render_status
from nicheloop.http import route_roles
from nicheloop.keys import ApiKeys, Audit
from nicheloop.latency import bucket
from nicheloop.rollouts import ARM_CALLS_KEEP_S, NO_ROLLOUT, ArmCalls, Rollouts
from rollout.operations import Operations
from rollout.runner import controller_api
from tests.unit.rollout.test_controller import Registry


def test_operators_start_pause_and_roll_back_over_http_and_each_is_recorded(rollouts: Rollouts) -> None:
    reg = Registry()
    keys = ApiKeys(rollouts.store)
    ann, bob = (
        {"X-API-Key": keys.create(name=n, role="operator", created_by="t")[0]} for n in ("ann", "bob")
    )
    app_key = {"X-API-Key": keys.create(name="an-app", role="app", created_by="t")[0]}
    client = TestClient(controller_api(Operations(rollouts, reg)), raise_server_exceptions=False, headers=ann)
    assert client.get("/v1/rollouts/status", headers={"X-API-Key": ""}).status_code == 401
    assert client.post("/v1/rollouts/rollback", json={}, headers=app_key).status_code == 403
    assert client.get("/healthz", headers={"X-API-Key": ""}).status_code == 200
    assert client.get("/v1/rollouts/status").json() == {
        "champion": None,
        "state": "none",
        "waiting_for": "a candidate: `nicheloop rollout start`",
        "arms": {},
        "spool": {"depth": 0, "spools": 0, "fullest": 0.0, "by_role": {}, "silent": []},
    }
    adopted = client.post("/v1/rollouts/adopt", json={"version": "1", "reason": "upgrade"})
    assert adopted.status_code == 201 and adopted.json()["champion"] == "1"
    started = client.post("/v1/rollouts/start", json={"plan": {"steps": [0.1, 0.5]}})
    assert started.status_code == 201, started.text
    assert (started.json()["state"], started.json()["candidate"], started.json()["mirror"]) == (
        "shadow",
        "2",
        0.2,
    )
    assert client.post("/v1/rollouts/start", json={}).status_code == 409  # one live rollout at a time
    assert client.post("/v1/rollouts/start", json={"plan": {"steps": [0.5, 0.1]}}).status_code == 422
    assert client.post("/v1/rollouts/pause", json={"actor": "mallory"}).status_code == 422  # no such field
    forced = client.post("/v1/rollouts/promote", json={}, headers=bob)
    assert forced.status_code == 409 and "needs a reason" in forced.json()["detail"]
    assert client.post("/v1/rollouts/explode", json={}).status_code == 404  # no such verb
    assert client.post("/v1/rollouts/resume", json={}).status_code == 409  # not held
    held = client.post("/v1/rollouts/pause", json={"reason": "look at it"}, headers=bob).json()
    assert held["state"] == "hold" and "an operator" in held["waiting_for"]
    metrics = client.get("/metrics").text
    assert 'nicheloop_rollout_state{state="hold"} 1.0' in metrics
    assert 'nicheloop_rollout_transitions_total{to_state="hold"} 1.0' in metrics
    back = client.post("/v1/rollouts/rollback", json={"reason": "not today"}, headers=bob).json()
    assert back["state"] == "rolled_back" and rollouts.champion() == "1"
    trail = client.get("/v1/rollouts/history").json()
    assert [(e["actor"], e["to_state"]) for e in trail] == [
        ("ann", "baked"),
        ("ann", "shadow"),
        ("bob", "hold"),
        ("bob", "rolled_back"),
    ]
    audited = [(e.actor, e.action) for e in Audit(rollouts.store).read()]
    assert audited == [
        ("bob", "rollout.rollback"),
        ("bob", "rollout.pause"),
        ("ann", "rollout.start"),
        ("ann", "rollout.adopt"),
    ]
    read = client.get("/v1/audit", params={"action": "rollout", "limit": 2}).json()
    assert [(e["actor"], e["action"], e["source"]) for e in read] == [
        ("bob", "rollout.rollback", "testclient"),
        ("bob", "rollout.pause", "testclient"),
    ]
    assert client.get("/v1/audit", headers=app_key).status_code == 403
    assert client.delete("/v1/audit").status_code == 405  # read-only: nothing changes an entry
    assert client.get("/v1/rollouts/history", params={"rollout_id": 99}).status_code == 404
    assert client.post("/v1/rollouts/pause", json={}).status_code == 404  # nothing live


def test_status_reads_as_sentences(rollouts: Rollouts) -> None:
    ops = Operations(rollouts, Registry())
    assert render_status(ops.status()).startswith("no rollout yet; champion None")
    ops.start(actor="ann")
    rollouts.beat(1, 0.0, checks=[{"gate": "agreement", "verdict": "hold", "reason": "12 pairs; need 100"}])
    text = render_status(ops.status())
    assert "version 2 against champion 1 - shadow" in text and "mirrored 20%" in text
    assert "agreement          hold  12 pairs; need 100" in text and "waiting for: agreement" in text


def test_the_command_line_says_what_is_live(tmp_path: Path) -> None:
    env = {**os.environ, "NICHELOOP_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "cli", "rollout", "status"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert out.stdout.startswith("no rollout yet")
    refused = subprocess.run(
        [sys.executable, "-m", "cli", "rollout", "promote", "--reason", "x"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert refused.returncode == 1 and "needs --force" in refused.stderr


def test_every_controller_route_declares_its_roles(rollouts: Rollouts) -> None:
    table = route_roles(controller_api(Operations(rollouts, Registry())))
    assert {path for (_, path), roles in table.items() if roles is None} == {
        "/healthz",
        "/operate",
        "/pages/{name}",
        "/v1/drift/windows/{window_id}/report",  # by a link the operator's call signed
    }
    by_roles: dict[tuple[str, ...] | None, set[tuple[str, str]]] = {}
    for route, roles in table.items():
        by_roles.setdefault(roles, set()).add(route)
    assert by_roles[("admin",)] == {("GET", "/v1/keys"), ("POST", "/v1/keys")}
    assert {("GET", "/v1/review/budget"), ("PUT", "/v1/review/budget")} <= by_roles[("operator",)]
    assert by_roles[("operator", "admin")] == {
        ("POST", "/v1/keys/revoke"),
        ("GET", "/v1/labels/excluded"),
        ("POST", "/v1/labels/exclude"),
        ("POST", "/v1/labels/vouch"),
        ("GET", "/v1/audit"),
    }
    assert by_roles[("app", "reviewer", "operator", "admin")] == {("GET", "/v1/whoami")}
    assert set(by_roles) == {
        None,
        ("operator",),
        ("admin",),
        ("operator", "admin"),
        ("app", "reviewer", "operator", "admin"),
    }


def test_admins_make_and_list_keys_operators_revoke_and_exclude_over_http(rollouts: Rollouts) -> None:
    keys = ApiKeys(rollouts.store)
    root = {"X-API-Key": keys.create(name="root", role="admin", created_by="t")[0]}
    ops = {"X-API-Key": keys.create(name="ops", role="operator", created_by="t")[0]}
    client = TestClient(controller_api(Operations(rollouts, Registry())), raise_server_exceptions=False)

    made = client.post(
        "/v1/keys", json={"name": "alice", "role": "reviewer", "expires_days": 30}, headers=root
    )
    assert made.status_code == 201, made.text
    alice = made.json()
    assert keys.verify(alice["key"]).name == "alice" and alice["state"] == "active" and alice["expires_at"]
    listed = client.get("/v1/keys", headers=root).json()
    assert [k["name"] for k in listed] == ["alice", "ops", "root"] and all("key" not in k for k in listed)
    assert alice["key"] not in client.get("/v1/keys", headers=root).text
    # a method the path does not take: the 405 names every method it does (both routes')
    refused = client.put("/v1/keys", json={}, headers=root)
    assert refused.status_code == 405 and {"GET", "POST"} <= set(refused.headers["allow"].split(", "))
    # an operator may not make or list keys; an app may do nothing here
    assert client.post("/v1/keys", json={"name": "x", "role": "admin"}, headers=ops).status_code == 403
    assert client.get("/v1/keys", headers=ops).status_code == 403
    # refusals say why: a second active key for a name, an unknown role, an unknown field
    twice = client.post("/v1/keys", json={"name": "alice", "role": "app"}, headers=root)
    assert twice.status_code == 409 and "revoke it first" in twice.json()["detail"]
    assert client.post("/v1/keys", json={"name": "b", "role": "root"}, headers=root).status_code == 422
    assert (
        client.post("/v1/keys", json={"name": "b", "role": "app", "by": "x"}, headers=root).status_code == 422
    )

    revoked = client.post("/v1/keys/revoke", json={"name": "alice"}, headers=ops)
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert client.post("/v1/keys/revoke", json={"name": "alice"}, headers=ops).status_code == 404
    out = client.post("/v1/labels/exclude", json={"actor": "alice", "reason": "mislabeled rust"}, headers=ops)
    assert out.status_code == 200 and out.json()["new"] is True
    assert (
        client.get("/v1/labels/excluded", headers=root).json()
        == ["alice"]
        == rollouts.store.excluded_actors()
    )
    assert (
        client.post("/v1/labels/exclude", json={"actor": "alice", "reason": " "}, headers=ops).status_code
        == 400
    )

    vouched = client.post(
        "/v1/labels/vouch", json={"actor": "bob", "reason": "gold set was wrong"}, headers=ops
    )
    assert vouched.status_code == 200 and vouched.json() == {"actor": "bob", "vouched": True, "new": True}
    assert rollouts.store.vouched_actors() == ["bob"]
    assert (
        client.post("/v1/labels/vouch", json={"actor": "bob", "reason": ""}, headers=ops).status_code == 422
    )

    trail = client.get("/v1/audit", headers=root).json()
    assert [(e["action"], e["actor"], e["target"]) for e in trail][:4] == [
        ("labels.vouch", "ops", "bob"),
        ("labels.exclude", "ops", "alice"),
        ("key.revoke", "ops", "alice"),
        ("key.create", "root", "alice"),
    ]
    assert trail[1]["source"] == "testclient" and trail[1]["detail"]["reason"] == "mislabeled rust"


def test_every_controller_route_answers_every_role_as_declared(rollouts: Rollouts) -> None:
    from benchmarks.hostile import role_matrix_mismatches
    from nicheloop.keys import ROLES

    keys = {role: ApiKeys(rollouts.store).create(name=role, role=role, created_by="t")[0] for role in ROLES}
    app = controller_api(Operations(rollouts, Registry()))
    client = TestClient(app, raise_server_exceptions=False)
    assert role_matrix_mismatches(client, keys, app=app) == []


def test_operators_change_the_review_budget_at_run_time_and_it_is_audited(rollouts: Rollouts) -> None:
    from nicheloop.review import QueuePolicy, ReviewQueue

    keys = ApiKeys(rollouts.store)
    ops = {"X-API-Key": keys.create(name="ops", role="operator", created_by="t")[0]}
    reviewer = {"X-API-Key": keys.create(name="rev", role="reviewer", created_by="t")[0]}
    policy = QueuePolicy(budget_per_hour=100)
    app = controller_api(Operations(rollouts, Registry()), review=policy)
    client = TestClient(app, raise_server_exceptions=False, headers=ops)
    assert client.get("/v1/review/budget").json()["per_hour"] == 100
    changed = client.put("/v1/review/budget", json={"per_hour": 7, "per_reviewer_day": 3})
    assert changed.status_code == 200, changed.text
    assert changed.json() == {"per_hour": 7, "per_day": 600, "per_reviewer_hour": 60, "per_reviewer_day": 3}
    assert ReviewQueue(rollouts.store, policy).stats()["budget"]["per_hour"] == 7  # what the gateway reads
    entry = Audit(rollouts.store).read(action="review")[0]
    assert (entry.action, entry.actor) == ("review.budget", "ops")
    assert entry.detail["before"]["per_hour"] == 100 and entry.detail["after"]["per_hour"] == 7
    assert client.put("/v1/review/budget", json={}).status_code == 400
    assert client.put("/v1/review/budget", json={"per_hour": -1}).status_code == 422
    assert client.put("/v1/review/budget", json={"per_week": 1}).status_code == 422
    assert client.put("/v1/review/budget", json={"per_hour": 1}, headers=reviewer).status_code == 403


def test_operators_change_the_gold_and_overlap_shares_at_run_time_and_claims_follow(
    rollouts: Rollouts,
) -> None:
    from nicheloop.review import QueuePolicy, ReviewQueue

    keys = ApiKeys(rollouts.store)
    ops = {"X-API-Key": keys.create(name="ops", role="operator", created_by="t")[0]}
    reviewer = {"X-API-Key": keys.create(name="rev", role="reviewer", created_by="t")[0]}
    policy = QueuePolicy(gold_share=0.05)
    client = TestClient(
        controller_api(Operations(rollouts, Registry()), review=policy),
        raise_server_exceptions=False,
        headers=ops,
    )
    assert client.get("/v1/review/shares").json() == {"gold": 0.05, "overlap": 0.0}
    changed = client.put("/v1/review/shares", json={"overlap": 0.3})
    assert changed.status_code == 200 and changed.json() == {"gold": 0.05, "overlap": 0.3}
    assert ReviewQueue(rollouts.store, policy).shares() == {"gold_share": 0.05, "overlap_share": 0.3}
    entry = Audit(rollouts.store).read(action="review")[0]
    assert (entry.action, entry.actor, entry.detail["after"]) == ("review.shares", "ops", changed.json())
    assert client.put("/v1/review/shares", json={}).status_code == 400
    for bad in ({"gold": 1.5}, {"overlap": -0.1}, {"gold": "NaN"}, {"kappa": 0.2}):
        assert client.put("/v1/review/shares", json=bad).status_code == 422, bad
    assert client.put("/v1/review/shares", json={"gold": 0.1}, headers=reviewer).status_code == 403
    assert client.get("/v1/review/shares").json() == {"gold": 0.05, "overlap": 0.3}


def test_with_no_rollout_the_status_shows_the_champions_traffic_and_old_calls_are_dropped(
    rollouts: Rollouts,
) -> None:
    now = time.time()
    old = ArmCalls(1000, 0, {bucket(5.0): 1000})
    rollouts.add_calls({(NO_ROLLOUT, "champion"): old}, now=now - ARM_CALLS_KEEP_S - 60)
    rollouts.add_calls({(NO_ROLLOUT, "champion"): ArmCalls(300, 3, {bucket(20.0): 300})}, now=now)
    assert rollouts.arm_calls(NO_ROLLOUT, since=0.0)["champion"].calls == 300  # the old row is gone
    champion = Operations(rollouts, Registry()).status()["arms"]["champion"]
    assert (champion["rps"], champion["errors"], champion["error_rate"]) == (1.0, 3, 0.01)
    assert champion["p50_ms"] == pytest.approx(20, rel=0.15)
