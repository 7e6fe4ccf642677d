"""The predictor replica's logic outside Ray Serve: not ready until a champion is loaded."""

import asyncio

import pytest

from nicheloop.errors import NotReady
from nicheloop.model import build_model
from nicheloop.registry import LoadedVersion, VersionInfo
from nicheloop.synthetic import SyntheticStream
from services.inference import Predictor


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


def test_not_ready_until_a_champion_is_loaded_then_hot_swaps(tmp_path) -> None:
    async def scenario() -> None:
        predictor = Predictor.__new__(Predictor)  # the Serve-free part of __init__
        predictor.registry, predictor.model, predictor.version, predictor.device = (
            FakeRegistry(),
            None,
            None,
            "cpu",
        )
        image = SyntheticStream(size=32).take(1)[0][0]
        assert predictor.ready() == {"ready": False, "model_version": None}
        with pytest.raises(NotReady):
            predictor.reload_if_changed()
        with pytest.raises(NotReady):
            await Predictor.predict_batch.__wrapped__(predictor, [image])
        predictor.registry.champion = "1"
        assert predictor.reload_if_changed() and not predictor.reload_if_changed()
        assert predictor.ready() == {"ready": True, "model_version": "1"}
        [out] = await Predictor.predict_batch.__wrapped__(predictor, [image])
        assert out.model_version == "1" and len(out.probs) == 2 and 0 <= out.uncertainty <= 1
        predictor.registry.champion = "2"
        assert predictor.reload_if_changed() and predictor.ready()["model_version"] == "2"

    asyncio.run(scenario())
