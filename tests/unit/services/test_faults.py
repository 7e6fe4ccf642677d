"""Serving faults: a version registered with one keeps it through the registry's save and load, and
the model replica fails or stalls its share of calls (a version without one serves normally)."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nicheloop.errors import InvalidInput, ModelFailed
from nicheloop.model import build_model, load_model, save_model
from nicheloop.pixels import to_pixels
from nicheloop.settings import Settings
from services.faults import ServingFault
from services.inference import ModelOutput, ModelSlot, Pixels, Predictor
from tests.unit.services.fakes import OneVersion


def test_a_fault_travels_with_the_saved_version(tmp_path: Path) -> None:
    model = ServingFault(error_rate=0.05, slow_share=0.02, slow_ms=300).declare(
        build_model("test_resnet", ["crack", "ok"], image_size=32)
    )
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert ServingFault.of(loaded) == ServingFault(0.05, 0.02, 300)
    assert ServingFault.of(build_model("test_resnet", ["crack", "ok"], image_size=32)) is None


def test_shares_out_of_range_are_refused() -> None:
    with pytest.raises(InvalidInput, match="shares in"):
        ServingFault(error_rate=1.5)


def test_the_replica_fails_and_stalls_the_declared_shares_of_calls(tmp_path: Path) -> None:
    registry = OneVersion()
    registry.registered = True
    image = Image.fromarray(np.zeros((40, 40, 3), np.uint8))

    async def run(fault: ServingFault | None, calls: int) -> tuple[int, float]:
        predictor = Predictor(Settings(home=tmp_path).model_dump(mode="json"))
        if fault is not None:
            fault.declare(registry.model)
        predictor.slot = ModelSlot(registry, lambda: "1")
        predictor.slot.reload_if_changed()
        predictor._fault_rng = random.Random(0)
        pixels = Pixels(to_pixels(image, registry.model.input_spec), registry.model.input_spec.key)
        failed, began = 0, time.perf_counter()
        for _ in range(calls):
            try:
                await predictor.predict(pixels)
            except ModelFailed:
                failed += 1
        predictor._watcher.cancel()
        return failed, time.perf_counter() - began

    assert asyncio.run(run(None, 20))[0] == 0
    failed, _ = asyncio.run(run(ServingFault(error_rate=0.25), 200))
    assert 30 <= failed <= 70  # 25 % of 200, give or take three standard deviations
    registry.model.extra.clear()
    _, slow = asyncio.run(run(ServingFault(slow_share=1.0, slow_ms=50), 4))
    assert slow >= 0.2


@pytest.mark.parametrize("priority", ["idle", "normal"])
def test_idle_shadow_calls_run_on_a_thread_of_their_own_that_yields_the_cpu(
    tmp_path: Path, priority: str
) -> None:
    registry = OneVersion()
    registry.registered = True
    image = Image.fromarray(np.zeros((40, 40, 3), np.uint8))
    ran: list[tuple[str, int]] = []  # each batch's thread and scheduling policy

    async def run() -> tuple[ModelOutput, ModelOutput]:
        settings = Settings(home=tmp_path, shadow_priority=priority)  # type: ignore[arg-type]
        predictor = Predictor(settings.model_dump(mode="json"), "candidate")
        predictor.slot = ModelSlot(registry, lambda: "1")
        predictor.slot.reload_if_changed()
        infer = predictor.slot.infer

        def spy(items: list[Pixels]) -> list[ModelOutput]:
            ran.append((threading.current_thread().name, os.sched_getscheduler(0)))
            return infer(items)

        predictor.slot.infer = spy  # type: ignore[method-assign]
        pixels = Pixels(to_pixels(image, registry.model.input_spec), registry.model.input_spec.key)
        shadow = (await predictor.shadow_many([pixels]))[0]
        answer = await predictor.predict(pixels)
        predictor._watcher.cancel()
        return shadow, answer

    shadow, answer = asyncio.run(run())
    assert shadow.probs == pytest.approx(answer.probs)
    assert ran[1] == (ran[1][0], os.SCHED_OTHER) and ran[1][0].startswith("nicheloop-infer")
    if priority == "idle":
        assert ran[0][0].startswith("nicheloop-shadow") and ran[0][1] == os.SCHED_IDLE
    else:
        assert ran[0] == ran[1]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's thread is untouched
