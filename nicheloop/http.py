"""Domain errors as HTTP answers, for every HTTP surface (the gateway, the rollout controller):
JSON ``{"detail": ...}`` with a 4xx or 503 status and ``Retry-After`` where one applies, never a 500."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from nicheloop.errors import (
    BudgetSpent,
    Conflict,
    GateRefused,
    InvalidInput,
    ModelFailed,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    UpstreamTimeout,
)
from nicheloop.spool import SpoolFull

STATUS = {
    PayloadTooLarge: 413,
    NotFound: 404,
    NotReady: 503,
    Overloaded: 503,
    UpstreamTimeout: 504,
    ModelFailed: 502,
    SpoolFull: 503,
    InvalidInput: 400,
    Conflict: 409,
    GateRefused: 409,
    BudgetSpent: 429,
}


def install_error_handlers(app: FastAPI) -> None:
    """Map every domain error of :data:`STATUS` (and its subclasses) to its status on ``app``."""
    for exc_type, code in STATUS.items():
        app.add_exception_handler(exc_type, _handler(code))


def _handler(code: int):  # type: ignore[no-untyped-def]
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        retry = getattr(exc, "retry_after_s", None)
        headers = {"Retry-After": str(int(retry + 0.999))} if retry is not None else None
        return JSONResponse(status_code=code, content={"detail": str(exc)}, headers=headers)

    return handle
