"""What the pages of every HTTP surface share: their files are served from the surface's own
origin (no CDN), by a fixed list of names, under a Content-Security-Policy that lets them run
only their own code; ``common.js`` (calls with the caller's key, signing in for a role) and
``common.css``. A page holds no data: its calls carry the caller's own key."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from fastapi.responses import Response

from nicheloop.errors import NotFound

HERE = Path(__file__).resolve().parent
COMMON = frozenset({"common.js", "common.css"})
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# scripts and styles from this origin, images from it or from blobs the page made, no frames, no
# plugins, no inline script
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def page_file(directory: Path, name: str, allowed: Collection[str]) -> Response:
    """The file ``name`` of ``directory`` (or one of :data:`COMMON`) with its type and :data:`HEADERS`.

    Raises:
        NotFound: ``name`` is neither one of ``allowed`` nor common (no other path is ever read).
    """
    if name not in allowed and name not in COMMON:
        raise NotFound(f"no page file {name!r}")
    path = (HERE if name in COMMON else directory) / name
    return Response(content=path.read_bytes(), media_type=TYPES[path.suffix], headers=HEADERS)
