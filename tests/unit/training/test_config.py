"""Recipes: YAML, then values, then overrides; shipped recipes load; bad ones say what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from nicheloop.errors import InvalidInput
from training.config import TrainConfig, dump_recipe, load_recipe

CLASSES = ["crazing", "inclusion", "patches", "scratches"]


def test_recipe_reads_yaml_then_values_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("epochs: 12\nfreeze: gradual\nlayer_decay: 0.7\ncritical_classes: [scratches]\n")
    cfg = load_recipe(path, ["epochs=3", "weights=file:/x/ssl.pt", "amp=null"], {"epochs": 5, "augment": 0.2})
    assert (cfg.epochs, cfg.freeze, cfg.layer_decay, cfg.augment) == (3, "gradual", 0.7, 0.2)
    assert cfg.weights == "file:/x/ssl.pt" and cfg.critical_classes == ["scratches"] and cfg.amp is None
    assert load_recipe() == TrainConfig()
    again = tmp_path / "again.yaml"
    again.write_text(dump_recipe(cfg))
    assert load_recipe(again) == cfg


def test_shipped_recipes_load_and_start_from_imagenet() -> None:
    for path in sorted((Path(__file__).parents[3] / "recipes").glob("*.yaml")):
        assert load_recipe(path).weights == "package", path
    assert TrainConfig().weights == "package"  # random weights only when asked for
    assert load_recipe(None, ["weights=package:tf_efficientnet_lite1"]).weights.endswith("lite1")


@pytest.mark.parametrize(
    "text,overrides,words",
    [
        ("epochs: 0\n", [], "epochs"),
        ("no_such_knob: 1\n", [], "no_such_knob"),
        ("- a list\n", [], "mapping"),
        ("epochs: [unclosed\n", [], "not valid YAML"),
        ("", ["epochs"], "key=value"),
        ("", ["weights=ftp:x"], "weights"),
        ("", ["weights=mlflow:"], "weights"),
        ("", ["freeze=sometimes"], "freeze"),
    ],
)
def test_bad_recipes_say_what_is_wrong(tmp_path: Path, text: str, overrides: list[str], words: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=words):
        load_recipe(path, overrides)


def test_missing_recipe_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
