"""Routes that require a role, on a bare app with real keys in SQLite: 401 without a valid
credential, 403 with another role, the caller otherwise; revocation takes effect within the
gatekeeper's memory; the route walker finds every route's requirement."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ray import cloudpickle
from ray._common.serialization import pickle_dumps
from ray.serve._private.utils import ensure_serialization_context

from nicheloop.http import Gatekeeper, install_gatekeeper, install_guards, requires, route_roles
from nicheloop.keys import ApiKeys, Caller
from nicheloop.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys(tmp_path: Path) -> ApiKeys:
    return ApiKeys(Store(f"sqlite:///{tmp_path / 'store.db'}"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(keys: ApiKeys, clock: Clock) -> TestClient:
    app = FastAPI()
    install_guards(app)
    app.state.gatekeeper = Gatekeeper(keys, ttl_s=5.0, clock=clock)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/labels")
    async def label(caller: Caller = requires("reviewer")) -> dict[str, str]:
        return {"by": caller.name}

    @app.get("/drift")
    async def drift(caller: Caller = requires("operator", "admin")) -> dict[str, str]:
        return {"role": caller.role}

    return TestClient(app, raise_server_exceptions=False)


def test_a_route_answers_its_roles_only(client: TestClient, keys: ApiKeys) -> None:
    alice, _ = keys.create(name="alice", role="reviewer", created_by="t")
    ops, _ = keys.create(name="ops", role="operator", created_by="t")
    assert client.post("/labels", headers={"Authorization": f"Bearer {alice}"}).json() == {"by": "alice"}
    assert client.post("/labels", headers={"X-API-Key": alice}).json() == {"by": "alice"}
    assert client.get("/drift", headers={"X-API-Key": ops}).json() == {"role": "operator"}
    wrong_role = client.get("/drift", headers={"X-API-Key": alice})
    assert wrong_role.status_code == 403 and "operator or admin" in wrong_role.json()["detail"]
    made_up = {"X-API-Key": "nlk_" + "0" * 43}
    for headers in ({}, made_up, {"Authorization": "Basic abc"}, {"X-API-Key": "é".encode()}):
        answer = client.post("/labels", headers=headers)
        assert answer.status_code == 401 and answer.json()["detail"], headers
    assert client.get("/healthz").status_code == 200


def test_a_revoked_key_stops_working_within_the_gatekeepers_memory(
    client: TestClient, keys: ApiKeys, clock: Clock
) -> None:
    key, _ = keys.create(name="bob", role="reviewer", created_by="t")
    assert client.post("/labels", headers={"X-API-Key": key}).status_code == 200
    keys.revoke("bob")
    clock.now = 4.0
    assert client.post("/labels", headers={"X-API-Key": key}).status_code == 200  # still remembered
    clock.now = 6.0
    refused = client.post("/labels", headers={"X-API-Key": key})
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]


def test_the_route_walker_reads_each_routes_roles(client: TestClient) -> None:
    table = route_roles(client.app)  # type: ignore[arg-type]
    assert table[("POST", "/labels")] == ("reviewer",)
    assert table[("GET", "/drift")] == ("operator", "admin")
    assert table[("GET", "/healthz")] is None


def test_requires_refuses_unknown_roles() -> None:
    with pytest.raises(ValueError, match="roles"):
        requires("root")  # type: ignore[arg-type]


def test_a_copy_of_the_app_without_state_uses_the_process_gatekeeper(keys: ApiKeys) -> None:
    """As in a Serve replica, which runs a pickled copy of its ingress app: the state set on the
    original never reaches the copy, so the replica installs its gatekeeper for the process."""
    app = FastAPI()
    install_guards(app)

    @app.get("/drift")
    async def drift(caller: Caller = requires("operator")) -> dict[str, str]:
        return {"by": caller.name}

    ops, _ = keys.create(name="ops", role="operator", created_by="t")
    ensure_serialization_context()  # as serve.ingress freezes the app it hands its replicas
    copy = cloudpickle.loads(pickle_dumps(app, error_msg="the app does not pickle"))
    client = TestClient(copy, raise_server_exceptions=False, headers={"X-API-Key": ops})
    starting = client.get("/drift")
    assert starting.status_code == 503 and "starting" in starting.json()["detail"]
    install_gatekeeper(Gatekeeper(keys))
    try:
        assert client.get("/drift").json() == {"by": "ops"}
    finally:
        install_gatekeeper(None)
