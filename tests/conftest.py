"""Shared fixtures: small generated images (no downloads, no real data committed)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from nicheloop.store import Store
from nicheloop.synthetic import SyntheticStream, png_bytes


@pytest.fixture
def png() -> bytes:
    img, _ = SyntheticStream(seed=3, size=32).take(1)[0]
    return png_bytes(img)


@pytest.fixture
def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((24, 24, 3), 128, dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def postgres_database(name: str) -> str:
    """A new, empty PostgreSQL database on the test server; returns its SQLAlchemy URL.

    The server comes from NICHELOOP_TEST_POSTGRES_URL (``make test`` starts one with
    deploy/local/postgres.sh and sets it).
    """
    import os

    from sqlalchemy import create_engine, text

    base = os.environ.get("NICHELOOP_TEST_POSTGRES_URL")
    if not base:
        pytest.fail(
            "NICHELOOP_TEST_POSTGRES_URL is not set: run `make test`, which starts PostgreSQL, "
            "or start it with deploy/local/postgres.sh and export the URL it prints with `url`"
        )
    admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{base}/{name}"


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]


@pytest.fixture(params=BACKENDS)
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """A fresh store on each backend: SQLite here, PostgreSQL under the integration mark."""
    if request.param == "postgresql":
        name = f"t_{request.node.name[:40].lower().replace('[', '_').replace(']', '').replace('-', '_')}"
        return Store(postgres_database(name))
    return Store(f"sqlite:///{tmp_path / 'db.sqlite'}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright, one per test module (a page per test)."""
    from playwright.sync_api import sync_playwright

    from tests.browser import chromium_path

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def axe_js() -> str:
    from tests.browser import axe_source

    return axe_source()
