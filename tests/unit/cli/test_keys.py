"""``nicheloop keys``: a key made from the shell works, is listed without its secret, is revoked,
and both acts are in the audit log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from nicheloop.errors import Unauthenticated
from nicheloop.keys import ApiKeys, Audit
from nicheloop.rollouts import Rollouts
from nicheloop.settings import Settings, get_settings
from nicheloop.store import Store


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("NICHELOOP_HOME", str(tmp_path))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_keys_are_made_listed_and_revoked_from_the_shell_with_an_audit_trail(settings: Settings) -> None:
    runner = CliRunner()
    made = runner.invoke(app, ["keys", "create", "--name", "alice", "--role", "reviewer"])
    assert made.exit_code == 0, made.output
    printed = json.loads(made.stdout.splitlines()[0])
    store = Store(settings.db_url)
    assert ApiKeys(store).verify(printed["key"]).name == "alice"
    listed = runner.invoke(app, ["keys", "list"])
    assert "alice" in listed.stdout and "reviewer" in listed.stdout and "active" in listed.stdout
    assert printed["key"] not in listed.stdout
    twice = runner.invoke(app, ["keys", "create", "--name", "alice", "--role", "app"])
    assert twice.exit_code == 1 and "revoke it first" in twice.output
    bad_role = runner.invoke(app, ["keys", "create", "--name", "bob", "--role", "root"])
    assert bad_role.exit_code == 1 and "unknown role" in bad_role.output
    assert runner.invoke(app, ["keys", "revoke", "alice"]).exit_code == 0
    with pytest.raises(Unauthenticated, match="revoked"):
        ApiKeys(store).verify(printed["key"])
    assert [(e.action, e.target) for e in Audit(store).read()] == [
        ("key.revoke", "alice"),
        ("key.create", "alice"),
    ]
    assert runner.invoke(app, ["keys", "revoke", "alice"]).exit_code == 1
    excluded = runner.invoke(app, ["labels", "exclude", "--actor", "alice", "--reason", "left the team"])
    assert excluded.exit_code == 0 and store.excluded_actors() == ["alice"]
    assert Audit(store).read()[0].action == "labels.exclude"
    vouched = runner.invoke(app, ["labels", "vouch", "--actor", "bob", "--reason", "gold set was wrong"])
    assert vouched.exit_code == 0 and "vouched for: the labels of bob" in vouched.output
    assert store.vouched_actors() == ["bob"] and Audit(store).read()[0].action == "labels.vouch"
    assert runner.invoke(app, ["labels", "vouch", "--actor", "bob", "--reason", " "]).exit_code == 1
    shown = runner.invoke(app, ["audit", "--action", "key"])
    assert shown.exit_code == 0 and [line.split()[3] for line in shown.stdout.splitlines()] == [
        "key.revoke",
        "key.create",
    ]
    rows = [
        json.loads(line)
        for line in runner.invoke(app, ["audit", "--json", "--limit", "1"]).stdout.splitlines()
    ]
    assert [(r["action"], r["target"], r["detail"]["reason"]) for r in rows] == [
        ("labels.vouch", "bob", "gold set was wrong")
    ]


def test_an_operator_pauses_and_resumes_the_retraining_policy_from_the_shell(settings: Settings) -> None:
    runner = CliRunner()
    paused = runner.invoke(app, ["policy", "pause", "--reason", "relabeling week"])
    assert paused.exit_code == 0 and "paused: it decides but starts no run" in paused.output
    again = runner.invoke(app, ["policy", "pause", "--reason", "twice"])
    assert "(it already was)" in again.output
    assert Rollouts(Store(settings.db_url)).policy_pause()["reason"] == "relabeling week"  # type: ignore[index]
    resumed = runner.invoke(app, ["policy", "resume", "--reason", "done"])
    assert resumed.exit_code == 0 and "running" in resumed.output
    assert Rollouts(Store(settings.db_url)).policy_pause() is None
    trail = [
        (e.action, e.source, e.detail["reason"]) for e in Audit(Store(settings.db_url)).read(action="policy")
    ]
    assert trail == [("policy.resume", "cli", "done"), ("policy.pause", "cli", "relabeling week")]
    assert runner.invoke(app, ["policy", "pause"]).exit_code != 0  # a reason is required
