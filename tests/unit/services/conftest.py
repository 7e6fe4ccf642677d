"""The gateway's resources for route tests: a real model, SQLite store, blob store and review
queue around the stand-ins of :mod:`tests.unit.services.fakes`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from nicheloop.blobs import BlobStore
from nicheloop.http import Gatekeeper
from nicheloop.keys import ROLES, ApiKeys
from nicheloop.review import QueuePolicy, ReviewQueue
from nicheloop.settings import Settings
from nicheloop.store import Store
from services.api import api
from services.deps import GatewayResources, get_resources
from services.inference import ModelSlot
from services.limits import Admission
from services.watch import ModelWatch
from tests.unit.services.fakes import LocalPredictor, OneVersion, RecordingPublisher


@pytest.fixture
def registry() -> OneVersion:
    return OneVersion()


@pytest.fixture
def res(tmp_path: Path, registry: OneVersion) -> GatewayResources:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    predictor = LocalPredictor(ModelSlot(registry, lambda: registry.resolve("champion").version))
    return GatewayResources(
        settings=Settings(home=tmp_path, image_size=32),
        predictor=predictor,
        model=ModelWatch(predictor, fresh_s=2.0, timeout_s=2.0, stale_s=30.0),
        admission=Admission(4),
        key=b"k" * 32,
        blobs=BlobStore(str(tmp_path / "blobs")),
        store=store,
        queue=ReviewQueue(store, QueuePolicy(budget_per_hour=5)),
        publisher=RecordingPublisher(),  # type: ignore[arg-type]
    )


@pytest.fixture
def as_role(res: GatewayResources) -> dict[str, dict[str, str]]:
    """The headers of a caller of each role (keys made in the test's store), e.g. ``as_role["reviewer"]``."""
    keys = ApiKeys(res.store)
    return {
        role: {"X-API-Key": keys.create(name=f"test-{role}", role=role, created_by="test")[0]}
        for role in ROLES
    }


@pytest.fixture
def client(res: GatewayResources, as_role: dict[str, dict[str, str]]) -> Iterator[TestClient]:
    """The gateway's routes as an application calls them (the ``app`` role's key); other roles'
    calls pass ``headers=as_role[...]``."""
    api.dependency_overrides[get_resources] = lambda: res
    api.state.gatekeeper = Gatekeeper(ApiKeys(res.store))
    try:
        yield TestClient(api, raise_server_exceptions=False, headers=as_role["app"])
    finally:
        api.dependency_overrides.clear()
        del api.state.gatekeeper
