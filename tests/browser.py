"""Helpers of the browser tests: Debian's Chromium under Playwright, axe-core in the page, an app
served on a free port for the browser to reach, and screenshots kept as test artefacts."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / ".artifacts"  # screenshots (git ignores them)
# a wait_for_function predicate: the reviewer page shows an item other than ``shown`` (a function,
# not an expression: the page's CSP refuses the eval an expression would need)
NEXT_ITEM = "shown => { const c = window.nicheloopReview.current; return c !== null && c.task_id !== shown; }"


def chromium_path() -> str:
    """Debian's Chromium (``make chromium`` installs it; NICHELOOP_CHROMIUM names another)."""
    path = os.environ.get("NICHELOOP_CHROMIUM", "/usr/bin/chromium")
    if not Path(path).is_file():
        pytest.fail(
            f"no Chromium at {path}: run `make chromium` (apt-get install chromium) or set NICHELOOP_CHROMIUM"
        )
    return path


def axe_source() -> str:
    """axe-core's script (``make axe`` fetches the pinned release from npm; NICHELOOP_AXE_JS names it)."""
    path = Path(
        os.environ.get("NICHELOOP_AXE_JS", Path.home() / ".cache/nicheloop/axe-core-4.14.1/axe.min.js")
    )
    if not path.is_file():
        pytest.fail(f"no axe-core at {path}: run `make axe` or set NICHELOOP_AXE_JS")
    return path.read_text()


def serious_violations(page: Any, axe_js: str) -> list[str]:
    """axe-core's serious and critical accessibility violations of what ``page`` shows now."""
    page.evaluate(axe_js)  # by the debugger protocol: the pages' CSP refuses inline scripts, rightly
    found = page.evaluate("async () => (await axe.run(document)).violations")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in found
        if v["impact"] in ("serious", "critical")
    ]


def sign_in(page: Any, url: str, key: str) -> None:
    """Open the page at ``url`` and sign in with ``key`` by keyboard (the form every page shares)."""
    page.goto(url)
    page.fill("#key", key)
    page.keyboard.press("Enter")


def screenshot(page: Any, name: str) -> Path:
    """Keep what ``page`` shows as ``.artifacts/<name>.png``."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a free local port, for as long as the block runs; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the app did not start serving for the browser within 30 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
