import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.local import stack
from nicheloop.bus import parse_event
from nicheloop.cluster import port_open
from nicheloop.contracts import FEEDBACK_TOPIC, PREDICTIONS_TOPIC, FeedbackEvent
from nicheloop.errors import InvalidInput, StackError
from nicheloop.settings import Settings, settings_env

ROOT = Path(__file__).resolve().parents[2]


def test_settings_derive_local_urls(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, kafka_port=1234, mlflow_port=2345)
    assert s.bootstrap_servers == "127.0.0.1:1234" and s.tracking_uri == "http://127.0.0.1:2345"
    assert s.db_url == f"sqlite:///{tmp_path.resolve() / 'nicheloop.db'}"
    assert Settings(kafka_bootstrap="kafka:9092").bootstrap_servers == "kafka:9092"


def test_settings_env_round_trips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = Settings(home=tmp_path, ray_worker_ports=(40000, 40999), drift_window=77)
    for key, value in settings_env(s).items():
        monkeypatch.setenv(key, value)
    assert Settings() == s.model_copy(update={"home": tmp_path.resolve()})


def test_parse_event_accepts_valid_and_refuses_malformed() -> None:
    ev = FeedbackEvent(prediction_id="p", label="a")
    assert parse_event(FEEDBACK_TOPIC, ev.model_dump_json().encode()) == ev
    for raw in (b"not json", b"{}", json.dumps({**ev.model_dump(mode="json"), "extra": 1}).encode(), None):
        with pytest.raises(InvalidInput):
            parse_event(FEEDBACK_TOPIC, raw)
    with pytest.raises(InvalidInput, match="no event schema"):
        parse_event("other.topic", b"{}")
    with pytest.raises(InvalidInput, match="PredictionEvent"):
        parse_event(PREDICTIONS_TOPIC, ev.model_dump_json().encode())


def test_process_lifecycle_leaves_nothing_behind(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    port = 29876
    # a parent with a child in the same session and one in a session of its own (as Ray starts its
    # workers): down must end all three
    sleeper = "[sys.executable, '-c', 'import time; time.sleep(600)']"
    code = (
        f"import subprocess, sys; subprocess.Popen({sleeper}); "
        f"subprocess.Popen({sleeper}, start_new_session=True);"
        f"import http.server; "
        f"http.server.HTTPServer(('127.0.0.1', {port}), http.server.BaseHTTPRequestHandler)"
        f".serve_forever()"
    )
    pid = stack.start_process(
        s, "monitor", [sys.executable, "-c", code], lambda: port_open("127.0.0.1", port)
    )
    assert stack.start_process(s, "monitor", ["false"], lambda: True) == pid  # idempotent
    assert [st.running for st in stack.status(s) if st.name == "monitor"] == [True]
    members = stack.family(pid)
    assert len(members) == 3 and sum(os.getpgid(p) == pid for p in members) == 2  # one left the group
    assert stack.down(s) == ["monitor"]
    assert not stack.alive(members) and not port_open("127.0.0.1", port)
    assert [st.running for st in stack.status(s) if st.name == "monitor"] == [False]


def test_a_process_that_dies_at_start_names_its_log(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    with pytest.raises(StackError, match="monitor.log"):
        stack.start_process(
            s, "monitor", [sys.executable, "-c", "raise SystemExit(3)"], lambda: False, timeout=10
        )


def test_missing_kafka_jars_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="make setup"):
        stack.kafka_classpath(Settings(home=tmp_path, kafka_libs=tmp_path / "none"))


def test_import_contracts_hold() -> None:
    """services, monitoring and training never import each other; only bus/registry touch kafka/mlflow."""
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_connect_ray_to_a_head_that_is_not_up_fails_fast_and_names_the_log(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # in a fresh process: this one may already be connected to a cluster (connect_ray then returns)
    code = (
        "import pathlib, sys, ray; from nicheloop.settings import Settings\n"
        "from nicheloop.cluster import connect_ray\n"
        f"home = pathlib.Path({str(tmp_path)!r})\n"
        f"try:\n    connect_ray(Settings(home=home, ray_port={port}), timeout=0.5)\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc, ray.is_initialized()); sys.exit(3)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 3, out.stderr[-2000:]
    assert re.search(
        rf"^StackError .*127\.0\.0\.1:{port}.*stack up.*{tmp_path.name}/logs/ray\.log False$",
        out.stdout.strip(),
    ), out.stdout
