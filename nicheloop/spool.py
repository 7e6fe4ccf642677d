"""A durable, bounded, ordered local spool of events waiting for the broker.

Events land here only when the broker cannot take them (unreachable at start, a send that
failed, or a spool that is not empty yet, so that order is kept). Backed by SQLite in WAL
mode with ``synchronous=FULL``: an appended event survives a crash of the process.
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from nicheloop.errors import NicheloopError

log = logging.getLogger(__name__)

NEAR_FULL = 0.8


class SpoolBusy(NicheloopError):
    """Another live process owns this spool file."""


class SpoolFull(NicheloopError):
    """The spool holds its maximum number of events; the caller must slow down (HTTP 503)."""


@dataclass(frozen=True)
class Spooled:
    id: int
    topic: str
    key: str
    value: str


@dataclass(frozen=True)
class SpoolDepth:
    """How many events one spool file holds, and its bound, as its publisher last saw them."""

    spool: str  # the file's name: unique per publisher, kept by the publisher that adopts it
    depth: int
    capacity: int


class Spool:
    """First-in first-out events on disk, safe to use from several threads of one process.

    A process holds an exclusive lock on its spool file while it runs; a spool whose lock is
    free belongs to a process that ended, and :func:`orphans` finds it so another publisher
    can deliver it.
    """

    def __init__(self, path: Path, max_events: int = 100_000) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be positive, got {max_events}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.max_events = path, max_events
        self._lockfile = open(f"{path}.lock", "a+")
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lockfile.close()
            raise SpoolBusy(f"spool {path} is in use by another process") from exc
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "topic TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL)"
            )
            self._depth = self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]
        except sqlite3.DatabaseError:
            self.close()  # not a spool: let go of its lock
            raise
        self._warned = False

    def __len__(self) -> int:
        return self._depth

    def append(self, topic: str, key: str, value: str) -> int:
        """Store one event durably; returns the depth after it.

        Raises:
            SpoolFull: when ``max_events`` are already waiting.
        """
        with self._lock:
            if self._depth >= self.max_events:
                raise SpoolFull(
                    f"event spool {self.path} holds {self._depth} events (its bound); the broker "
                    f"has been unreachable too long; retry later or raise NICHELOOP_SPOOL_MAX_EVENTS"
                )
            self._db.execute("INSERT INTO spool (topic, key, value) VALUES (?, ?, ?)", (topic, key, value))
            self._depth += 1
            if self._depth >= NEAR_FULL * self.max_events and not self._warned:
                log.error(
                    "event spool %s is %d%% full (%d of %d): is the broker down?",
                    self.path,
                    100 * self._depth // self.max_events,
                    self._depth,
                    self.max_events,
                )
                self._warned = True
            return self._depth

    def head(self, limit: int) -> list[Spooled]:
        """The oldest ``limit`` events, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, key, value FROM spool ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [Spooled(*row) for row in rows]

    def remove(self, ids: list[int]) -> None:
        """Forget events the broker has acknowledged."""
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i in ids])
            self._db.execute("COMMIT")
            self._depth = self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]
            if self._depth < NEAR_FULL * self.max_events:
                self._warned = False

    def close(self) -> None:
        with self._lock:
            self._db.close()
            fcntl.flock(self._lockfile, fcntl.LOCK_UN)
            self._lockfile.close()

    def destroy(self) -> None:
        """Close and delete an empty spool (a no-op while events remain)."""
        if len(self):
            return
        self.close()
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


def orphans(directory: Path, exclude: Path | None = None) -> list[Spool]:
    """Spools in ``directory`` whose owner process is gone, opened (and locked) for draining.

    A spool file SQLite cannot read is renamed ``*.corrupt`` (kept for a person to look at) and
    skipped: one bad file must not stop the events of the others.
    """
    found = []
    for path in sorted(directory.glob("*.spool")):
        if path == exclude:
            continue
        try:
            found.append(Spool(path))
        except SpoolBusy:
            continue
        except sqlite3.DatabaseError as exc:
            kept = path.with_name(f"{path.name}.corrupt")
            path.rename(kept)
            Path(f"{path}.lock").unlink(missing_ok=True)
            log.error("spool %s is unreadable (%s); kept as %s and skipped", path, exc, kept)
    return found
