"""A rollout record on SQLite for the rollout stage's tests (PostgreSQL: tests/unit/nicheloop)."""

from pathlib import Path

import pytest

from nicheloop.rollouts import Rollouts
from nicheloop.store import Store


@pytest.fixture
def rollouts(tmp_path: Path) -> Rollouts:
    return Rollouts(Store(f"sqlite:///{tmp_path / 'db.sqlite'}"))
