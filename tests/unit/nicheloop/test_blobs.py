"""The content-addressed blob store."""

from pathlib import Path

import pytest

from nicheloop.blobs import BlobStore, sha256_hex
from nicheloop.errors import InvalidInput, NotFound


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
