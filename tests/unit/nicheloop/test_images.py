import io

import numpy as np
import pytest
from PIL import Image

from nicheloop.errors import InvalidInput, PayloadTooLarge
from nicheloop.images import decode_image

LIMIT, PIXELS = 1 << 20, 512 * 512


def test_decodes_png_and_jpeg_to_rgb(png: bytes, jpeg: bytes) -> None:
    for data in (png, jpeg):
        img = decode_image(data, LIMIT, PIXELS)
        assert img.mode == "RGB" and img.size[0] > 0


@pytest.mark.parametrize("data", [b"", b"hello", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_rejects_non_images(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        decode_image(data, LIMIT, PIXELS)


def test_rejects_truncated_image(png: bytes) -> None:
    with pytest.raises(InvalidInput, match="truncated|corrupt|decodable"):
        decode_image(png[: len(png) // 2], LIMIT, PIXELS)


def test_rejects_oversized_bytes(png: bytes) -> None:
    with pytest.raises(PayloadTooLarge):
        decode_image(png, max_bytes=10, max_pixels=PIXELS)


def test_rejects_pixel_bomb() -> None:
    buf = io.BytesIO()
    Image.new("L", (2000, 2000)).save(buf, format="PNG")  # tiny file, 4 Mpx decoded
    with pytest.raises(PayloadTooLarge, match="pixels"):
        decode_image(buf.getvalue(), LIMIT, PIXELS)


def test_rejects_unlisted_format() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(buf, format="PPM")
    with pytest.raises(InvalidInput, match="format"):
        decode_image(buf.getvalue(), LIMIT, PIXELS)
