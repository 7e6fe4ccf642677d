from dataclasses import dataclass, field

import numpy as np
import pytest

from nicheloop.errors import GateRefused
from nicheloop.registry import VersionInfo
from rollout.promote import PREVIOUS, promote
from training.config import TrainConfig
from training.data import Example, Snapshot
from training.evaluate import classification_metrics


def test_metrics_on_a_known_confusion() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = classification_metrics(probs, np.array([0, 1, 1, 1]), 2)
    assert m["accuracy"] == 0.75
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_metrics_of_nothing_are_zero_not_nan() -> None:
    assert classification_metrics(np.zeros((0, 2)), np.zeros(0, dtype=int), 2)["accuracy"] == 0.0


def test_snapshot_digest_depends_on_content_only() -> None:
    a = Snapshot(train=(Example("1" * 64, "a"), Example("2" * 64, "b")), holdout=(Example("3" * 64, "a"),))
    b = Snapshot(train=(Example("2" * 64, "b"), Example("1" * 64, "a")), holdout=(Example("3" * 64, "a"),))
    c = Snapshot(train=(Example("1" * 64, "b"), Example("2" * 64, "b")), holdout=(Example("3" * 64, "a"),))
    assert a.digest == b.digest != c.digest


def test_train_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError):
        TrainConfig(unknown_knob=1)


@dataclass
class FakeRegistry:
    """Stands in for MLflow around the gate logic (the real registry is tested in integration)."""

    aliases: dict[str, str]
    parent: str
    metrics: dict[str, float]
    moves: list[tuple[str, str]] = field(default_factory=list)

    def resolve(self, alias: str) -> VersionInfo:
        v = self.aliases[alias]
        return VersionInfo("m", v, f"run{v}", {"parent_version": self.parent}, [alias])

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return self.metrics

    def set_alias(self, alias: str, version: str) -> None:
        self.moves.append((alias, version))
        self.aliases[alias] = version


def test_promotes_a_candidate_that_is_not_worse() -> None:
    reg = FakeRegistry(
        {"champion": "1", "candidate": "2"}, "1", {"holdout_accuracy": 0.9, "parent_holdout_accuracy": 0.8}
    )
    result = promote(reg)  # type: ignore[arg-type]
    assert (result.previous, result.promoted) == ("1", "2")
    assert reg.moves == [(PREVIOUS, "1"), ("champion", "2")]


@pytest.mark.parametrize(
    "aliases, parent, metrics, words",
    [
        ({"champion": "2", "candidate": "2"}, "1", {}, "already the champion"),
        (
            {"champion": "3", "candidate": "2"},
            "1",
            {"holdout_accuracy": 1, "parent_holdout_accuracy": 0},
            "stale",
        ),
        (
            {"champion": "1", "candidate": "2"},
            "1",
            {"holdout_accuracy": 0.7, "parent_holdout_accuracy": 0.8},
            "below",
        ),
        ({"champion": "1", "candidate": "2"}, "1", {}, "no held-out comparison"),
    ],
)
def test_refuses_and_says_why(aliases, parent, metrics, words) -> None:
    reg = FakeRegistry(dict(aliases), parent, metrics)
    with pytest.raises(GateRefused, match=words):
        promote(reg)  # type: ignore[arg-type]
    assert reg.moves == []


def test_read_image_folder_reads_any_imagefolder(tmp_path) -> None:
    from nicheloop.errors import InvalidInput
    from nicheloop.synthetic import write_image_folder
    from training.data import read_image_folder

    items = read_image_folder(write_image_folder(tmp_path / "ds", per_class=3, size=16))
    assert len(items) == 12 and {label for _, label in items} == {
        "crazing",
        "inclusion",
        "patches",
        "scratches",
    }
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(InvalidInput, match="two class folders"):
        read_image_folder(tmp_path / "one")
    with pytest.raises(InvalidInput, match="not a directory"):
        read_image_folder(tmp_path / "missing")
