"""The local-stack launcher (an entry point, above the stages): a single-node Kafka broker
(KRaft), an MLflow server, a Ray head, the monitor and the rollout controller.

Every process runs in its own session with a pid file under ``$NICHELOOP_HOME/run`` and a log
under ``$NICHELOOP_HOME/logs``, so ``down`` can end each process group and leave nothing behind.
Production replaces each part by a URL (see :class:`nicheloop.settings.Settings`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nicheloop.cluster import haproxy_dir, port_open, serve_ingress_env
from nicheloop.errors import StackError
from nicheloop.settings import Settings, child_env

log = logging.getLogger(__name__)

_KAFKA_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{cport}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=3
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
"""

_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {logfile}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
"""


@dataclass(frozen=True)
class ProcStatus:
    name: str
    pid: int | None
    running: bool
    address: str


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _run_dir(s: Settings) -> Path:
    return s.home.resolve() / "run"


def _pid(s: Settings, name: str) -> int | None:
    path = _run_dir(s) / f"{name}.pid"
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def start_process(
    s: Settings,
    name: str,
    cmd: list[str],
    ready: Callable[[], bool],
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
    *,
    secrets: bool = False,
) -> int:
    """Start ``cmd`` in its own session unless ``name`` already runs; wait until ``ready()``.
    Its environment holds nicheloop's secrets only with ``secrets`` (the Ray head's).

    Raises:
        StackError: if the process exits or is not ready within ``timeout`` seconds (the
            message names its log file).
    """
    existing = _pid(s, name)
    if existing is not None:
        return existing
    logs = s.home.resolve() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _run_dir(s).mkdir(parents=True, exist_ok=True)
    logfile = logs / f"{name}.log"
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=child_env(s, secrets=secrets, extra=env),
        )
    (_run_dir(s) / f"{name}.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{name} exited with code {proc.returncode} while starting; see {logfile}")
        if ready():
            log.info("%s is up (pid %d)", name, proc.pid)
            return proc.pid
        time.sleep(0.5)
    stop_process(s, name)
    raise StackError(f"{name} was not ready after {timeout:.0f}s; see {logfile}")


def stop_process(s: Settings, name: str, grace: float = 20.0) -> bool:
    """End the process group of ``name`` and every process it started (SIGTERM, then SIGKILL).

    Descendants that left the group are ended too (Ray's workers run in sessions of their own and
    would otherwise outlive their raylet, holding ports the next head hands out). Returns True if it ran.
    """
    return _end(s, name, ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)))


def kill_process(s: Settings, name: str, timeout: float = 10.0) -> bool:
    """SIGKILL the process group of ``name`` and its descendants at once (fault injection); True if it ran."""
    return _end(s, name, ((signal.SIGKILL, timeout),))


def _end(s: Settings, name: str, steps: tuple[tuple[signal.Signals, float], ...]) -> bool:
    pid = _pid(s, name)
    (_run_dir(s) / f"{name}.pid").unlink(missing_ok=True)
    if pid is None:
        return False
    members = family(pid)
    for sig, wait in steps:
        _signal(pid, members, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and alive(members):
            time.sleep(0.1)
        if not alive(members):
            break
    return True


def _signal(pgid: int, pids: set[int], sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) for every process in /proc."""
    table = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            table[int(proc.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def family(pgid: int) -> set[int]:
    """The live processes of group ``pgid`` and all their descendants, whatever group they moved to."""
    table = _processes()
    members = {pid for pid, (_, group, state) in table.items() if group == pgid and state != "Z"}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _, state) in table.items() if ppid in members and state != "Z"}
        grew = not children <= members
        members |= children
    return members


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` that still run (zombies do not count)."""
    table = _processes()
    return {pid for pid in pids if pid in table and table[pid][2] != "Z"}


# -- the three infrastructure processes -------------------------------------------------------
def kafka_classpath(s: Settings) -> str:
    libs = s.kafka_lib_dir
    if not libs.is_dir() or not any(libs.glob("kafka_2.13-*.jar")):
        raise StackError(f"Kafka jars not found in {libs}; run `make setup` (resolves them with Maven)")
    return f"{libs}/*"


def start_kafka(s: Settings) -> int:
    home = s.home.resolve() / "kafka"
    data = home / "data"
    home.mkdir(parents=True, exist_ok=True)
    props = home / "server.properties"
    props.write_text(
        _KAFKA_PROPERTIES.format(host=s.host, port=s.kafka_port, cport=s.kafka_controller_port, data=data)
    )
    log4j = home / "log4j2.properties"
    log4j.write_text(_LOG4J2.format(logfile=s.home.resolve() / "logs" / "kafka-server.log"))
    java = shutil.which("java") or "java"
    cp = kafka_classpath(s)
    if not (data / "meta.properties").exists():
        subprocess.run(
            [
                java,
                "-cp",
                cp,
                f"-Dlog4j2.configurationFile={log4j}",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                uuid.uuid4().hex[:22],
                "-c",
                str(props),
            ],
            check=True,
            capture_output=True,
        )
    cmd = [
        java,
        "-Xms256m",
        "-Xmx768m",
        "-XX:+UseG1GC",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        cp,
        "kafka.Kafka",
        str(props),
    ]
    return start_process(s, "kafka", cmd, lambda: port_open(s.host, s.kafka_port), timeout=90)


def start_mlflow(s: Settings) -> int:
    home = s.home.resolve() / "mlflow"
    home.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        s.mlflow_backend_uri or f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination",
        str(home / "artifacts"),
        "--host",
        s.host,
        "--port",
        str(s.mlflow_port),
        "--workers",
        "1",
    ]
    return start_process(s, "mlflow", cmd, lambda: _http_ok(f"{s.tracking_uri}/health"), timeout=180)


def start_ray(s: Settings) -> int:
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        s.host,
        "--port",
        str(s.ray_port),
        "--num-cpus",
        str(s.ray_num_cpus),
        "--include-dashboard",
        "false",
        "--disable-usage-stats",
        # keep Ray's own ports off ours (and off a second stack's, e.g. the tests')
        "--ray-client-server-port",
        str(s.ray_port + 1),
        "--dashboard-agent-listen-port",
        str(s.ray_port + 2),
        "--min-worker-port",
        str(s.ray_worker_ports[0]),
        "--max-worker-port",
        str(s.ray_worker_ports[1]),
    ]
    # Ready when the GCS listens and the head's raylet has started its agent (a driver that connects
    # before the raylet registers fails), so the agent's port is waited for as well.
    # Ray turns token authentication on for a head when ~/.ray/auth_token exists (any local
    # ``ray.init()`` writes one), while drivers that connect by address leave it off and are refused:
    # the mode is pinned (RAY_AUTH_MODE from the environment wins, e.g. ``token`` with RAY_AUTH_TOKEN).
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
        **serve_ingress_env(s),
    }
    return start_process(
        s,
        "ray",
        cmd,
        lambda: port_open(s.host, s.ray_port) and port_open(s.host, s.ray_port + 2),
        timeout=120,
        env=env,
        secrets=True,  # the gateway replicas sign prediction ids (unless the key is a file)
    )


def start_monitor(s: Settings, *, stages: str | None = None) -> int:
    """The monitor (its ``stages``, all by default, and /metrics) as a process of the stack, ready
    once /metrics listens."""
    cmd = [sys.executable, "-m", "cli", "monitor", *(["--stages", stages] if stages else [])]
    return start_process(s, "monitor", cmd, lambda: port_open(s.host, s.metrics_port))


def start_controller(s: Settings) -> int:
    """The rollout controller as a process of the stack, ready once its HTTP listens."""
    cmd = [sys.executable, "-m", "cli", "rollout", "controller"]
    return start_process(s, "controller", cmd, lambda: port_open(s.host, s.controller_port))


# In start order; ``down`` stops them in reverse (the controller first, Kafka last).
PROCESSES: dict[str, Callable[[Settings], int]] = {
    "kafka": start_kafka,
    "mlflow": start_mlflow,
    "ray": start_ray,
    "monitor": start_monitor,
    "controller": start_controller,
}


def up(s: Settings, *, only: list[str] | None = None) -> list[ProcStatus]:
    """Start every process of the stack that is not running yet (idempotent); ``only`` picks some."""
    for name, start in PROCESSES.items():
        if only is None or name in only:
            start(s)
    return status(s)


def down(s: Settings) -> list[str]:
    """Stop the loop's services, then the infrastructure; returns the names that were running."""
    stopped = [name for name in reversed(PROCESSES) if stop_process(s, name)]
    shutil.rmtree(haproxy_dir(s), ignore_errors=True)  # the ingress's config and sockets went with Ray
    return stopped


def status(s: Settings) -> list[ProcStatus]:
    addresses = {
        "kafka": s.bootstrap_servers,
        "mlflow": s.tracking_uri,
        "ray": s.ray_head_address,
        "monitor": f"http://{s.host}:{s.metrics_port}/metrics",
        "controller": f"http://{s.host}:{s.controller_port}/v1/rollouts/status",
    }
    out = []
    for name, address in addresses.items():
        pid = _pid(s, name)
        out.append(ProcStatus(name, pid, pid is not None, address))
    return out
