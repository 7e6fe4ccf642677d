"""Logging setup. Only entry points (CLI, service replicas) call :func:`configure_logging`."""

from __future__ import annotations

import logging
import os


def configure_logging(level: str | None = None) -> None:
    """Configure the root logger once: one line per record, level from ``NICHELOOP_LOG_LEVEL``."""
    chosen = (level or os.environ.get("NICHELOOP_LOG_LEVEL", "INFO")).upper()
    logging.basicConfig(level=chosen, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "urllib3", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(chosen)))
