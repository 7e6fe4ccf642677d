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


def test_the_haproxy_ingress_keeps_to_its_ports_and_short_paths(tmp_path: Path) -> None:
    from nicheloop.cluster import haproxy_dir, serve_ingress_env
    from nicheloop.settings import Settings

    s = Settings(home=tmp_path / ("deep" * 30), serve_port=28000, ingress_ports=(28100, 28109))
    env = serve_ingress_env(s)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    ports = {k: int(v) for k, v in env.items() if k.endswith("_PORT")}
    assert len(set(ports.values())) == len(ports) and all(28100 <= p <= 28109 for p in ports.values())
    http = range(
        ports["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"], ports["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] + 1
    )
    grpc = range(
        ports["RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT"], ports["RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT"] + 1
    )
    assert len(http) >= 3 and len(grpc) >= 1 and not set(http) & set(grpc)
    assert not set(http) & {ports[k] for k in ports if "DIRECT" not in k}
    # Ray puts each socket in a folder of 56 characters under ours; HAProxy refuses log sockets over 97
    sockets = [v for k, v in env.items() if k.endswith("SOCKET_PATH")]
    assert sockets and all(v.startswith(str(haproxy_dir(s))) for v in sockets)
    assert all(len(str(Path(v).parent / ("x" * 56) / Path(v).name)) <= 97 for v in sockets)
    # two stacks on one machine do not share the folder
    assert haproxy_dir(s) != haproxy_dir(s.model_copy(update={"serve_port": 18000}))


def test_the_python_proxy_ingress_turns_haproxy_off_whatever_the_shell_says(tmp_path: Path) -> None:
    from nicheloop.cluster import serve_ingress_env
    from nicheloop.settings import Settings

    assert serve_ingress_env(Settings(home=tmp_path, serve_ingress="proxy")) == {
        "RAY_SERVE_ENABLE_HA_PROXY": "0",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0",
    }
