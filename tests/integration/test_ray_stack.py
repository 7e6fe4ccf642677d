"""The stack's Ray head against what a machine may hold: a token left by an earlier local ``ray.init()``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.local import stack
from nicheloop.settings import Settings, settings_env

pytestmark = pytest.mark.integration

CONNECT = (
    "import json, ray; from nicheloop.settings import get_settings; "
    "from nicheloop.cluster import connect_ray; "
    "connect_ray(get_settings(), timeout=20); print(json.dumps(ray.cluster_resources()))"
)


def test_a_driver_connects_to_the_stack_head_although_a_ray_token_file_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "user"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("f" * 64)  # what any local ray.init() leaves behind
    monkeypatch.setenv("HOME", str(home))  # the head starts as `stack up` does, with this HOME
    for key in [k for k in os.environ if k.startswith("RAY_AUTH")]:
        monkeypatch.delenv(key)
    s = Settings(home=tmp_path / "stack", ray_port=27379, ray_worker_ports=(22000, 22999), ray_num_cpus=1)
    try:
        stack.up(s, only=["ray"])
        out = subprocess.run(
            [sys.executable, "-c", CONNECT],
            env={**os.environ, **settings_env(s)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert json.loads(out.stdout.strip().splitlines()[-1])["CPU"] == 1.0
    finally:
        stack.down(s)
