"""Generated defect images: seeded, shiftable, written as an ImageFolder."""

from pathlib import Path

import numpy as np
import pytest

from nicheloop.synthetic import CLASSES, DEMO_SHIFT, Shift, SyntheticStream, write_image_folder


def test_synthetic_stream_is_seeded() -> None:
    a = [np.asarray(img) for img, _ in SyntheticStream(seed=4).take(3)]
    b = [np.asarray(img) for img, _ in SyntheticStream(seed=4).take(3)]
    assert all((x == y).all() for x, y in zip(a, b))


def test_shift_moves_brightness_and_class_mix() -> None:
    plain = SyntheticStream(seed=1).take(200)
    shifted = SyntheticStream(seed=1).take(200, DEMO_SHIFT)
    assert (
        np.mean([np.asarray(i).mean() for i, _ in shifted])
        > np.mean([np.asarray(i).mean() for i, _ in plain]) + 10
    )
    share = sum(label == "scratches" for _, label in shifted) / 200
    assert share > 0.35  # weight 0.5 versus 0.25 unshifted


def test_bad_class_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="class_weights"):
        SyntheticStream().take(1, Shift(class_weights=(1.0,)))


def test_write_image_folder(tmp_path: Path) -> None:
    write_image_folder(tmp_path, per_class=2, size=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CLASSES)
    assert len(list(tmp_path.rglob("*.png"))) == 2 * len(CLASSES)
