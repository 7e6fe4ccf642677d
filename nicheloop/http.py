"""What every HTTP surface (the gateway, the rollout controller) does before and after its routes:
bodies are bounded before a route reads them, and domain errors become JSON ``{"detail": ...}``
with a 4xx or 503 status and ``Retry-After`` where one applies, never a 500."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from nicheloop.errors import (
    BudgetSpent,
    Conflict,
    Forbidden,
    GateRefused,
    InvalidInput,
    ModelFailed,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    Unauthenticated,
    UpstreamTimeout,
)
from nicheloop.keys import KEY_PREFIX, ROLES, ApiKeys, Caller, Role
from nicheloop.settings import Settings
from nicheloop.spool import SpoolFull
from nicheloop.store import Store
from nicheloop.tokens import BearerTokens, TokenPolicy

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
    Unauthenticated: 401,
    Forbidden: 403,
}


# what a /metrics route declares it answers: Prometheus text, not JSON
PROMETHEUS_TEXT: dict[int | str, dict[str, Any]] = {
    200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}
}
# what a route that answers a stored image's bytes declares (its schema is binary, not JSON)
IMAGE_BYTES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
}


class Problem(BaseModel):
    """Every refusal's body: what went wrong and what to do about it."""

    detail: str


PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": what}
    for code, what in (
        (400, "Bad input; `detail` says what to do."),
        (401, "No valid credential (`X-API-Key` or `Authorization: Bearer`)."),
        (403, "The credential's role may not call this route."),
        (404, "Unknown id, or not the caller's."),
        (409, "It conflicts with the current state (a lease, a rollout)."),
        (413, "The body is larger than the route takes."),
        (429, "A budget or rate is spent; `Retry-After` says when to come back."),
        (502, "The model failed on this input."),
        (503, "Not ready yet, or overloaded; `Retry-After` says when to come back."),
        (504, "A part did not answer in time; `detail` names it."),
    )
}
"""The refusals every route of these APIs may answer, for their OpenAPI schemas
(``FastAPI(responses=PROBLEMS)``)."""

MAX_JSON_BODY = 64 * 1024  # ids, labels, reasons and plans: far below this
MAX_JSON_DEPTH = 32  # the deepest body of these APIs (a rollout plan) nests 4 levels
DB_INT_MAX = 2**63 - 1  # the widest integer the stores keep

RowId = Annotated[int, Path(ge=1, le=DB_INT_MAX, description="A row's id.")]
"""A path parameter naming a stored row: out of the store's range is a 422, not a database error."""
OptionalRowId = Annotated[int | None, Query(ge=1, le=DB_INT_MAX)]
ImageSha = Annotated[str, Path(pattern="^[0-9a-f]{64}$", description="The image's SHA-256, hex.")]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def install_guards(app: FastAPI, *, streamed: Collection[str] = ()) -> None:
    """Bound every body of ``app`` (:class:`BodyLimit`) and map every domain error of
    :data:`STATUS` (and its subclasses) to its status. ``streamed``: paths whose routes read
    their bodies in chunks against a limit of their own (an image upload)."""
    app.add_middleware(BodyLimit, streamed=frozenset(streamed))
    for exc_type, code in STATUS.items():
        app.add_exception_handler(exc_type, _handler(code))
    app.add_exception_handler(StarletteHTTPException, _http_error)


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's answer to an HTTP error, but a 405's ``Allow`` names every method of the path
    (Starlette names only those of the first route whose path matched)."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allowed = sorted(allowed_methods(request.app, request.scope))
        exc = StarletteHTTPException(
            405, exc.detail, headers={**(exc.headers or {}), "Allow": ", ".join(allowed)}
        )
    return await http_exception_handler(request, exc)


def allowed_methods(app: FastAPI, scope: Scope) -> set[str]:
    """The methods some route of ``app`` answers on the path of ``scope``."""
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, BaseRoute) and route.matches({**scope, "method": "GET"})[0] != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return methods


class BodyLimit:
    """ASGI middleware: a body over :data:`MAX_JSON_BODY` gets a 413 before any route reads it, a
    JSON body nested deeper than :data:`MAX_JSON_DEPTH` a 400 (Python's parser would recurse into
    a ``RecursionError``). A ``streamed`` path is only held to its declared length here."""

    def __init__(self, app: ASGIApp, *, streamed: frozenset[str] = frozenset()) -> None:
        self.app, self.streamed = app, streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) in self.streamed:
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > MAX_JSON_BODY:
            await refuse(send, 413, f"body is {declared} bytes; the limit is {MAX_JSON_BODY}")
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the caller went away
            body += message.get("body", b"")
            if len(body) > MAX_JSON_BODY:
                await refuse(send, 413, f"body is over the limit of {MAX_JSON_BODY} bytes")
                return
            if not message.get("more_body", False):
                break
        if "json" in _header(scope, b"content-type") and json_depth(bytes(body)) > MAX_JSON_DEPTH:
            await refuse(send, 400, f"JSON is nested deeper than {MAX_JSON_DEPTH} levels")
            return
        await self.app(scope, _replay(bytes(body), receive), send)


_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # strings whole (brackets in them do not nest)


def json_depth(body: bytes) -> int:
    """How deep ``body``'s arrays and objects nest, read without parsing it; 0 when it has too few
    brackets to nest deeper than :data:`MAX_JSON_DEPTH`."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return 0  # too few brackets to nest too deep: the common case costs two counts
    depth = deepest = 0
    for token in _TOKENS.finditer(body):
        mark = token.group()
        if mark in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif mark in (b"]", b"}"):
            depth -= 1
    return deepest


def route_path(scope: Scope) -> str:
    """The path as the app routes it (Serve mounts an app under its route prefix as root_path)."""
    path, root = scope["path"], scope.get("root_path", "").rstrip("/")
    return path[len(root) :] if root and path.startswith(root + "/") else path


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value).decode("latin-1").strip().lower()
    return ""


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the buffered body once, then the caller's own messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


async def refuse(send: Send, status: int, detail: str, *, retry_after_s: float | None = None) -> None:
    """Answer ``status`` with JSON ``{"detail": detail}`` from ASGI middleware (no route ran), with
    ``Retry-After`` in whole seconds when ``retry_after_s`` is given, as the domain errors' handler."""
    payload = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if retry_after_s is not None:
        headers.append((b"retry-after", retry_after(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def retry_after(seconds: float) -> str:
    """``Retry-After``'s value for a wait of ``seconds``: whole seconds, rounded up."""
    return str(int(seconds + 0.999))


def _handler(code: int):  # type: ignore[no-untyped-def]
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        retry = getattr(exc, "retry_after_s", None)
        headers = {"Retry-After": retry_after(retry)} if retry is not None else None
        return JSONResponse(status_code=code, content={"detail": str(exc)}, headers=headers)

    return handle


# -- who may call ----------------------------------------------------------------------------
KEY_HEADER = "x-api-key"


def presented_key(request: Request) -> str:
    """The credential of ``request``: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

    Raises:
        Unauthenticated: neither header is there.
    """
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = request.headers.get(KEY_HEADER, "").strip()
    if key:
        return key
    raise Unauthenticated(
        "this route needs a credential: send `Authorization: Bearer <key>` or `X-API-Key: <key>` "
        "(an admin makes keys with `nicheloop keys create`)"
    )


class Gatekeeper:
    """Resolves credentials to callers: the service's API keys (``nlk_…``) and, when ``tokens`` is
    set, the identity provider's bearer tokens. Each answer is remembered for ``ttl_s``: a request
    costs a store lookup (or a signature check) at most every ``ttl_s`` per credential, and a
    revoked key stops working within ``ttl_s``."""

    def __init__(
        self,
        keys: ApiKeys,
        *,
        tokens: BearerTokens | None = None,
        ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.keys, self.tokens, self.ttl_s, self.clock = keys, tokens, ttl_s, clock
        self._known: dict[str, tuple[float, Caller | Unauthenticated]] = {}
        self._lock = threading.Lock()

    def remembered(self, key: str) -> Caller | None:
        """The caller of ``key`` if it was checked less than ``ttl_s`` ago (no store call).

        Raises:
            Unauthenticated: it was refused less than ``ttl_s`` ago.
        """
        with self._lock:
            known = self._known.get(_fingerprint(key))
        if known is None or self.clock() - known[0] > self.ttl_s:
            return None
        if isinstance(known[1], Unauthenticated):
            raise known[1]
        return known[1]

    def caller(self, key: str) -> Caller:
        """The caller of ``key``, from memory, the store or the token's signature.

        Raises:
            Unauthenticated: unknown, revoked or expired. Forbidden: a token without a role.
            NotReady: the identity provider's keys could not be fetched.
        """
        remembered = self.remembered(key)
        if remembered is not None:
            return remembered
        try:
            answer: Caller | Unauthenticated = (
                self.keys.verify(key)
                if self.tokens is None or key.startswith(KEY_PREFIX)
                else self.tokens.verify(key)
            )
        except Unauthenticated as exc:
            answer = exc
        with self._lock:
            if len(self._known) > 10_000:  # a flood of made-up keys must not grow memory
                self._known.clear()
            self._known[_fingerprint(key)] = (self.clock(), answer)
        if isinstance(answer, Unauthenticated):
            raise answer
        return answer


def _fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


def gatekeeper_for(store: Store, settings: Settings) -> Gatekeeper:
    """The gatekeeper of a service on ``store``: its API keys, and bearer tokens from the identity
    provider when ``NICHELOOP_OIDC_ISSUER`` and ``…_JWKS_URL`` are set."""
    tokens = None
    if settings.oidc_issuer and settings.oidc_jwks_url:
        tokens = BearerTokens(
            TokenPolicy(
                issuer=settings.oidc_issuer,
                audience=settings.oidc_audience,
                jwks_url=settings.oidc_jwks_url,
                role_claim=settings.oidc_role_claim,
                name_claim=settings.oidc_name_claim,
            )
        )
    return Gatekeeper(ApiKeys(store), tokens=tokens)


_installed_gate: Gatekeeper | None = None


def install_gatekeeper(gate: Gatekeeper | None) -> None:
    """Make ``gate`` answer for every app of this process that keeps none in its own state: a Serve
    replica runs a pickled copy of its ingress app, whose state the deployment cannot reach."""
    global _installed_gate
    _installed_gate = gate


def gatekeeper_of(request: Request) -> Gatekeeper | None:
    """The app's gatekeeper, else the process's. A module-level function on purpose: Serve pickles
    the ingress app, and a closure pickled by value keeps a frozen copy of the globals it reads."""
    return getattr(request.app.state, "gatekeeper", None) or _installed_gate


def requires(*roles: Role) -> Any:
    """A route's dependency: the caller, who must hold one of ``roles`` (401 without a valid
    credential, 403 with another role). The app keeps its :class:`Gatekeeper` in
    ``app.state.gatekeeper``, else the process's (:func:`install_gatekeeper`); a route without
    this dependency is open, and a test walks every app's routes for one (:data:`OPEN_ROUTES`
    aside)."""
    unknown = set(roles) - set(ROLES)
    if not roles or unknown:
        raise ValueError(f"roles must be some of {ROLES}, got {roles}")

    async def caller(request: Request) -> Caller:
        gate = gatekeeper_of(request)
        if gate is None:
            raise NotReady("the service is still starting; retry in a moment")
        key = presented_key(request)
        who = gate.remembered(key)
        if who is None:  # not checked lately: ask the store, off the event loop
            who = await asyncio.to_thread(gate.caller, key)
        if who.role not in roles:
            raise Forbidden(
                f"{who.name!r} ({who.role}) may not {request.method} {request.url.path}; "
                f"it takes the role {' or '.join(roles)}"
            )
        return who

    caller.roles = roles  # type: ignore[attr-defined]  # read by the route walker
    return Depends(caller)


# liveness and readiness (probes carry no key), and the pages' code (no data: their calls carry a key)
# the pages' code holds no data; a drift report's link is signed by the route that gives it out
OPEN_ROUTES = frozenset(
    {"/healthz", "/readyz", "/review", "/operate", "/pages/{name}", "/v1/drift/windows/{window_id}/report"}
)


def route_roles(app: FastAPI) -> dict[tuple[str, str], tuple[Role, ...] | None]:
    """(method, path) -> the roles each route of ``app`` requires; None for a route that requires
    none (open)."""
    from fastapi.routing import APIRoute

    table: dict[tuple[str, str], tuple[Role, ...] | None] = {}
    for route in app.routes:
        if not isinstance(route, APIRoute):
            continue
        roles = [getattr(d.call, "roles", None) for d in route.dependant.dependencies]
        found = next((r for r in roles if r is not None), None)
        for method in route.methods or ():
            table[(method, route.path_format)] = found  # the path as the schema has it
    return table
