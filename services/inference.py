"""The model replica: dynamic batching with ``@serve.batch`` and hot reload of the champion."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from ray import serve

from nicheloop.contracts import CHAMPION
from nicheloop.errors import NotReady
from nicheloop.logs import configure_logging
from nicheloop.model import NicheModel, margin_uncertainty
from nicheloop.registry import LoadedVersion, Registry, VersionInfo
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
    early_embedding: list[float]


class ChampionRegistry(Protocol):
    """The registry operations serving needs (:class:`nicheloop.registry.Registry` has them)."""

    def resolve(self, alias: str) -> VersionInfo: ...
    def load(self, version: str, device: str = "cpu") -> LoadedVersion: ...


class Champion:
    """The model the champion alias points at, swapped in whole when the alias moves.

    Not ready until a model is loaded. Knows nothing of Ray Serve: :class:`Predictor` wraps it.
    """

    def __init__(self, registry: ChampionRegistry, *, device: str = "cpu") -> None:
        self.registry, self.device = registry, device
        self.model: NicheModel | None = None
        self.version: str | None = None

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
        """Raises NotReady until a model is loaded."""
        return list(self._loaded()[0].class_names)

    def infer(self, images: list[Image.Image]) -> list[ModelOutput]:
        """Probabilities, uncertainty and embedding of each image, by the model loaded now.

        Raises:
            NotReady: no model loaded yet.
        """
        model, version = self._loaded()
        out = model.infer(model.preprocess(images))
        unc = margin_uncertainty(out.probs)
        # 6 decimals keep float32 precision for these magnitudes and halve the events' JSON size
        emb, early = (np.round(a.astype(np.float64), EMBEDDING_DECIMALS) for a in (out.embeddings, out.early))
        return [
            ModelOutput(version, model.class_names, p.tolist(), float(u), e.tolist(), x.tolist())
            for p, u, e, x in zip(out.probs, unc, emb, early)
        ]

    def _loaded(self) -> tuple[NicheModel, str]:
        model, version = self.model, self.version  # read once: a swap may land in between
        if model is None or version is None:
            raise NotReady("no model loaded yet; register a champion with `nicheloop bootstrap`")
        return model, version


class Predictor:
    """The model replica on Ray Serve: batches requests, watches the champion alias."""

    def __init__(self, settings: dict[str, Any]) -> None:
        configure_logging()
        self.settings = Settings(**settings)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.champion = Champion(
            Registry(self.settings.tracking_uri, self.settings.model_name), device=device
        )
        # serve.batch adds these setters at run time; its type hints do not show them
        self.predict_batch.set_max_batch_size(self.settings.batch_max_size)  # type: ignore[attr-defined]
        self.predict_batch.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self._watcher = asyncio.get_event_loop().create_task(self._watch_champion())

    async def _watch_champion(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.champion.reload_if_changed)
            except NotReady as exc:
                log.info("waiting for a champion: %s", exc)
            except Exception:  # keep serving the current model whatever the registry does
                log.exception("champion reload failed; still serving version %s", self.champion.version)
            await asyncio.sleep(self.settings.reload_interval_s)

    def ready(self) -> dict[str, Any]:
        return self.champion.ready()

    def class_names(self) -> list[str]:
        return self.champion.class_names()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def predict_batch(self, images: list[Image.Image]) -> list[ModelOutput]:
        return await asyncio.to_thread(self.champion.infer, images)

    async def predict(self, image: Image.Image) -> ModelOutput:
        return await self.predict_batch(image)  # serve.batch gathers single calls into lists


PredictorDeployment = serve.deployment(Predictor, name="predictor", ray_actor_options={"num_cpus": 1})
