"""Shared fixtures: small generated images (no downloads, no real data committed)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from nicheloop.synthetic import SyntheticStream, png_bytes


@pytest.fixture
def png() -> bytes:
    img, _ = SyntheticStream(seed=3, size=32).take(1)[0]
    return png_bytes(img)


@pytest.fixture
def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((24, 24, 3), 128, dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()
