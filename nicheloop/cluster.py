"""Reaching the compute cluster: is a port open, and connect this process to Ray.

Every stage that runs work on Ray (serving, training) connects through here; starting a local
head is the launcher's job (``deploy/local/stack.py``).
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

from nicheloop.errors import StackError
from nicheloop.settings import Settings

log = logging.getLogger(__name__)


def port_open(host: str, port: int, *, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port`` within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _root_reason(exc: BaseException) -> str:
    """The last line of the innermost cause: what actually went wrong."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _try_connect(address: str) -> None:
    """One attempt; ``ray.init`` hangs for minutes on a GCS that does not listen, so look first."""
    import ray

    host, _, port = address.rpartition(":")
    if port.isdigit() and "://" not in host and not port_open(host, int(port), timeout=2.0):
        raise ConnectionError(f"nothing listens on {address}")
    ray.init(address=address, log_to_driver=False)


def connect_ray(s: Settings, *, timeout: float = 90.0) -> None:
    """Connect this process to the Ray cluster at ``s.ray_head_address`` unless it already is.

    A head that is still starting (GCS up, raylet not yet registered) is retried until ``timeout``.

    Raises:
        StackError: if no connection is made in time; the message names the head's log.
    """
    import ray

    if ray.is_initialized():
        return
    deadline, attempt = time.monotonic() + timeout, 0
    while True:
        attempt += 1
        try:
            _try_connect(s.ray_head_address)
            return
        except (ConnectionError, RuntimeError) as exc:
            ray.shutdown()
            if time.monotonic() >= deadline:
                raise StackError(
                    f"cannot connect to the Ray cluster at {s.ray_head_address} after {attempt} attempts "
                    f"({_root_reason(exc)}); is it up (`nicheloop stack up`)? The local head logs to "
                    f"{s.home.resolve() / 'logs' / 'ray.log'}"
                ) from exc
            log.warning("Ray at %s not reachable yet (%s); retrying", s.ray_head_address, exc)
            time.sleep(2.0)


def serve_ingress_env(s: Settings) -> dict[str, str]:
    """Environment for a Ray head whose Serve takes HTTP as ``s.serve_ingress`` says.

    Ray Serve reads these when its controller starts. With ``haproxy`` an HAProxy process per node
    forwards straight to the gateway replicas' own HTTP servers (no Python proxy hop); its files sit
    in a short per-stack folder (Ray adds a 56-character folder of its own, and HAProxy takes a log
    socket path of at most 97 bytes) and its ports in
    ``s.ingress_ports``, so two stacks on one machine do not meet.
    """
    if s.serve_ingress == "proxy":
        # the throughput flag would start each replica's own HTTP server (direct ingress) too
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
    low, high = s.ingress_ports
    middle = (low + 3 + high) // 2
    folder = haproxy_dir(s)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        # Ray's companion of the HAProxy ingress: user code and the router on the replica's own
        # event loop, request logs buffered, the GC frozen after start (docs/serving.md)
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(low),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(low + 1),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(low + 2),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(low + 3),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(middle),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(middle + 1),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(high),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(folder / "metrics.sock"),
        # a stopping gateway replica keeps answering this long after HAProxy is told it goes (30 s
        # by default, for proxies on other nodes); this stack's HAProxy hears within a second
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }


def haproxy_dir(s: Settings) -> Path:
    """Where Ray Serve's HAProxy of this stack keeps its config and sockets."""
    return Path("/tmp") / f"nlhap-{s.serve_port}"
