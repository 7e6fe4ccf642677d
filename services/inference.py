"""The model replica: dynamic batching with ``@serve.batch`` and hot reload of the champion."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from ray import serve

from nicheloop.contracts import CHAMPION
from nicheloop.errors import NotReady
from nicheloop.logs import configure_logging
from nicheloop.model import NicheModel, margin_uncertainty
from nicheloop.registry import Registry
from nicheloop.settings import Settings

log = logging.getLogger(__name__)

EMBEDDING_DECIMALS = 6


@dataclass(frozen=True)
class ModelOutput:
    model_version: str
    class_names: list[str]
    probs: list[float]
    uncertainty: float
    embedding: list[float]


class Predictor:
    """Holds the champion; answers batches of PIL images. Not ready until a model is loaded."""

    def __init__(self, settings: dict[str, Any]) -> None:
        configure_logging()
        self.settings = Settings(**settings)
        self.registry = Registry(self.settings.tracking_uri, self.settings.model_name)
        self.model: NicheModel | None = None
        self.version: str | None = None
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # serve.batch adds these setters at run time; its type hints do not show them
        self.predict_batch.set_max_batch_size(self.settings.batch_max_size)  # type: ignore[attr-defined]
        self.predict_batch.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self._watcher = asyncio.get_event_loop().create_task(self._watch_champion())

    async def _watch_champion(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.reload_if_changed)
            except NotReady as exc:
                log.info("waiting for a champion: %s", exc)
            except Exception:  # keep serving the current model whatever the registry does
                log.exception("champion reload failed; still serving version %s", self.version)
            await asyncio.sleep(self.settings.reload_interval_s)

    def reload_if_changed(self) -> bool:
        """Load the version the champion alias points at, if it changed. Returns True on swap."""
        info = self.registry.resolve(CHAMPION)
        if info.version == self.version:
            return False
        loaded = self.registry.load(info.version, device=self.device)
        self.model, self.version = loaded.model, info.version  # one assignment each: atomic swap
        log.info("now serving %s version %s on %s", info.name, info.version, self.device)
        return True

    def ready(self) -> dict[str, Any]:
        return {"ready": self.model is not None, "model_version": self.version}

    def class_names(self) -> list[str]:
        if self.model is None:
            raise NotReady("no model loaded yet; register a champion with `nicheloop bootstrap`")
        return list(self.model.class_names)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def predict_batch(self, images: list[Image.Image]) -> list[ModelOutput]:
        model, version = self.model, self.version
        if model is None or version is None:
            raise NotReady("no model loaded yet; register a champion with `nicheloop bootstrap`")
        probs, emb = await asyncio.to_thread(lambda: model.infer(model.preprocess(images)))
        unc = margin_uncertainty(probs)
        # 6 decimals keep float32 precision for these magnitudes and halve the events' JSON size
        emb_rounded = np.round(emb.astype(np.float64), EMBEDDING_DECIMALS)
        return [
            ModelOutput(version, model.class_names, p.tolist(), float(u), e.tolist())
            for p, u, e in zip(probs, unc, emb_rounded)
        ]

    async def predict(self, image: Image.Image) -> ModelOutput:
        return await self.predict_batch(image)


PredictorDeployment = serve.deployment(Predictor, name="predictor", ray_actor_options={"num_cpus": 1})
