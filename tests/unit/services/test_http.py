"""The request parsing and error mapping of the gateway, on a bare FastAPI app (no Ray)."""

import asyncio
import base64
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from nicheloop.errors import NotReady
from nicheloop.http import (
    MAX_JSON_BODY,
    MAX_JSON_DEPTH,
    Message,
    Receive,
    RowId,
    Scope,
    Send,
    json_depth,
    route_path,
)
from nicheloop.images import decode_image
from services.deps import get_resources
from services.http import AdmitAtTheDoor, image_bytes, install_guards
from services.limits import Admission


class Label(BaseModel):
    label: str


LIMIT = 200_000


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    install_guards(app, streamed={"/img"})
    seen: list[object] = []

    @app.post("/img")
    async def img(request: Request) -> dict[str, int]:
        data = await image_bytes(request, LIMIT)
        return {"width": decode_image(data, LIMIT, 10**6).size[0]}

    @app.get("/notready")
    async def notready() -> None:
        raise NotReady("no model yet")

    @app.post("/label")
    async def label(body: Label) -> dict[str, str]:
        seen.append(body)
        return {"label": body.label}

    @app.get("/rows/{row}")
    async def row(row: RowId) -> dict[str, int]:
        return {"row": row}

    client = TestClient(app, raise_server_exceptions=False)
    client.seen = seen  # type: ignore[attr-defined]
    return client


def test_three_ways_to_send_an_image(client: TestClient, png: bytes) -> None:
    assert client.post("/img", files={"image": ("x.png", png, "image/png")}).json() == {"width": 32}
    assert client.post("/img", json={"image_b64": base64.b64encode(png).decode()}).json() == {"width": 32}
    assert client.post("/img", content=png, headers={"content-type": "image/png"}).json() == {"width": 32}


@pytest.mark.parametrize(
    "kwargs, status, words",
    [
        ({"content": b""}, 400, "empty body"),
        ({"content": b"not an image"}, 400, "accepted format"),
        (
            {"content": b'{"image_b64": ' + b"[" * 200_000, "headers": {"content-type": "application/json"}},
            400,
            "JSON",
        ),
        ({"json": {"image_b64": "%%%"}}, 400, "not valid base64"),
        ({"json": {"other": 1}}, 400, "image_b64"),
        ({"json": ["a"]}, 400, "image_b64"),
        ({"files": {"meta": (None, "text only")}}, 400, "no file field"),
        ({"content": b"x" * (LIMIT * 2)}, 413, "limit"),
    ],
)
def test_bad_bodies_get_a_clear_4xx(client: TestClient, kwargs, status: int, words: str) -> None:
    resp = client.post("/img", **kwargs)
    assert resp.status_code == status and words in resp.json()["detail"]


def test_not_ready_is_503(client: TestClient) -> None:
    assert client.get("/notready").status_code == 503


def _chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
    yield from (data[i : i + size] for i in range(0, len(data), size))


@pytest.mark.parametrize(
    "kwargs, status, words",
    [
        ({"content": b'{"label": "' + b"x" * MAX_JSON_BODY + b'"}'}, 413, "limit"),  # declared length
        ({"content": _chunks(b'{"label": "' + b"x" * MAX_JSON_BODY + b'"}')}, 413, "limit"),  # chunked
        ({"content": b"[" * (MAX_JSON_BODY // 2)}, 400, "nested deeper"),  # Python's parser would recurse
        (
            {"content": b'{"label": ' + b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1) + b"}"},
            400,
            "nested",
        ),
    ],
)
def test_json_bodies_are_bounded_before_a_route_reads_them(
    client: TestClient, kwargs: dict[str, object], status: int, words: str
) -> None:
    resp = client.post("/label", headers={"content-type": "application/json"}, **kwargs)  # type: ignore[arg-type]
    assert resp.status_code == status and words in resp.json()["detail"]
    assert client.seen == []  # type: ignore[attr-defined]  # the route never ran
    ok = client.post("/label", json={"label": "[" * 100})  # brackets inside a string do not nest
    assert ok.status_code == 200 and client.seen  # type: ignore[attr-defined]


def test_a_row_id_out_of_the_stores_range_is_a_422(client: TestClient) -> None:
    assert client.get("/rows/7").json() == {"row": 7}
    assert [client.get(f"/rows/{n}").status_code for n in (0, 10**20, -1)] == [422, 422, 422]


def test_json_depth_reads_nesting_outside_strings() -> None:
    assert json_depth(b"[" * 100) == 100 and json_depth(b"{}" * 100) == 1
    assert json_depth(b'["' + b"[" * 100 + b'"]') <= 1  # in a string
    assert json_depth(b'["\\", ' + b"[" * 40 + b"]" * 40 + b"]") == 41  # an escaped backslash ends nothing


@pytest.mark.parametrize("root", ["", "/", "/app"])
def test_a_streamed_route_is_found_under_any_mount(root: str) -> None:
    scope = {"type": "http", "path": f"{root.rstrip('/')}/img", "root_path": root, "headers": []}
    assert route_path(scope) == "/img"


def test_the_door_frees_a_place_once_the_answer_starts_and_refuses_the_next_until_then() -> None:
    """A caller that sends its next request as soon as its answer starts finds its place free (with
    as many callers as places, none is refused), and one over the bound is refused before the app."""
    admission = Admission(1)
    app = FastAPI()
    app.dependency_overrides[get_resources] = lambda: SimpleNamespace(admission=admission)
    started, finish = asyncio.Event(), asyncio.Event()
    reached: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(f"{scope['path']} {admission.inside}")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/v1/predict":
            started.set()
            await finish.wait()  # the app still runs (the body, a log line) after the answer started
        await send({"type": "http.response.body", "body": b""})

    door = AdmitAtTheDoor(inner, paths=frozenset({"/v1/predict"}))
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    def scope(path: str) -> Scope:
        return {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": [], "app": app}

    async def main() -> None:
        admission.inside = 1  # the bound is reached: the next is refused without reaching the app
        await door(scope("/v1/predict"), receive, send)
        assert sent[-1]["body"].startswith(b'{"detail": "busy') and reached == []
        assert (b"retry-after", b"1") in sent[-2]["headers"]
        admission.inside = 0
        first = asyncio.create_task(door(scope("/v1/predict"), receive, send))
        await started.wait()
        assert admission.inside == 0  # answered: the place is free while the app finishes
        admission.inside = 1
        await door(scope("/v1/other"), receive, send)  # other paths are not admitted at all
        admission.inside = 0
        finish.set()
        await first
        assert admission.inside == 0 and admission.shed == 1
        assert reached == ["/v1/predict 1", "/v1/other 1"]  # the prediction held its place while it ran

    asyncio.run(main())
