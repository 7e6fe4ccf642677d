"""What the operator page reads besides the rollout: the drift timeline with the rollout's moves
on it, one window's verdict with a sample of its images and its Evidently report, and the stored
images themselves (an operator sees any; the page is on this origin, so the controller serves them).

An Evidently report is a 4 MB page of inline scripts that the page's own policy would block, and a
link cannot carry the operator's key: the window's route hands out a link signed for ten minutes,
and the report is served under a sandbox (an opaque origin that can reach nothing of this one).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from datetime import timedelta
from pathlib import Path as FilePath
from typing import Any, Literal

from fastapi import FastAPI, Query, Response

from nicheloop.blobs import BlobStore
from nicheloop.contracts import utcnow
from nicheloop.driftlog import DriftLog, DriftWindow
from nicheloop.errors import Forbidden, NotFound
from nicheloop.http import IMAGE_BYTES, ImageSha, RowId, requires
from nicheloop.keys import Caller
from rollout.operations import Operations
from rollout.quality import Quality, class_figures

LINK_TTL_S = 600
REPORT_HEADERS = {
    "Content-Security-Policy": "sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline' "
    "'unsafe-eval'; style-src 'unsafe-inline'; img-src data: blob:; font-src data:",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, max-age=600",
}


def add_operator_views(
    app: FastAPI, ops: Operations, *, blobs: BlobStore | None, reports: FilePath | None
) -> None:
    """Add the routes to ``app`` (on the app itself: the role table walks its routes); ``blobs``
    holds the images and ``reports`` the drift reports (None: not kept here, and their routes
    answer 404 saying so)."""
    operator = requires("operator")
    store, rollouts = ops.rollouts.store, ops.rollouts
    drift, quality = DriftLog(store), Quality(store)
    key = secrets.token_bytes(32)  # this process's: a restarted controller's links lapse early

    def signature(window_id: int, expires: int) -> str:
        return hmac.new(key, f"{window_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    @app.get("/v1/drift/timeline")
    def timeline(
        hours: float = Query(24.0, gt=0, le=24 * 90, description="How far back."), _: Caller = operator
    ) -> dict[str, Any]:
        """Every monitor's verdict per evaluated window, oldest first (the rollout's moves to mark on
        it are ``GET /v1/rollouts/history``'s)."""
        since = utcnow() - timedelta(hours=hours)
        return {"since": since.isoformat(), "windows": [w.public() for w in drift.timeline(since=since)]}

    @app.get("/v1/drift/windows/{window_id}")
    def window(window_id: RowId, _: Caller = operator) -> dict[str, Any]:
        """One window's verdict, a sample of the images the champion answered in it, and a link
        to its Evidently report (signed for ten minutes) when one was written."""
        w = drift.window(window_id)
        link = None
        if w.report is not None:
            expires = int(time.time()) + LINK_TTL_S
            link = (
                f"/v1/drift/windows/{window_id}/report?expires={expires}&sig={signature(window_id, expires)}"
            )
        return {**w.public(), "images": drift.images(w), "report_url": link}

    @app.get("/v1/drift/windows/{window_id}/report", response_class=Response)
    def report(
        window_id: RowId,
        expires: int = Query(..., ge=0, le=2**40),
        sig: str = Query(..., min_length=64, max_length=64),
    ) -> Response:
        """The window's Evidently report, by the signed link ``GET /v1/drift/windows/{id}`` gave."""
        if expires < time.time() or not hmac.compare_digest(
            sig.encode(), signature(window_id, expires).encode()
        ):
            raise Forbidden(
                "this report link is expired or not signed here; open the window again for a new one"
            )
        return Response(
            _report(drift.window(window_id), reports), media_type="text/html", headers=REPORT_HEADERS
        )

    @app.get("/v1/quality/classes")
    def classes(
        version: str | None = Query(None, max_length=32, description="Default: the recorded champion."),
        source: Literal["user", "reviewer", "any"] = Query("user", description="Whose labels."),
        hours: float = Query(24.0, gt=0, le=24 * 90, description="How far back."),
        _: Caller = operator,
    ) -> dict[str, Any]:
        """A version's confusion matrix, precision and recall per class with their counts (from
        delayed labels), and its predicted-class mix and confidence over time."""
        v = version or rollouts.champion()
        if v is None:
            raise NotFound("no champion is recorded yet; name a version")
        now = utcnow()
        since = now - timedelta(hours=hours)
        truth, predicted = quality.labeled(v, source=None if source == "any" else source, since=since)
        figures = class_figures(truth, predicted, quality.class_names(v))
        return {"version": v, "source": source, **figures, "mix": quality.mix(v, since=since, until=now)}

    @app.get("/v1/quality/agreement")
    def agreement(
        hours: float = Query(24.0, gt=0, le=24 * 90, description="How far back."), _: Caller = operator
    ) -> dict[str, Any]:
        """Model–human agreement per hour-sized bucket, for users' and reviewers' labels."""
        now = utcnow()
        return quality.agreement(since=now - timedelta(hours=hours), until=now)

    @app.get("/v1/quality/versions")
    def versions(_: Caller = operator) -> dict[str, Any]:
        """The live (else the latest) rollout's champion against its candidate: per class on their
        own traffic and on the same images, the shadow pairs where they disagree, and the lineage
        of both versions."""
        r = rollouts.live() or rollouts.latest()
        if r is None:
            raise NotFound("no rollout yet: start one with POST /v1/rollouts/start")
        return quality.versions(rollouts, r) | {
            "lineage": {r.champion: _lineage(ops, r.champion), r.candidate: _lineage(ops, r.candidate)}
        }

    @app.get("/v1/images/{sha256}", response_class=Response, responses=IMAGE_BYTES)
    def image(sha256: ImageSha, _: Caller = operator) -> Response:
        """A stored image."""
        if blobs is None:
            raise NotFound("this controller keeps no images; read them from the gateway")
        return Response(blobs.get(sha256), media_type="application/octet-stream")


def _lineage(ops: Operations, version: str) -> dict[str, str]:
    """A version's lineage tags (data snapshot, parent, recipe, starting weights); empty, with the
    reason, when the registry does not answer (the figures beside it still do)."""
    try:
        tags = ops.registry.version(version).tags
    except Exception as exc:  # noqa: BLE001 - MLflow away or the version gone: say so, show the rest
        return {"unavailable": f"{type(exc).__name__}: {exc}"[:300]}
    return {k: v for k, v in tags.items() if not k.startswith("mlflow.")}


def _report(w: DriftWindow, reports: FilePath | None) -> bytes:
    """The report's bytes, read only from inside ``reports`` (the stored path is the monitor's)."""
    if reports is None or w.report is None:
        raise NotFound(f"no report of drift window {w.id} is kept here")
    path, root = FilePath(w.report).resolve(), reports.resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise NotFound(f"the report of drift window {w.id} is gone from {root}")
    return path.read_bytes()
