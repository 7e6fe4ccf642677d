"""The model slot behind a predictor replica, outside Ray Serve: not ready until a model is loaded,
then swapped whole when its target moves; the champion's target is the rollout record, not the alias."""

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import services.inference as inference
from nicheloop.contracts import CHAMPION
from nicheloop.errors import InvalidInput, NotReady
from nicheloop.model import NicheModel, build_model
from nicheloop.pixels import InputSpec, to_pixels
from nicheloop.registry import LoadedVersion, VersionInfo
from nicheloop.rollouts import Rollout, Rollouts
from nicheloop.settings import Settings
from nicheloop.store import Store
from nicheloop.synthetic import SyntheticStream
from services.inference import ModelSlot, ModelState, Pixels, live_candidate, recorded_champion
from tests.unit.services.fakes import OneVersion


class FakeRegistry:
    """Stands in for MLflow: no champion first, then version 1, then version 2."""

    def __init__(self) -> None:
        self.champion: str | None = None
        self.model = build_model("test_resnet", ["a", "b"], image_size=32)
        self.loaded: list[str] = []

    def resolve(self, alias: str) -> VersionInfo:
        if self.champion is None:
            raise NotReady("no champion")
        return VersionInfo("m", self.champion, "run", {}, [alias])

    def champion_version(self) -> str:
        return self.resolve("champion").version

    def load(self, version: str, device: str = "cpu") -> LoadedVersion:
        self.loaded.append(version)
        return LoadedVersion(self.resolve("champion"), self.model, reference=None)  # type: ignore[arg-type]


def _pixels(image: Image.Image, model: NicheModel) -> Pixels:
    return Pixels(to_pixels(image, model.input_spec), model.input_spec.key)


def test_not_ready_until_a_champion_is_loaded_then_hot_swaps() -> None:
    registry = FakeRegistry()
    champion = ModelSlot(registry, registry.champion_version)
    image = SyntheticStream(size=40).take(1)[0][0]
    assert champion.state() == ModelState(ready=False)
    with pytest.raises(NotReady):
        champion.reload_if_changed()
    with pytest.raises(NotReady):
        champion.infer([_pixels(image, registry.model)])
    with pytest.raises(NotReady):
        champion.state().spec()
    registry.champion = "1"
    assert champion.reload_if_changed() and not champion.reload_if_changed()
    state = champion.state()
    assert (state.ready, state.model_version, state.class_names) == (True, "1", ("a", "b"))
    assert state.spec() == registry.model.input_spec
    [out] = champion.infer([_pixels(image, registry.model)])
    assert out.model_version == "1" and len(out.probs) == 2 and 0 <= out.uncertainty <= 1
    assert abs(sum(out.probs) - 1) < 1e-5 and len(out.embedding) > 0
    assert len(out.early_embedding) == 32 + 48  # test_resnet's stride-4 and stride-8 maps, pooled
    registry.champion = "2"
    assert champion.reload_if_changed() and champion.state().model_version == "2"


def test_pixels_give_what_the_model_gives_on_the_image_and_other_geometries_are_refitted() -> None:
    registry = FakeRegistry()
    registry.champion = "1"
    champion = ModelSlot(registry, registry.champion_version)
    champion.reload_if_changed()
    model = registry.model
    images = [img for img, _ in SyntheticStream(seed=3, size=57).take(3)]
    direct = model.infer(model.preprocess(images)).probs
    shipped = champion.infer([_pixels(img, model) for img in images])
    np.testing.assert_array_equal(np.array([o.probs for o in shipped], dtype=np.float32), direct)
    other = InputSpec.of({**model.data_config, "input_size": (3, 48, 48)})
    [refit] = champion.infer([Pixels(to_pixels(images[0], other), other.key)])  # a swap in between
    assert len(refit.probs) == 2
    with pytest.raises(InvalidInput, match="uint8"):
        champion.infer([Pixels(np.zeros((32, 32, 3), dtype=np.float32), model.input_spec.key)])


def test_the_champion_served_is_the_recorded_one_not_an_alias_moved_by_hand(tmp_path: Path) -> None:
    registry, rollouts = FakeRegistry(), Rollouts(Store(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    registry.champion = "1"  # an alias with no record behind it
    slot = ModelSlot(registry, recorded_champion(rollouts, registry))
    with pytest.raises(NotReady, match="no champion is recorded; run `nicheloop bootstrap`"):
        slot.reload_if_changed()
    rollouts.record_champion("1", previous=None, actor="bootstrap", reason="first", now=0.0)
    assert slot.reload_if_changed() and slot.version == "1"
    registry.champion = "7"  # moved by hand in the registry
    assert not slot.reload_if_changed() and slot.version == "1" and registry.loaded == ["1"]
    rollouts.record_champion("2", previous="1", actor="ops", reason="offline", now=1.0)
    assert slot.reload_if_changed() and slot.version == "2"


def test_the_candidate_slot_follows_the_live_rollout_and_empties_after_it(tmp_path: Path) -> None:
    registry, rollouts = FakeRegistry(), Rollouts(Store(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    registry.champion = "1"
    slot = ModelSlot(registry, live_candidate(rollouts))
    assert not slot.reload_if_changed() and not slot.state().ready  # no rollout: nothing loaded
    live = rollouts.create(Rollout("2", "1", mirror=0.2), plan={}, actor="ops", reason="go", now=0.0)
    assert slot.reload_if_changed() and slot.state().model_version == "2"
    rollouts.record(live, Rollout("2", "1", state="rolled_back", revision=1), actor="ops", reason="bad")
    assert slot.reload_if_changed() and not slot.state().ready and slot.model is None


def _replica_over(
    registry: OneVersion, target: Callable[[], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[], inference.Predictor]:
    """What builds a champion predictor replica over ``registry``, serving what ``target`` names
    (call it on a running event loop); its watcher is cancelled: what the constructor did alone."""
    monkeypatch.setattr(inference, "Registry", lambda uri, name: registry)
    monkeypatch.setattr(inference, "recorded_champion", lambda rollouts, reg: target)

    def build() -> inference.Predictor:
        predictor = inference.Predictor(Settings(home=tmp_path).model_dump(mode="json"))
        predictor._watcher.cancel()
        return predictor

    return build


def test_a_predictor_replica_loads_its_model_before_it_takes_a_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serve routes to a replica once its constructor returns: a replacement for a killed one must
    not answer NotReady while its watcher has yet to load the champion."""
    registry = OneVersion()
    registry.registered = True

    async def state(build: Callable[[], inference.Predictor]) -> ModelState:
        return build().state()

    ready = asyncio.run(state(_replica_over(registry, lambda: "1", tmp_path, monkeypatch)))
    assert ready.ready and ready.model_version == "1"
    registry.registered = False  # no champion yet: the replica starts, unready, and its watcher waits
    unready = _replica_over(registry, lambda: registry.resolve(CHAMPION).version, tmp_path, monkeypatch)
    assert not asyncio.run(state(unready)).ready


def test_a_predictor_says_how_long_an_image_spent_in_the_model_and_in_the_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's Server-Timing splits its wait for the model into the hop and the replica's share."""
    registry = OneVersion()
    registry.registered = True
    build = _replica_over(registry, lambda: "1", tmp_path, monkeypatch)
    image = SyntheticStream(size=40).take(1)[0][0]

    async def predict() -> inference.ModelOutput:
        return await build().predict(_pixels(image, registry.model))

    out = asyncio.run(predict())
    assert out.forward_ms is not None and out.predictor_ms is not None
    assert 0 < out.forward_ms <= out.predictor_ms
