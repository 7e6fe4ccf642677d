from pathlib import Path

import numpy as np
import pytest

from nicheloop.blobs import BlobStore, sha256_hex
from nicheloop.errors import InvalidInput, NotFound
from nicheloop.synthetic import CLASSES, DEMO_SHIFT, Shift, SyntheticStream, write_image_folder
from services.ids import is_issued, load_or_create_key, new_prediction_id


def test_blob_roundtrip_is_content_addressed(tmp_path: Path) -> None:
    blobs = BlobStore(str(tmp_path))
    digest = blobs.put(b"abc")
    assert digest == sha256_hex(b"abc") and blobs.put(b"abc") == digest
    assert blobs.get(digest) == b"abc" and blobs.exists(digest)


def test_blob_errors(tmp_path: Path) -> None:
    blobs = BlobStore(str(tmp_path))
    with pytest.raises(NotFound):
        blobs.get("0" * 64)
    with pytest.raises(InvalidInput):
        blobs.get("../../etc/passwd")


def test_prediction_ids_are_verifiable(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path)
    assert load_or_create_key(tmp_path) == key and (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600
    pid = new_prediction_id(key)
    assert is_issued(key, pid)
    assert not is_issued(key, pid[:-1] + ("0" if pid[-1] != "0" else "1"))
    assert not is_issued(b"other", pid) and not is_issued(key, "abc") and not is_issued(key, "")


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


def test_a_configured_key_is_used_and_checked(tmp_path: Path) -> None:
    assert load_or_create_key(tmp_path, "ab" * 32) == bytes.fromhex("ab" * 32)
    assert not (tmp_path / "secret.key").exists()
    for bad in ("zz" * 32, "ab"):
        with pytest.raises(InvalidInput, match="NICHELOOP_SECRET_KEY"):
            load_or_create_key(tmp_path, bad)
