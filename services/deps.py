"""What the HTTP routes get injected: the gateway's resources, resolved once per request.

Routes declare ``res: Resources`` (``Annotated[GatewayResources, Depends(get_resources)]``); the
Serve replica installs the real ones at start, tests swap them with ``app.dependency_overrides``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Annotated, Protocol, cast

from fastapi import Depends, FastAPI

from nicheloop.blobs import BlobStore
from nicheloop.bus import Publisher
from nicheloop.errors import NotReady
from nicheloop.review import ReviewQueue
from nicheloop.settings import Settings
from nicheloop.store import Store
from services.inference import ModelOutput, ModelState, Pixels, Saliency
from services.limits import Admission, CallerRates
from services.routing import ModelCalls, RoutingWatch
from services.watch import ModelWatch


class PredictorPort(Protocol):
    """The model replica as the gateway calls it (a Serve handle in production)."""

    async def state(self) -> ModelState: ...
    async def predict(self, pixels: Pixels) -> ModelOutput: ...
    async def saliency(self, pixels: Pixels) -> Saliency: ...


@dataclass(frozen=True)
class GatewayResources:
    """Everything a gateway replica holds: settings, the predictor and what it knows of its model,
    the bound on predictions in flight, storage, the queue, the publisher, and during rollouts the
    candidate and the routing."""

    settings: Settings
    predictor: PredictorPort
    model: ModelWatch
    admission: Admission
    key: bytes  # signs prediction ids
    blobs: BlobStore
    store: Store
    queue: ReviewQueue
    publisher: Publisher
    candidate: PredictorPort | None = None  # a rollout's candidate (split mode: its own deployment)
    shadow: PredictorPort | None = None  # the candidate as mirrored calls reach it (else ``candidate``)
    rollout: RoutingWatch | None = None  # the live rollout's routing and this replica's arm counts
    calls: ModelCalls = field(default_factory=ModelCalls)  # every model call, by arm and version
    rates: CallerRates = field(default_factory=lambda: CallerRates(0, 1))  # per credential (0: off)


_installed: GatewayResources | None = None


def install_resources(resources: GatewayResources) -> None:
    """Make ``resources`` what every route of this process gets (the replica calls it once)."""
    global _installed
    _installed = resources


async def get_resources() -> GatewayResources:
    """The installed resources (a coroutine: FastAPI runs a plain function dependency in a worker
    thread, a hop that cost the gateway a seventh of its CPU a request).

    Raises:
        NotReady: the replica has not finished starting.
    """
    if _installed is None:
        raise NotReady("the gateway is still starting; retry in a moment")
    return _installed


async def resources_of(app: FastAPI) -> GatewayResources:
    """What the routes of ``app`` get as :data:`Resources` (a test's override of
    :func:`get_resources` included), for middleware that acts before any route.

    Raises:
        NotReady: the replica has not finished starting.
    """
    got = app.dependency_overrides.get(get_resources, get_resources)()
    return cast(GatewayResources, await got if inspect.isawaitable(got) else got)


Resources = Annotated[GatewayResources, Depends(get_resources)]
