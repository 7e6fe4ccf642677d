"""The champion holder behind the predictor replica, outside Ray Serve: not ready until a
champion is loaded, then swapped whole when the alias moves."""

import numpy as np
import pytest
from PIL import Image

from nicheloop.errors import InvalidInput, NotReady
from nicheloop.model import NicheModel, build_model
from nicheloop.pixels import InputSpec, to_pixels
from nicheloop.registry import LoadedVersion, VersionInfo
from nicheloop.synthetic import SyntheticStream
from services.inference import Champion, ModelState, Pixels


class FakeRegistry:
    """Stands in for MLflow: no champion first, then version 1, then version 2."""

    def __init__(self) -> None:
        self.champion: str | None = None
        self.model = build_model("test_resnet", ["a", "b"], image_size=32)

    def resolve(self, alias: str) -> VersionInfo:
        if self.champion is None:
            raise NotReady("no champion")
        return VersionInfo("m", self.champion, "run", {}, [alias])

    def load(self, version: str, device: str = "cpu") -> LoadedVersion:
        return LoadedVersion(self.resolve("champion"), self.model, reference=None)  # type: ignore[arg-type]


def _pixels(image: Image.Image, model: NicheModel) -> Pixels:
    return Pixels(to_pixels(image, model.input_spec), model.input_spec.key)


def test_not_ready_until_a_champion_is_loaded_then_hot_swaps() -> None:
    registry = FakeRegistry()
    champion = Champion(registry)
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
    champion = Champion(registry)
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
