"""Safe decoding of untrusted image bytes."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from nicheloop.contracts import IMAGE_STATS
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
                raise InvalidInput(
                    f"image format {img.format} is not accepted; use one of {sorted(ALLOWED_FORMATS)}"
                )
            width, height = img.size
            if width * height > max_pixels:
                raise PayloadTooLarge(f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
            img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"not a decodable image; send a file in one of {sorted(ALLOWED_FORMATS)}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"corrupt or truncated image: {exc}") from exc
    return img.convert("RGB")


STAT_SIDE = 128  # texture statistics are taken at 128-255 pixels a side, whatever the image's size


def _blockiness(luma: np.ndarray) -> float:
    """How much stronger steps are across the 8-pixel grid than inside it (JPEG's block artefacts).

    1.0 for images without a block grid; above it as compression quality drops.
    """
    h, w = (luma.shape[0] // 8) * 8, (luma.shape[1] // 8) * 8
    if h < 16 or w < 16:
        return 1.0
    dx = np.abs(np.diff(luma[:h, :w], axis=1))  # step between column j and j+1
    on_grid = dx[:, 7::8]
    off_grid_mean = (dx.sum() - on_grid.sum()) / (dx.size - on_grid.size)
    return float((on_grid.mean() + 1e-3) / (off_grid_mean + 1e-3))


LEVELS = np.arange(256, dtype=np.float64)


def _moments(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation from the image's histogram (C), not its pixels."""
    hist = np.asarray(img.histogram(), dtype=np.float64).reshape(-1, 256)
    n = hist.sum(1)
    mean = hist @ LEVELS / n
    return mean, np.sqrt(np.maximum(hist @ (LEVELS * LEVELS) / n - mean * mean, 0.0))


def _centre(luma: np.ndarray) -> np.ndarray:
    """The central STAT_SIDE x STAT_SIDE pixels, starting on the 8-pixel grid (texture statistics
    are as good on them and several times cheaper than on the whole image)."""
    top, left = ((max(0, side - STAT_SIDE) // 2) // 8 * 8 for side in luma.shape)
    return np.ascontiguousarray(luma[top : top + STAT_SIDE, left : left + STAT_SIDE])


def _noise_sigma(luma: np.ndarray) -> float:
    """Immerkær's fast estimate of Gaussian noise: the mean response to a mask that cancels
    smooth image structure, at the pixels' own scale (resizing would average the noise away)."""
    if luma.shape[0] < 3 or luma.shape[1] < 3:
        return 0.0
    c = luma[1:-1, 1:-1]
    edges = luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:]
    corners = luma[:-2, :-2] + luma[:-2, 2:] + luma[2:, :-2] + luma[2:, 2:]
    response = np.abs(4 * c - 2 * edges + corners)
    return float(response.mean() * np.sqrt(np.pi / 2) / 6)


def image_statistics(img: Image.Image) -> dict[str, float]:
    """The input-drift features of one decoded RGB image, in :data:`IMAGE_STATS` order.

    Brightness and contrast are the mean and standard deviation of the luma (0..255); sharpness
    is the variance of the Laplacian of the luma, the image reduced by a whole factor to 128-255
    pixels a side (falls with blur, rises with noise); noise is Immerkær's estimate of its standard
    deviation; blockiness compares steps across and inside 8×8 blocks on the image as sent (JPEG
    quality); width and height in pixels; the per-channel means and standard deviations.
    """
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    width, height = rgb.size
    factor = max(1, min(width, height) // STAT_SIDE)  # integer box reduction: cheap, keeps 128..255 px
    small = rgb.reduce(factor) if factor > 1 else rgb
    grey = small.convert("L")
    colour_mean, colour_std = _moments(small)
    light_mean, light_std = _moments(grey)
    luma = _centre(np.asarray(grey, dtype=np.float32))
    lap = luma[1:-1, :-2] + luma[1:-1, 2:] + luma[:-2, 1:-1] + luma[2:, 1:-1] - 4 * luma[1:-1, 1:-1]
    # noise and JPEG blocks live at the pixels' own scale: a native crop, on the 8x8 grid
    box = (*(max(0, (side - STAT_SIDE) // 2 // 8 * 8) for side in (width, height)),)
    native = (
        rgb.crop((box[0], box[1], box[0] + STAT_SIDE, box[1] + STAT_SIDE)).convert("L")
        if factor > 1
        else grey
    )
    native_luma = _centre(np.asarray(native, dtype=np.float32))
    values = (
        light_mean[0],
        light_std[0],
        float(lap.var()),
        _noise_sigma(native_luma),
        _blockiness(native_luma),
        width,
        height,
        *colour_mean,
        *colour_std,
    )
    return dict(zip(IMAGE_STATS, map(float, values)))
