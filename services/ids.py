"""Prediction ids that the feedback API can check without a lookup.

A prediction id is ``<uuid hex>.<hmac>``, the HMAC over the uuid and the name of the caller it was
issued to: feedback naming an id this service never issued to that caller is refused at once with
a 404, even before the prediction event reached the store, and no app can label another's
predictions (nor learn that they exist).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid
from pathlib import Path

from nicheloop.errors import InvalidInput

_TAG_CHARS = 16


def load_or_create_key(home: Path, configured: str | None = None, *, file: Path | None = None) -> bytes:
    """The signing key: ``configured`` (hex) if given, else the one in ``file`` (e.g. a mounted
    secret; it must exist), else ``home/secret.key`` (created 0600).

    Raises:
        InvalidInput: ``configured`` or ``file`` does not hold a hex key of at least 32 bytes, or
        ``file`` cannot be read.
    """
    if configured is None and file is not None:
        try:
            configured = file.read_text().strip()
        except OSError as exc:
            raise InvalidInput(f"NICHELOOP_SECRET_KEY_FILE {file} cannot be read ({exc})") from exc
    if configured is not None:
        try:
            key = bytes.fromhex(configured)
        except ValueError as exc:
            raise InvalidInput(
                "NICHELOOP_SECRET_KEY (or its _FILE) must be hex (e.g. `openssl rand -hex 32`)"
            ) from exc
        if len(key) < 32:
            raise InvalidInput(
                "NICHELOOP_SECRET_KEY (or its _FILE) must hold at least 32 bytes (64 hex digits)"
            )
        return key
    path = home.resolve() / "secret.key"
    if not path.exists():
        _create_key_file(path)
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 32:
        raise InvalidInput(f"{path} does not hold a hex key of 32 bytes; delete it to make a new one")
    return key


def _create_key_file(path: Path) -> None:
    """Write a new key to ``path`` whole and 0600 from the start, or keep the one another replica
    wrote first: it is written under a private name and linked into place (``link`` never
    replaces a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
            out.flush()
            os.fsync(out.fileno())
        os.link(tmp, path)
    except FileExistsError:
        pass  # another replica's key won: every replica signs with that one
    finally:
        tmp.unlink(missing_ok=True)


def _tag(key: bytes, raw: str, owner: str) -> str:
    return hmac.new(key, f"{raw}\0{owner}".encode(), hashlib.sha256).hexdigest()[:_TAG_CHARS]


def new_prediction_id(key: bytes, *, owner: str = "") -> str:
    """A new id, signed with ``key`` for the caller named ``owner`` ("" for the service's own)."""
    raw = uuid.uuid4().hex
    return f"{raw}.{_tag(key, raw, owner)}"


def is_issued(key: bytes, prediction_id: str, *, owner: str = "") -> bool:
    """True when ``prediction_id`` was made by :func:`new_prediction_id` with ``key`` for ``owner``."""
    raw, _, tag = prediction_id.partition(".")
    if len(raw) != 32 or len(tag) != _TAG_CHARS or not prediction_id.isascii():
        return False  # compare_digest refuses non-ASCII text with a TypeError
    return hmac.compare_digest(tag, _tag(key, raw, owner))
