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


def _encoded(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("samples", "mode", "fmt", "expected"),
    [
        (np.full((8, 8), 257 * 200, np.uint16), "I;16", "PNG", 200),  # 16-bit grey, scaled not clipped
        (np.full((8, 8), 257 * 40, np.int32), "I", "TIFF", 40),
        (np.full((8, 8), 0.5, np.float32), "F", "TIFF", 128),  # float in 0..1
        (np.full((8, 8), 90.0, np.float32), "F", "TIFF", 90),  # float already in 0..255
        (np.full((8, 8), np.nan, np.float32), "F", "TIFF", 0),
    ],
)
def test_deep_grey_is_scaled_to_8_bits(samples: np.ndarray, mode: str, fmt: str, expected: int) -> None:
    source = Image.fromarray(samples)
    assert source.mode == mode
    img = decode_image(_encoded(source, fmt), LIMIT, PIXELS)
    assert img.mode == "RGB" and np.asarray(img).mean() == pytest.approx(expected, abs=1)


def test_transparency_is_composited_onto_white_as_a_browser_shows_it() -> None:
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # black, fully transparent
    half = Image.new("LA", (8, 8), (0, 128))
    palette = Image.new("P", (8, 8), 0)
    palette.info["transparency"] = 0
    assert np.asarray(decode_image(_encoded(clear), LIMIT, PIXELS)).min() == 255
    assert np.asarray(decode_image(_encoded(half), LIMIT, PIXELS)).mean() == pytest.approx(127, abs=1)
    assert np.asarray(decode_image(_encoded(palette, transparency=0), LIMIT, PIXELS)).min() == 255


def test_other_layouts_and_frames_decode_to_rgb() -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in ink
    red = decode_image(_encoded(cmyk, "JPEG"), LIMIT, PIXELS)
    assert red.mode == "RGB" and red.getpixel((4, 4))[0] > 200 > red.getpixel((4, 4))[1] + 100
    frames = [Image.new("L", (8, 8), 30), Image.new("L", (8, 8), 220)]
    gif = _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert np.asarray(decode_image(gif, LIMIT, PIXELS)).mean() == pytest.approx(30, abs=2)  # first frame
    assert decode_image(_encoded(Image.new("1", (8, 8), 1)), LIMIT, PIXELS).getpixel((0, 0)) == (255,) * 3


def test_exif_orientation_turns_the_image_upright() -> None:
    wide = Image.new("RGB", (20, 10), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    assert decode_image(_encoded(wide, "JPEG", exif=exif), LIMIT, PIXELS).size == (10, 20)
    assert decode_image(_encoded(wide, "JPEG"), LIMIT, PIXELS).size == (20, 10)


def test_a_jpeg_of_too_many_scans_is_refused() -> None:
    progressive = _encoded(Image.new("RGB", (32, 32), 90), "JPEG", progressive=True)
    assert decode_image(progressive, LIMIT, PIXELS).size == (32, 32)  # about ten scans: fine
    with pytest.raises(InvalidInput, match="scans"):
        decode_image(progressive + b"\xff\xda" * 80, LIMIT, PIXELS)


@pytest.mark.parametrize(
    "data",
    [
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",  # EPS would run Ghostscript
        b"8BPS\x00\x01" + b"\x00" * 40,  # PSD
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"%PDF-1.4\n1 0 obj<<>>endobj\n",
    ],
)
def test_spoofed_and_unlisted_formats_never_reach_their_parsers(data: bytes) -> None:
    with pytest.raises(InvalidInput, match="accepted format"):
        decode_image(data, LIMIT, PIXELS)
