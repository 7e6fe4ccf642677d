"""Prediction ids are signed and verifiable; a configured key is used and checked."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nicheloop.errors import InvalidInput
from services.ids import is_issued, load_or_create_key, new_prediction_id


def test_prediction_ids_are_verifiable(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path)
    assert load_or_create_key(tmp_path) == key and (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600
    pid = new_prediction_id(key)
    assert is_issued(key, pid)
    assert not is_issued(key, pid[:-1] + ("0" if pid[-1] != "0" else "1"))
    assert not is_issued(b"other", pid) and not is_issued(key, "abc") and not is_issued(key, "")


def test_a_configured_key_is_used_and_checked(tmp_path: Path) -> None:
    assert load_or_create_key(tmp_path, "ab" * 32) == bytes.fromhex("ab" * 32)
    assert not (tmp_path / "secret.key").exists()
    for bad in ("zz" * 32, "ab"):
        with pytest.raises(InvalidInput, match="NICHELOOP_SECRET_KEY"):
            load_or_create_key(tmp_path, bad)


def test_an_id_is_issued_to_one_caller_only() -> None:
    key = b"k" * 32
    pid = new_prediction_id(key, owner="shop-a")
    assert is_issued(key, pid, owner="shop-a")
    assert not is_issued(key, pid, owner="shop-b") and not is_issued(key, pid)


def test_the_key_may_be_a_file_such_as_a_mounted_secret(tmp_path: Path) -> None:
    mounted = tmp_path / "secret"
    mounted.write_text("cd" * 32 + "\n")
    assert load_or_create_key(tmp_path, file=mounted) == bytes.fromhex("cd" * 32)
    assert not (tmp_path / "secret.key").exists()
    with pytest.raises(InvalidInput, match="cannot be read"):
        load_or_create_key(tmp_path, file=tmp_path / "absent")
    mounted.write_text("short")
    with pytest.raises(InvalidInput, match="_FILE"):
        load_or_create_key(tmp_path, file=mounted)


def test_a_non_ascii_tag_is_simply_not_issued() -> None:
    assert not is_issued(b"k" * 32, "a" * 32 + "." + "é" * 16)


def test_replicas_starting_together_share_one_key(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: load_or_create_key(tmp_path), range(32)))
    assert len(keys) == 1 and [p.name for p in tmp_path.iterdir()] == ["secret.key"]  # no leftovers
    (tmp_path / "secret.key").write_text("not hex")
    with pytest.raises(InvalidInput, match="delete it"):
        load_or_create_key(tmp_path)
