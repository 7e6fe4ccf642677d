"""The local-stack launcher: processes start and stop and leave nothing behind; missing jars
say how to get them."""

import os
import sys
from pathlib import Path

import pytest

from deploy.local import stack
from nicheloop.cluster import port_open
from nicheloop.errors import StackError
from nicheloop.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


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
