"""Safe decoding of untrusted image bytes."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from nicheloop.errors import InvalidInput, PayloadTooLarge

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF"})


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode ``data`` into a fully loaded RGB image.

    Raises:
        PayloadTooLarge: if the bytes or the decoded pixel count exceed the limits.
        InvalidInput: if the bytes are empty, not an image, truncated or of a refused format.
    """
    if not data:
        raise InvalidInput("empty image: send the image file's bytes")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in ALLOWED_FORMATS:
                raise InvalidInput(f"image format {img.format} is not accepted; use one of {sorted(ALLOWED_FORMATS)}")
            width, height = img.size
            if width * height > max_pixels:
                raise PayloadTooLarge(f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
            img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"not a decodable image; send a file in one of {sorted(ALLOWED_FORMATS)}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"corrupt or truncated image: {exc}") from exc
    return img.convert("RGB")
