"""The request parsing and error mapping of the gateway, on a bare FastAPI app (no Ray)."""

import base64

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from nicheloop.errors import NotReady
from nicheloop.images import decode_image
from services.http import image_bytes, install_error_handlers

LIMIT = 200_000


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/img")
    async def img(request: Request) -> dict[str, int]:
        data = await image_bytes(request, LIMIT)
        return {"width": decode_image(data, LIMIT, 10**6).size[0]}

    @app.get("/notready")
    async def notready() -> None:
        raise NotReady("no model yet")

    return TestClient(app, raise_server_exceptions=False)


def test_three_ways_to_send_an_image(client: TestClient, png: bytes) -> None:
    assert client.post("/img", files={"image": ("x.png", png, "image/png")}).json() == {"width": 32}
    assert client.post("/img", json={"image_b64": base64.b64encode(png).decode()}).json() == {"width": 32}
    assert client.post("/img", content=png, headers={"content-type": "image/png"}).json() == {"width": 32}


@pytest.mark.parametrize(
    "kwargs, status, words",
    [
        ({"content": b""}, 400, "empty body"),
        ({"content": b"not an image"}, 400, "not a decodable image"),
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
