"""The model replica: adaptive batching of compact pixel arrays and hot reload of the version its arm
serves (the recorded champion, or a rollout's candidate)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
from PIL import Image
from ray import serve

from nicheloop.contracts import CHAMPION
from nicheloop.errors import InvalidInput, NotReady
from nicheloop.logs import configure_logging
from nicheloop.model import NicheModel, margin_uncertainty
from nicheloop.pixels import InputSpec, normalise, to_pixels
from nicheloop.registry import LoadedVersion, Registry, VersionInfo
from nicheloop.rollouts import Rollouts
from nicheloop.settings import Settings
from nicheloop.store import Store
from services.batching import Batcher
from services.faults import ServingFault

log = logging.getLogger(__name__)

EMBEDDING_DECIMALS = 6


@dataclass(frozen=True)
class Pixels:
    """One image as the gateway ships it: ``(H, W, 3)`` uint8 in the input geometry of the model
    whose :class:`~nicheloop.pixels.InputSpec` has ``spec_key`` (49 KB at 128 px, whatever was sent)."""

    array: np.ndarray
    spec_key: str


@dataclass(frozen=True)
class ModelState:
    """What the gateway needs to know of the model being served."""

    ready: bool
    model_version: str | None = None
    class_names: tuple[str, ...] = ()
    input_spec: InputSpec | None = None

    def spec(self) -> InputSpec:
        """Raises NotReady when no model is loaded (no input spec yet)."""
        if self.input_spec is None:
            raise NotReady("no model loaded yet; register a champion with `nicheloop bootstrap`")
        return self.input_spec


@dataclass(frozen=True)
class ModelOutput:
    model_version: str
    class_names: list[str]
    probs: list[float]
    uncertainty: float
    embedding: list[float]
    early_embedding: list[float]
    # where a replica's time went, for Server-Timing (None: not measured): this image's batch through
    # the model slot (fitting, normalising, the forward pass, rounding the outputs), and this image's
    # whole stay in the replica (its wait for the model included)
    forward_ms: float | None = None
    predictor_ms: float | None = None


@dataclass(frozen=True)
class Saliency:
    """A Grad-CAM map of one image (:meth:`nicheloop.model.NicheModel.saliency`) with the pixels it
    is of (the model's input geometry: what the model saw) and which version and class it explains."""

    model_version: str
    class_name: str
    heat: np.ndarray  # (H, W) uint8: 255 is the strongest evidence
    pixels: np.ndarray  # (H, W, 3) uint8


class ModelLoader(Protocol):
    """The registry operations serving needs (:class:`nicheloop.registry.Registry` has them)."""

    def resolve(self, alias: str) -> VersionInfo: ...
    def load(self, version: str, device: str = "cpu") -> LoadedVersion: ...


Target = Callable[[], "str | None"]  # the version a slot should serve now (None: none)


def recorded_champion(rollouts: Rollouts, registry: ModelLoader) -> Target:
    """The champion the rollout record names: an alias moved by hand in the registry is not served
    (it is logged, and the rollout controller moves it back).

    The target raises NotReady while nothing is recorded."""
    warned: set[tuple[str, str]] = set()

    def target() -> str:
        version = rollouts.champion()
        if version is None:
            raise NotReady(
                "no champion is recorded; run `nicheloop bootstrap` (or `nicheloop rollout adopt`)"
            )
        try:
            alias = registry.resolve(CHAMPION).version
        except NotReady:
            alias = None
        if alias is not None and alias != version and (alias, version) not in warned:
            warned.add((alias, version))
            log.warning(
                "the champion alias names version %s but the recorded champion is %s: serving %s "
                "(promote through `nicheloop rollout`, which records who and why)",
                alias,
                version,
                version,
            )
        return version

    return target


def live_candidate(rollouts: Rollouts) -> Target:
    """The candidate of the live rollout in shadow, canary or hold; None when there is none."""

    def target() -> str | None:
        routing = rollouts.routing(time.time(), stale_s=math.inf)
        return None if routing is None else routing.candidate

    return target


class ModelSlot:
    """The model of one arm, swapped in whole when ``target`` names another version (and dropped
    when it names none). Not ready until a model is loaded. Knows nothing of Ray Serve:
    :class:`Predictor` wraps it."""

    def __init__(self, registry: ModelLoader, target: Target, *, device: str = "cpu") -> None:
        self.registry, self.target, self.device = registry, target, device
        self.model: NicheModel | None = None
        self.version: str | None = None

    def reload_if_changed(self) -> bool:
        """Load the version the target names, if it changed. Returns True on swap.

        Raises:
            NotReady: the target names no version yet (the champion before bootstrap).
        """
        version = self.target()
        if version == self.version:
            return False
        if version is None:
            self.model, self.version = None, None
            log.info("no longer serving a model here: the rollout ended")
            return True
        loaded = self.registry.load(version, device=self.device)
        self.model, self.version = loaded.model, version  # one assignment each: atomic swap
        log.info("now serving %s version %s on %s", loaded.info.name, version, self.device)
        return True

    def state(self) -> ModelState:
        model, version = self.model, self.version  # read once: a swap may land in between
        if model is None or version is None:
            return ModelState(ready=False)
        return ModelState(True, version, tuple(model.class_names), model.input_spec)

    def infer(self, items: list[Pixels]) -> list[ModelOutput]:
        """Probabilities, uncertainty and embeddings of each image, by the model loaded now.

        Pixels made for another input spec (sent while the champion was being swapped) are
        brought to this model's geometry first.

        Raises:
            NotReady: no model loaded yet.
            InvalidInput: an array that is not (H, W, 3) uint8.
        """
        start = time.perf_counter()
        model, version = self._loaded()
        spec = model.input_spec
        arrays = [_fit(item, spec) for item in items]
        out = model.infer(normalise(arrays, spec))
        unc = margin_uncertainty(out.probs)
        # 6 decimals keep float32 precision for these magnitudes and halve the events' JSON size
        emb, early = (np.round(a.astype(np.float64), EMBEDDING_DECIMALS) for a in (out.embeddings, out.early))
        forward_ms = (time.perf_counter() - start) * 1000
        return [
            ModelOutput(
                version,
                model.class_names,
                p.tolist(),
                float(u),
                e.tolist(),
                x.tolist(),
                forward_ms=forward_ms,
            )
            for p, u, e, x in zip(out.probs, unc, emb, early)
        ]

    def saliency(self, item: Pixels) -> Saliency:
        """Grad-CAM of one image for the class the loaded model picks.

        Raises:
            NotReady: no model loaded yet. InvalidInput: as :meth:`infer`, or a backbone without a
            spatial feature map.
        """
        model, version = self._loaded()
        spec = model.input_spec
        pixels = _fit(item, spec)
        heat, c = model.saliency(normalise([pixels], spec))
        return Saliency(version, model.class_names[c], (heat * 255).round().astype(np.uint8), pixels)

    def _loaded(self) -> tuple[NicheModel, str]:
        model, version = self.model, self.version  # read once: a swap may land in between
        if model is None or version is None:
            raise NotReady("no model loaded yet; register a champion with `nicheloop bootstrap`")
        return model, version


def _fit(item: Pixels, spec: InputSpec) -> np.ndarray:
    a = item.array
    if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise InvalidInput("pixels must be an (H, W, 3) uint8 array made by nicheloop.pixels.to_pixels")
    return a if item.spec_key == spec.key else to_pixels(Image.fromarray(a), spec)


class Predictor:
    """The model replica on Ray Serve: batches requests, follows the version its arm should serve
    (``champion``: the recorded champion; ``candidate``: the live rollout's candidate)."""

    def __init__(self, settings: dict[str, Any], arm: Literal["champion", "candidate"] = "champion") -> None:
        configure_logging()
        self.settings, self.arm = Settings(**settings), arm
        torch.set_num_threads(self.settings.predictor_threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        registry = Registry(self.settings.tracking_uri, self.settings.model_name)
        rollouts = Rollouts(Store(self.settings.db_url))
        target = recorded_champion(rollouts, registry) if arm == "champion" else live_candidate(rollouts)
        self.slot = ModelSlot(registry, target, device=device)
        self._reload()  # Serve routes to a replica once this returns: a replacement must not say NotReady
        # one inference thread: torch's OpenMP team belongs to its calling thread, and a new caller
        # thread each batch (asyncio.to_thread) grows a new team of spinning threads
        self.batcher = self._batcher(ThreadPoolExecutor(1, thread_name_prefix="nicheloop-infer"))
        self._shadows: Batcher[Pixels, ModelOutput] | None = None  # made on the first shadow call
        # Grad-CAM (a backward pass, several forwards' worth) on its own thread: never ahead of a batch
        self._explainer = ThreadPoolExecutor(1, thread_name_prefix="nicheloop-saliency")
        self._watcher = asyncio.get_event_loop().create_task(self._watch())
        self._fault_rng = random.Random()

    def _reload(self) -> None:
        """Load the version the arm should serve if it changed; never raises: the current model
        keeps serving whatever the registry does, and the watcher tries again."""
        try:
            self.slot.reload_if_changed()
        except NotReady as exc:
            log.info("waiting for a %s: %s", self.arm, exc)
        except Exception:
            log.exception("%s reload failed; still serving version %s", self.arm, self.slot.version)

    async def _watch(self) -> None:
        while True:
            await asyncio.to_thread(self._reload)
            await asyncio.sleep(self.settings.reload_interval_s)

    def _batcher(self, executor: ThreadPoolExecutor) -> Batcher[Pixels, ModelOutput]:
        async def infer(items: list[Pixels]) -> list[ModelOutput]:
            return await asyncio.get_running_loop().run_in_executor(executor, self.slot.infer, items)

        s = self.settings
        return Batcher(infer, max_size=s.batch_max_size, max_wait_s=s.batch_wait_timeout_s)

    def state(self) -> ModelState:
        return self.slot.state()

    async def predict(self, pixels: Pixels) -> ModelOutput:
        """One image's output, batched with whatever else waits here; a version registered with a
        serving fault (:mod:`services.faults`) fails or stalls its share of calls.

        Raises:
            NotReady: no model loaded yet. ModelFailed: the version's fault struck this call.
        """
        start = time.perf_counter()
        out = await self._through(self.batcher, pixels)
        return dataclasses.replace(out, predictor_ms=(time.perf_counter() - start) * 1000)

    async def saliency(self, pixels: Pixels) -> Saliency:
        """Grad-CAM of one image by the version loaded here (:meth:`ModelSlot.saliency`)."""
        return await asyncio.get_running_loop().run_in_executor(self._explainer, self.slot.saliency, pixels)

    async def predict_many(self, items: list[Pixels]) -> list[ModelOutput]:
        """The images of one gateway call, each batched with whatever else waits here (a cancelled
        call's images that have not started are dropped)."""
        return list(await asyncio.gather(*(self.predict(pixels) for pixels in items)))

    async def shadow(self, pixels: Pixels) -> ModelOutput:
        """One image's output for a shadow call (an answer nobody waits for). With
        ``shadow_priority=idle`` it is batched apart from answered calls, on a thread that runs only
        on CPU nothing else wants: mirroring must not slow the champion that shares the machine.

        Raises:
            NotReady: no model loaded yet. ModelFailed: the version's fault struck this call.
        """
        if self.settings.shadow_priority == "normal":
            return await self.predict(pixels)
        if self._shadows is None:
            idle = ThreadPoolExecutor(1, thread_name_prefix="nicheloop-shadow", initializer=spare_cpu_only)
            self._shadows = self._batcher(idle)
        return await self._through(self._shadows, pixels)

    async def shadow_many(self, items: list[Pixels]) -> list[ModelOutput]:
        """The images of one gateway call's shadow batch (:meth:`shadow`)."""
        return list(await asyncio.gather(*(self.shadow(pixels) for pixels in items)))

    async def _through(self, batcher: Batcher[Pixels, ModelOutput], pixels: Pixels) -> ModelOutput:
        out = await batcher.submit(pixels)
        fault = ServingFault.of(self.slot.model)
        if fault is not None:
            await fault.strike(self._fault_rng)
        return out


def spare_cpu_only() -> None:
    """Schedule the calling thread (and the torch threads it starts, which inherit it) only on CPU
    that nothing else wants: Linux's SCHED_IDLE, else nice 19 (both allowed without privileges)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # Linux: 0 is this thread
    except (AttributeError, OSError):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError as exc:
            log.warning("shadow calls run at normal priority here (%s)", exc)


class InProcessPredictor:
    """A :class:`Predictor` in the gateway's own process (``serving_mode=fused``), as the gateway's
    predictor port: no Ray call between HTTP and the model, at the price of scaling them together."""

    def __init__(self, settings: dict[str, Any], arm: Literal["champion", "candidate"] = "champion") -> None:
        self.predictor = Predictor(settings, arm)

    async def state(self) -> ModelState:
        return self.predictor.state()

    async def predict(self, pixels: Pixels) -> ModelOutput:
        return await self.predictor.predict(pixels)

    async def saliency(self, pixels: Pixels) -> Saliency:
        return await self.predictor.saliency(pixels)


class InProcessShadow:
    """The in-process candidate as the port of shadow calls (:meth:`Predictor.shadow`)."""

    def __init__(self, candidate: InProcessPredictor) -> None:
        self.predictor = candidate.predictor

    async def state(self) -> ModelState:
        return self.predictor.state()

    async def predict(self, pixels: Pixels) -> ModelOutput:
        return await self.predictor.shadow(pixels)

    async def saliency(self, pixels: Pixels) -> Saliency:
        return await self.predictor.saliency(pixels)


def candidate_deployment(settings: Settings) -> Any:
    """The rollout's candidate as a deployment of its own beside the champion's, so its latency and
    failures stay its own and it cannot starve the champion: one replica, idle (no model loaded)
    while no rollout is live."""
    s = settings
    return serve.deployment(
        Predictor,
        name="candidate",
        num_replicas=1,
        ray_actor_options={"num_cpus": s.candidate_cpus, "num_gpus": s.candidate_gpus},
        max_ongoing_requests=s.predictor_max_ongoing,
        max_queued_requests=s.predictor_max_queued,
    )


def predictor_deployment(settings: Settings) -> Any:
    """The champion's predictor as a Serve deployment, sized and bounded by ``settings``."""
    s = settings
    scaling: dict[str, Any] = {"num_replicas": s.predictor_replicas}
    if s.predictor_max_replicas > s.predictor_replicas:
        scaling = {
            "autoscaling_config": {
                "min_replicas": s.predictor_replicas,
                "max_replicas": s.predictor_max_replicas,
                "target_ongoing_requests": s.predictor_target_ongoing,
            }
        }
    return serve.deployment(
        Predictor,
        name="predictor",
        ray_actor_options={"num_cpus": s.predictor_threads, "num_gpus": s.predictor_gpus},
        max_ongoing_requests=s.predictor_max_ongoing,
        max_queued_requests=s.predictor_max_queued,
        **scaling,
    )
