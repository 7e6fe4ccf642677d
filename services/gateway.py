"""The HTTP ingress on Ray Serve: one replica of :data:`services.api.api` with its resources."""

from __future__ import annotations

from typing import Any

from PIL import Image
from ray import serve
from ray.serve.handle import DeploymentHandle

from nicheloop.blobs import BlobStore
from nicheloop.bus import Publisher
from nicheloop.logs import configure_logging
from nicheloop.review import QueuePolicy, ReviewQueue
from nicheloop.settings import Settings
from nicheloop.store import Store
from services.api import api
from services.deps import GatewayResources, install_resources
from services.ids import load_or_create_key
from services.inference import ModelOutput


class ServePredictor:
    """The predictor deployment behind a Serve handle, as :class:`services.deps.PredictorPort`."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def ready(self) -> dict[str, Any]:
        return await self.handle.ready.remote()

    async def class_names(self) -> list[str]:
        return await self.handle.class_names.remote()

    async def predict(self, image: Image.Image) -> ModelOutput:
        return await self.handle.predict.remote(image)


def gateway_resources(settings: Settings, predictor: DeploymentHandle) -> GatewayResources:
    """Open what a gateway replica holds: the key, the blob store, the SQL store, the queue, the publisher."""
    store = Store(settings.db_url)
    return GatewayResources(
        settings=settings,
        predictor=ServePredictor(predictor),
        key=load_or_create_key(settings.home, settings.secret_key),
        blobs=BlobStore(str(settings.blob_dir)),
        store=store,
        queue=ReviewQueue(store, QueuePolicy.from_settings(settings)),
        publisher=Publisher(
            settings.bootstrap_servers,
            settings.home / "spool",
            name="gateway",
            spool_max_events=settings.spool_max_events,
        ),
    )


@serve.deployment(name="gateway", ray_actor_options={"num_cpus": 0.5})
@serve.ingress(api)
class Gateway:
    def __init__(self, predictor: DeploymentHandle, settings: dict[str, Any]) -> None:
        configure_logging()
        install_resources(gateway_resources(Settings(**settings), predictor))
