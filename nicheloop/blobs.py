"""Content-addressed image store: a local folder by default, any fsspec URL (s3://…) otherwise."""

from __future__ import annotations

import hashlib
import re

import fsspec

from nicheloop.errors import InvalidInput, NotFound

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    """Stores bytes under their SHA-256; writing the same bytes twice is a no-op."""

    def __init__(self, root: str) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(str(root))

    def _path(self, digest: str) -> str:
        if not _SHA256.match(digest):
            raise InvalidInput(f"{digest!r} is not a sha256 hex digest")
        return f"{self.root}/{digest[:2]}/{digest}"

    def put(self, data: bytes) -> str:
        """Store ``data``; returns its sha256 hex digest."""
        digest = sha256_hex(data)
        path = self._path(digest)
        if not self.fs.exists(path):
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            tmp = f"{path}.tmp-{id(data)}"
            with self.fs.open(tmp, "wb") as fh:
                fh.write(data)
            self.fs.mv(tmp, path)
        return digest

    def get(self, digest: str) -> bytes:
        """The bytes stored under ``digest``.

        Raises:
            NotFound: if no blob has that digest.
        """
        path = self._path(digest)
        if not self.fs.exists(path):
            raise NotFound(f"no image with sha256 {digest} in the blob store")
        with self.fs.open(path, "rb") as fh:
            return fh.read()

    def digests(self) -> list[str]:
        """Every stored blob's digest, sorted (a listing of the whole store: use for batch jobs only)."""
        if not self.fs.exists(self.root):
            return []
        names = (path.rsplit("/", 1)[-1] for path in self.fs.find(self.root))
        return sorted(n for n in names if _SHA256.match(n))

    def exists(self, digest: str) -> bool:
        return self.fs.exists(self._path(digest))
