"""The champion holder behind the predictor replica, outside Ray Serve: not ready until a
champion is loaded, then swapped whole when the alias moves."""

import pytest

from nicheloop.errors import NotReady
from nicheloop.model import build_model
from nicheloop.registry import LoadedVersion, VersionInfo
from nicheloop.synthetic import SyntheticStream
from services.inference import Champion


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


def test_not_ready_until_a_champion_is_loaded_then_hot_swaps() -> None:
    registry = FakeRegistry()
    champion = Champion(registry)
    image = SyntheticStream(size=32).take(1)[0][0]
    assert champion.ready() == {"ready": False, "model_version": None}
    with pytest.raises(NotReady):
        champion.reload_if_changed()
    with pytest.raises(NotReady):
        champion.infer([image])
    with pytest.raises(NotReady):
        champion.class_names()
    registry.champion = "1"
    assert champion.reload_if_changed() and not champion.reload_if_changed()
    assert champion.ready() == {"ready": True, "model_version": "1"}
    assert champion.class_names() == ["a", "b"]
    [out] = champion.infer([image])
    assert out.model_version == "1" and len(out.probs) == 2 and 0 <= out.uncertainty <= 1
    assert abs(sum(out.probs) - 1) < 1e-5 and len(out.embedding) > 0
    assert len(out.early_embedding) == 32 + 48  # test_resnet's stride-4 and stride-8 maps, pooled
    registry.champion = "2"
    assert champion.reload_if_changed() and champion.ready()["model_version"] == "2"
