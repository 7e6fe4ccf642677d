"""The pages people use, served by the gateway on the API's own origin (no CDN, nothing fetched
from elsewhere): static files whose data calls carry the caller's own key, so a page shows only
what its role may see."""

from __future__ import annotations

from pathlib import Path

from nicheloop.errors import NotFound

HERE = Path(__file__).resolve().parent
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
ASSETS = frozenset({"review.js", "review.css"})
# the pages run only their own code: scripts and styles from this origin, images from it or from
# blobs the page made, no frames, no plugins
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def asset(name: str) -> tuple[bytes, str]:
    """The bytes and content type of page file ``name`` (a page or one of :data:`ASSETS`).

    Raises:
        NotFound: no such file (only the listed names are ever read: no path reaches elsewhere).
    """
    if name not in ASSETS and name != "review.html":
        raise NotFound(f"no page file {name!r}")
    path = HERE / name
    return path.read_bytes(), TYPES[path.suffix]
