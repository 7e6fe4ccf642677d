"""Publishing events that are never lost: Kafka when it answers, a durable local spool when not."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from pydantic import BaseModel

from nicheloop.spool import Spool, SpoolDepth, SpoolFull, orphans

log = logging.getLogger(__name__)


class Publisher:
    """Publishes events keyed by ``prediction_id`` (acks=all, idempotent, batched by linger).

    Never blocks serving on the broker for long: when the broker is unreachable, or a send
    fails, or older events still wait in the spool, events go to the durable local
    :class:`~nicheloop.spool.Spool`; a background thread delivers the spool, oldest first,
    when the broker is back.
    """

    DELIVERY_TIMEOUT_MS = 20_000

    def __init__(
        self,
        bootstrap: str,
        spool_dir: Path,
        name: str = "publisher",
        spool_max_events: int = 100_000,
        linger_ms: int = 50,
        retry_s: float = 1.0,
        stall_s: float = 45.0,
        report: Callable[[list[SpoolDepth]], None] | None = None,
        report_every_s: float = 10.0,
    ) -> None:
        self.bootstrap, self.linger_ms, self.retry_s, self.stall_s = bootstrap, linger_ms, retry_s, stall_s
        # records handed to the producer and not yet acknowledged: token -> (sent at, topic, key, value)
        self._inflight: dict[int, tuple[float, str, str, str]] = {}
        self._tokens = itertools.count()
        self.spool = Spool(spool_dir / f"{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}.spool", spool_max_events)
        self._producer: KafkaProducer | None = None
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # the spools' depths go to ``report`` (nicheloop.spools) every ``report_every_s``, from a thread
        # of their own: a store that is slow to answer must not hold up delivery
        self.report_every_s = report_every_s
        self._orphaned: list[Spool] = []  # the drainer's adopted orphans, as it last listed them
        self._emptied: deque[SpoolDepth] = deque()  # adopted orphans deleted since the last report
        self._drained = threading.Event()  # set once the drainer has ended: the reporter's last turn
        self._drainer = threading.Thread(
            target=self._drain_forever, name="nicheloop-spool-drainer", daemon=True
        )
        self._drainer.start()
        self._reporter = (
            threading.Thread(
                target=self._report_forever, args=(report,), name="nicheloop-spool-reporter", daemon=True
            )
            if report is not None
            else None
        )
        if self._reporter is not None:
            self._reporter.start()

    def _make_producer(self) -> KafkaProducer:
        return KafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=self.linger_ms,
            max_block_ms=1000,
            request_timeout_ms=5000,
            delivery_timeout_ms=self.DELIVERY_TIMEOUT_MS,
            reconnect_backoff_max_ms=2000,
            key_serializer=lambda k: k.encode(),
            value_serializer=lambda v: v.encode(),
            client_id="nicheloop-publisher",
        )

    def _connected_producer(self) -> KafkaProducer | None:
        """The producer if connected; never connects (the request path must not wait on it)."""
        return self._producer

    def _get_producer(self) -> KafkaProducer | None:
        """Connect if needed (background thread only: connecting can take many seconds)."""
        with self._lock:
            if self._producer is None and time.monotonic() >= self._retry_at:
                try:
                    self._producer = self._make_producer()
                except KafkaError as exc:
                    log.warning(
                        "broker %s unreachable (%s); spooling events to %s",
                        self.bootstrap,
                        exc,
                        self.spool.path,
                    )
                    self._retry_at = time.monotonic() + self.retry_s
            return self._producer

    @property
    def spool_depth(self) -> int:
        return len(self.spool)

    @property
    def spool_capacity(self) -> int:
        return self.spool.max_events

    def publish(self, topic: str, key: str, event: BaseModel) -> None:
        """Hand ``event`` over without waiting for the broker's acknowledgement.

        Raises:
            SpoolFull: the broker is unreachable and the spool is at its bound.
        """
        value = event.model_dump_json()
        if not self._try_send(topic, key, value):
            self.spool.append(topic, key, value)

    def publish_durable(self, topic: str, key: str, event: BaseModel, ack_timeout_s: float = 5.0) -> None:
        """Return only once the event is acknowledged by the broker or fsynced into the spool.

        A send that times out is spooled as well: the broker may then get it twice, which the
        consumers' idempotent writes absorb. Raises SpoolFull like :meth:`publish`.
        """
        value = event.model_dump_json()
        future = self._try_send(topic, key, value)
        if future is not None:
            try:
                future.get(timeout=ack_timeout_s)
                return
            except KafkaError as exc:
                log.warning(
                    "no ack for %s on %s within %.0fs (%s); spooling it", key, topic, ack_timeout_s, exc
                )
        self.spool.append(topic, key, value)

    def _try_send(self, topic: str, key: str, value: str) -> Any:
        if len(self.spool):
            return None  # older events wait: keep the order
        producer = self._connected_producer()
        if producer is None:
            return None
        token = next(self._tokens)
        self._inflight[token] = (time.monotonic(), topic, key, value)
        try:
            future = producer.send(topic, key=key, value=value)
        except KafkaError as exc:
            log.warning("send of %s to %s failed (%s); spooling it", key, topic, exc)
            self._inflight.pop(token, None)
            return None
        future.add_callback(lambda _meta: self._inflight.pop(token, None))
        future.add_errback(self._spool_failed, token)
        return future

    def _spool_failed(self, token: int, exc: Exception) -> None:
        item = self._inflight.pop(token, None)
        if item is None:
            return  # the stall watchdog spooled it already
        _, topic, key, value = item
        log.warning("event %s on %s not delivered (%s); spooling it", key, topic, exc)
        self._spool_or_log(topic, key, value)

    def _spool_or_log(self, topic: str, key: str, value: str) -> None:
        try:
            self.spool.append(topic, key, value)
        except SpoolFull:
            log.error("event %s on %s lost: the spool is full", key, topic)

    def _check_stalled(self) -> bool:
        """Spool what a wedged producer holds and replace the producer. Returns True if it did.

        kafka-python can leave a batch unacknowledged forever after broker restarts; its
        delivery timeout does not always fire. Nothing may stay in memory that long: the
        records are spooled (the old producer may still deliver some: the consumers' idempotent
        writes absorb the duplicates) and a new producer takes over.
        """
        oldest = min((sent for sent, *_ in list(self._inflight.values())), default=None)
        if oldest is None or time.monotonic() - oldest < self.stall_s:
            return False
        with self._lock:
            stuck = list(self._inflight.items())
            self._inflight.clear()
        log.error(
            "producer stalled: %d records unacknowledged for %.0fs; spooling them and reconnecting",
            len(stuck),
            self.stall_s,
        )
        for _, (_, topic, key, value) in sorted(stuck):
            self._spool_or_log(topic, key, value)
        self._reset_producer()
        return True

    def _reset_producer(self) -> None:
        """Drop the current producer (closed in the background); the drainer connects a new one."""
        with self._lock:
            old, self._producer = self._producer, None
        if old is not None:
            threading.Thread(target=_close_quietly, args=(old,), daemon=True).start()

    def drain_once(self, batch: int = 500, timeout_s: float = 10.0) -> int:
        """Deliver up to ``batch`` spooled events, oldest first; returns how many were acknowledged."""
        pending = self.spool.head(batch)
        producer = self._get_producer() if pending else None
        if producer is None:
            return 0
        sent = []
        for item in pending:
            try:
                sent.append((item.id, producer.send(item.topic, key=item.key, value=item.value)))
            except KafkaError:
                break
        try:
            producer.flush(timeout=timeout_s)
        except KafkaError:
            pass
        acked = [i for i, future in sent if future.is_done and future.succeeded()]
        self.spool.remove(acked)
        return len(acked)

    def _drain_forever(self) -> None:
        # orphans first: connecting to a broker that is away can take many seconds
        orphaned = orphans(self.spool.path.parent, exclude=self.spool.path)
        progress_at = time.monotonic()
        while not self._stop.wait(0.2 if len(self.spool) or orphaned else 1.0):
            try:
                orphaned = self._adopt(orphaned)
                self._check_stalled()
                self._orphaned = orphaned
                if self._producer is None:
                    self._get_producer()
                if not len(self.spool) or self.drain_once() > 0:
                    progress_at = time.monotonic()
                    continue
                if self._producer is not None and time.monotonic() - progress_at > self.stall_s:
                    log.error(
                        "spool not draining for %.0fs with a connected producer; reconnecting", self.stall_s
                    )
                    self._reset_producer()
                    progress_at = time.monotonic()
                self._stop.wait(self.retry_s)
            except Exception:
                log.exception("spool drain failed; retrying")
                self._stop.wait(self.retry_s)

        for orphan in orphaned:
            orphan.close()  # still on disk: the next publisher delivers the rest

    def _report_forever(self, report: Callable[[list[SpoolDepth]], None]) -> None:
        """Tell ``report`` what this spool and the adopted orphans hold, now and every
        ``report_every_s`` until closed, and once more at the end; a failed report is only logged."""
        while True:
            last = self._drained.is_set()
            emptied = [self._emptied.popleft() for _ in range(len(self._emptied))]
            depths = [SpoolDepth(s.path.name, len(s), s.max_events) for s in (self.spool, *self._orphaned)]
            try:
                report(depths + emptied)
            except Exception as exc:  # noqa: BLE001  the store is away: the next report tries again
                self._emptied.extend(emptied)
                log.warning("spool depth not reported (%s)", exc)
            if last:
                return
            self._drained.wait(self.report_every_s)

    def _adopt(self, orphaned: list[Spool]) -> list[Spool]:
        """Move events of spools whose publishers ended (a restarted replica, say) into this one,
        while it is under half full (live events keep the other half, and an orphan may hold more
        than this spool's bound); an emptied orphan is deleted. Returns the orphans not yet empty."""
        while orphaned and (room := self.spool.max_events // 2 - len(self.spool)) > 0:
            orphan = orphaned[0]
            for item in orphan.head(min(500, room)):
                self.spool.append(item.topic, item.key, item.value)
                orphan.remove([item.id])
            if not len(orphan):
                log.info("took over the events left in %s", orphan.path)
                self._emptied.append(SpoolDepth(orphan.path.name, 0, orphan.max_events))
                orphan.destroy()
                orphaned = orphaned[1:]
        return orphaned

    def flush(self, timeout: float | None = None) -> None:
        """Wait until buffered sends are acknowledged and the spool is delivered (or ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        producer = self._connected_producer()
        if producer is not None:
            try:
                producer.flush(timeout=min(5.0, timeout or 5.0))
            except KafkaError:
                pass  # what is still in flight is watched (and spooled if stalled) below
        while (len(self.spool) or self._inflight) and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self._drainer.join(timeout=5)
        self._drained.set()
        if self._reporter is not None:
            self._reporter.join(timeout=5)  # its last report: what this spool keeps on disk
        if self._producer is not None:
            self._producer.close(timeout=10)
        if len(self.spool):
            self.spool.close()  # kept on disk: the next publisher delivers it
        else:
            self.spool.destroy()


def _close_quietly(producer: KafkaProducer) -> None:
    """Close a producer we gave up on; what it still held was spooled already."""
    try:
        producer.close(timeout=0)
    except Exception as exc:  # noqa: BLE001 - a wedged producer fails its own flush on close
        log.info("closed a stalled producer: %s", exc)
