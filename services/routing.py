"""Which model answers a request during a rollout, by a stable hash of its key.

The key is the caller's ``X-Request-Key`` when given (a device, a user: one caller sees one model),
else the image's content hash (the same image always meets the same model). It is hashed with
SHA-256, not Python's ``hash`` (salted per process: two gateway replicas would disagree). A key
answers from the candidate when its point in [0, 1) falls below the canary share, so a key in the
5 % cohort stays in the candidate's cohort at 25 %; the shadow draw uses an independent point.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from nicheloop.contracts import Arm
from nicheloop.latency import bucket
from nicheloop.rollouts import NO_ROLLOUT, ArmCalls, Rollouts, Routing

log = logging.getLogger(__name__)


def point(key: str, salt: str) -> float:
    """A uniform point in [0, 1) fixed by ``key`` and ``salt`` (the first 8 bytes of a SHA-256)."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Route:
    """Where one request goes: the arm that answers it, and whether the candidate also sees it in shadow."""

    answer: Arm
    mirror: bool = False


def route(key: str, *, rollout_id: int, share: float, mirror: float) -> Route:
    """The route of the request with ``key`` in rollout ``rollout_id``: answered by the candidate
    below ``share``, else by the champion and mirrored to the candidate below ``mirror``. Each
    rollout draws its own cohorts (the salt), so one candidate's cohort is not the next one's."""
    if point(key, f"answer:{rollout_id}") < share:
        return Route("candidate")
    return Route("champion", mirror=point(key, f"mirror:{rollout_id}") < mirror)


QUIET_FLUSH_S = 30.0  # the champion's calls while no rollout is live are flushed this seldom


class ArmCounter:
    """Calls, failures and latencies per (rollout, arm) since the last :meth:`take`, in this replica
    (the event loop's thread only: no lock). The champion's calls while no rollout is live count
    under :data:`NO_ROLLOUT` and leave at most every :data:`QUIET_FLUSH_S`: the operator's view of
    serving needs no more, and the store no row every few seconds."""

    def __init__(self) -> None:
        self._open: dict[tuple[int, str], tuple[int, int, dict[int, int]]] = {}
        self.dropped = 0  # shadow calls not made: the bound was reached, or the replica was busy
        self._quiet_at = time.monotonic()

    def record(self, rollout_id: int, arm: Arm, ms: float | None, *, ok: bool) -> None:
        """Count one call; ``ms`` None: a call whose latency is not the model's (an idle-priority
        shadow call, which waited for spare CPU)."""
        calls, errors, hist = self._open.get((rollout_id, arm), (0, 0, {}))
        if ms is not None:
            k = bucket(ms)
            hist[k] = hist.get(k, 0) + 1
        self._open[(rollout_id, arm)] = (calls + 1, errors + (not ok), hist)

    def put_back(self, taken: dict[tuple[int, str], ArmCalls]) -> None:
        """Count again what :meth:`take` gave but could not be stored (the next flush carries it)."""
        for (rollout_id, arm), got in taken.items():
            calls, errors, hist = self._open.get((rollout_id, arm), (0, 0, {}))
            for k, n in got.latency.items():
                hist[k] = hist.get(k, 0) + n
            self._open[(rollout_id, arm)] = (calls + got.calls, errors + got.errors, hist)

    def take(self, now: float | None = None) -> dict[tuple[int, str], ArmCalls]:
        """What was counted since the last call (the no-rollout counts only every
        :data:`QUIET_FLUSH_S`; ``now``: monotonic seconds), and start afresh."""
        now = time.monotonic() if now is None else now
        held = now - self._quiet_at < QUIET_FLUSH_S
        if not held:
            self._quiet_at = now
        taken = {k: v for k, v in self._open.items() if not (held and k[0] == NO_ROLLOUT)}
        self._open = {k: v for k, v in self._open.items() if k not in taken}
        return {key: ArmCalls(c, e, h) for key, (c, e, h) in taken.items()}


class ModelCalls:
    """Every model call of this replica by arm and model version since it started, as Prometheus
    counters and a latency histogram (the rollout's gates read :class:`ArmCounter`'s flushes; these
    are for dashboards and alerts, which compare the arms and versions side by side)."""

    BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._calls = Counter(
            "nicheloop_model_calls",
            "Model calls of this gateway replica by arm (champion, candidate, shadow), version and outcome",
            ["arm", "model_version", "outcome"],
            registry=self.registry,
        )
        self._seconds = Histogram(
            "nicheloop_model_call_seconds",
            "Latency of this gateway replica's model calls by arm and version",
            ["arm", "model_version"],
            buckets=self.BUCKETS_S,
            registry=self.registry,
        )

    def record(self, arm: Arm, version: str, seconds: float, *, ok: bool) -> None:
        self._calls.labels(arm, version, "ok" if ok else "failed").inc()
        self._seconds.labels(arm, version).observe(seconds)


class RoutingWatch:
    """The live rollout's routing as this gateway replica last read it, re-read in the background
    every ``refresh_s`` (a request never waits on the store but the first), with this replica's arm
    counts flushed on each read. A replica that cannot read the store for ``stale_s`` routes
    everything to the champion."""

    def __init__(self, rollouts: Rollouts, *, refresh_s: float, stale_s: float) -> None:
        self.rollouts, self.refresh_s, self.stale_s = rollouts, refresh_s, stale_s
        self.counter = ArmCounter()
        self.shadows: set[asyncio.Task[None]] = set()  # mirrored calls in flight (held: none is collected)
        self._routing: Routing | None = None
        self._read_at = -math.inf
        self._reading: asyncio.Task[None] | None = None

    async def current(self) -> Routing | None:
        now = time.time()
        if now - self._read_at > self.refresh_s and (self._reading is None or self._reading.done()):
            self._reading = asyncio.ensure_future(self._read())
            if self._read_at == -math.inf:  # never read: this one request waits
                await asyncio.shield(self._reading)
        if now - self._read_at > self.stale_s:
            return None
        return self._routing

    async def _read(self) -> None:
        taken = self.counter.take()
        try:
            self._routing = await asyncio.to_thread(self._sync, taken)
            self._read_at = time.time()
        except Exception as exc:  # noqa: BLE001  the store is down: the champion answers alone
            self.counter.put_back(taken)
            log.warning("rollout routing not read (%s); the champion answers if this lasts", exc)

    def _sync(self, taken: dict[tuple[int, str], ArmCalls]) -> Routing | None:
        now = time.time()
        self.rollouts.add_calls(taken, now=now)
        return self.rollouts.routing(now, stale_s=self.stale_s)
