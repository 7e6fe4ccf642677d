"""Connecting to a Ray head that is not up fails fast and names its log."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


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
