"""Every process's event spool depth in the store, so an operator sees events waiting for the broker
on any machine (a gateway's ``/metrics`` shows only its own).

Each publisher reports its spool and the orphans it drains every few seconds
(:class:`nicheloop.bus.Publisher`'s ``report``); the controller sums the fresh reports. A spool
whose process stopped reporting while it held events is listed apart: its events wait on that
machine's disk until a publisher there adopts them.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from nicheloop.spool import SpoolDepth
from nicheloop.store import SpoolReportRow, Store

log = logging.getLogger(__name__)

REPORT_EVERY_S = 10.0  # how often a publisher writes its depths
FRESH_S = 60.0  # a report older than this is a silent spool's
KEEP_S = 86_400.0  # an empty spool's row is forgotten after a day


class SpoolReports:
    """The spool depths publishers report, and their sum for the operator."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def reporter(self, role: str) -> Callable[[Iterable[SpoolDepth]], None]:
        """The ``report`` callback of a publisher in role ``role`` on this host."""
        host = socket.gethostname()
        return lambda depths: self.report(depths, role=role, host=host, now=time.time())

    def report(self, depths: Iterable[SpoolDepth], *, role: str, host: str, now: float) -> None:
        """Replace these spools' rows, and forget empty ones a day old."""
        with Session(self.store.engine) as s, s.begin():
            for d in depths:
                s.merge(
                    SpoolReportRow(
                        spool=d.spool, role=role, host=host, depth=d.depth, capacity=d.capacity, at=now
                    )
                )
            s.execute(
                delete(SpoolReportRow).where(SpoolReportRow.at < now - KEEP_S, SpoolReportRow.depth == 0)
            )

    def summary(self, *, now: float, fresh_s: float = FRESH_S) -> dict[str, Any]:
        """Events waiting in the spools reported within ``fresh_s``: in all, by role, the fullest
        spool's share of its bound; and the silent spools that last held events."""
        with Session(self.store.engine) as s:
            rows = list(s.scalars(select(SpoolReportRow)))
        fresh = [r for r in rows if r.at >= now - fresh_s]
        by_role: dict[str, int] = {}
        for r in fresh:
            by_role[r.role] = by_role.get(r.role, 0) + r.depth
        return {
            "depth": sum(r.depth for r in fresh),
            "spools": len(fresh),
            "fullest": round(max((r.depth / r.capacity for r in fresh if r.capacity), default=0.0), 4),
            "by_role": dict(sorted(by_role.items())),
            "silent": [
                {
                    "spool": r.spool,
                    "role": r.role,
                    "host": r.host,
                    "depth": r.depth,
                    "age_s": round(now - r.at),
                }
                for r in sorted(rows, key=lambda r: r.at)
                if r.at < now - fresh_s and r.depth
            ],
        }
