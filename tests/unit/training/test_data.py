"""Snapshots are content-addressed; recipes refuse nonsense; any ImageFolder reads."""

import pytest

from training.config import TrainConfig
from training.data import Example, Snapshot


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
