"""Stand-ins around the gateway for its unit tests: a one-version registry, a predictor port over a
model slot in this process, and a publisher that records instead of sending to Kafka."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from nicheloop.model import build_model
from nicheloop.registry import LoadedVersion, VersionInfo
from services.deps import GatewayResources
from services.inference import ModelOutput, ModelSlot, ModelState, Pixels, Saliency


class OneVersion:
    """The registry serving sees: version 1 of a small model, once ``registered``."""

    def __init__(self) -> None:
        self.registered = False
        self.model = build_model("test_resnet", ["crack", "ok"], image_size=32)

    def resolve(self, alias: str) -> VersionInfo:
        from nicheloop.errors import NotReady

        if not self.registered:
            raise NotReady("no champion")
        return VersionInfo("m", "1", "run1", {}, [alias])

    def load(self, version: str, device: str = "cpu") -> LoadedVersion:
        return LoadedVersion(self.resolve("champion"), self.model, reference=None)  # type: ignore[arg-type]


class LocalPredictor:
    """The predictor port over a :class:`ModelSlot` in this process."""

    def __init__(self, champion: ModelSlot) -> None:
        self.champion = champion

    async def state(self) -> ModelState:
        return self.champion.state()

    async def predict(self, pixels: Pixels) -> ModelOutput:
        return (await asyncio.to_thread(self.champion.infer, [pixels]))[0]

    async def saliency(self, pixels: Pixels) -> Saliency:
        return await asyncio.to_thread(self.champion.saliency, pixels)


class RecordingPublisher:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, BaseModel]] = []
        self.spool_depth, self.spool_capacity = 0, 100

    def publish(self, topic: str, key: str, event: BaseModel) -> None:
        self.events.append((topic, key, event))

    def publish_durable(self, topic: str, key: str, event: BaseModel, ack_timeout_s: float = 5.0) -> None:
        self.publish(topic, key, event)


def ready(res: GatewayResources, registry: OneVersion) -> None:
    """Register version 1 and load it in ``res``'s predictor."""
    registry.registered = True
    assert isinstance(res.predictor, LocalPredictor) and res.predictor.champion.reload_if_changed()
