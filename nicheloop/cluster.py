"""Reaching the compute cluster: is a port open, and connect this process to Ray.

Every stage that runs work on Ray (serving, training) connects through here; starting a local
head is the launcher's job (``deploy/local/stack.py``).
"""

from __future__ import annotations

import logging
import socket
import time

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
