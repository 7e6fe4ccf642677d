"""HTTP plumbing of the gateway's routes: admission at the door, body limits and the image in a
request (domain errors become statuses in :mod:`nicheloop.http`)."""

from __future__ import annotations

import base64
import binascii
import json

from fastapi import Request

from nicheloop.errors import InvalidInput, NotReady, Overloaded, PayloadTooLarge
from nicheloop.http import ASGIApp, Message, Receive, Scope, Send, install_guards, refuse, route_path
from services.deps import resources_of

__all__ = ["AdmitAtTheDoor", "image_bytes", "install_guards", "read_body"]


class AdmitAtTheDoor:
    """ASGI middleware: a ``POST`` to one of ``paths`` takes a place of the replica's
    :class:`~services.limits.Admission` until its answer starts, and over the bound is answered 503
    with ``Retry-After`` before routing, the caller's credential or the body: under overload the
    event loop that refuses is the one serving the accepted, and a refusal here costs it a fraction
    of a routed one (docs/serving.md)."""

    def __init__(self, app: ASGIApp, *, paths: frozenset[str]) -> None:
        self.app, self.paths = app, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or route_path(scope) not in self.paths:
            await self.app(scope, receive, send)
            return
        try:
            admission = (await resources_of(scope["app"])).admission
        except NotReady:  # still starting: the route answers that itself
            await self.app(scope, receive, send)
            return
        try:
            admission.enter()
        except Overloaded as exc:
            await refuse(send, 503, str(exc), retry_after_s=exc.retry_after_s)
            return
        held = True

        def leave() -> None:
            nonlocal held
            if held:
                held = False
                admission.leave()

        async def answering(message: Message) -> None:
            if message["type"] == "http.response.start":  # the work is done: the caller may send the
                leave()  # next at once, and must find its place free
            await send(message)

        try:
            await self.app(scope, receive, answering)
        finally:
            leave()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading them all.

    Raises:
        PayloadTooLarge: declared or actual size over ``limit``.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def image_bytes(request: Request, limit: int) -> bytes:
    """Image bytes from a multipart upload (any file field), JSON ``{"image_b64"}`` or a raw body.

    Raises:
        InvalidInput: no image in the request, or invalid base64/JSON.
        PayloadTooLarge: body over ``limit``.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # Multipart and base64 add overhead: allow the body a margin over the image limit.
    body = await read_body(request, limit * 4 // 3 + 64 * 1024)
    if not body:
        raise InvalidInput(
            'empty body: send an image as multipart field `image`, JSON {"image_b64"} or raw bytes'
        )
    if ctype == "multipart/form-data":
        return await _from_multipart(request, body)
    if ctype == "application/json":
        return _from_json(body)
    return body


async def _from_multipart(request: Request, body: bytes) -> bytes:
    request._body = body  # starlette re-parses the cached body
    try:
        form = await request.form()
    except Exception as exc:  # malformed multipart framing
        raise InvalidInput(f"malformed multipart body: {exc}") from exc
    for value in form.values():
        if hasattr(value, "read"):
            return await value.read()
    raise InvalidInput("multipart body has no file field; upload the image as field `image`")


def _from_json(body: bytes) -> bytes:
    try:
        payload = json.loads(body)
        encoded = payload["image_b64"] if isinstance(payload, dict) else None
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError, RecursionError) as exc:  # deep: recursion
        raise InvalidInput('JSON body must be {"image_b64": "<base64 of the image file>"}') from exc
    if not isinstance(encoded, str) or not encoded:
        raise InvalidInput('"image_b64" must be a non-empty base64 string')
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"image_b64 is not valid base64: {exc}") from exc
