"""Safe decoding of untrusted image bytes."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError

from nicheloop.contracts import IMAGE_STATS
from nicheloop.errors import InvalidInput, NicheloopError, PayloadTooLarge

ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF")  # only these parsers ever see the bytes
MAX_JPEG_SCANS = 64  # a progressive JPEG has about 10; thousands of tiny scans are a CPU bomb
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
BACKGROUND = (255, 255, 255)  # transparency is composited onto white, as a browser shows a reviewer


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode ``data`` into a fully loaded RGB image, as a browser would show it: the first frame,
    turned upright by its EXIF orientation, transparency composited onto white, 16-bit and float
    samples scaled to 8 bits.

    Only the :data:`ALLOWED_FORMATS` parsers run; the size is bounded before any pixel is decoded
    (at most 4 bytes a pixel, :func:`_check_size`); a JPEG may have at most
    :data:`MAX_JPEG_SCANS` scans.

    Raises:
        PayloadTooLarge: if the bytes or the decoded size exceed the limits.
        InvalidInput: if the bytes are empty, not an image, truncated, of a refused format or in a
            pixel layout that cannot be shown as RGB.
    """
    if not data:
        raise InvalidInput("empty image: send the image file's bytes")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            _check_size(img, data, max_pixels)
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # upright, as a browser shows it
            return _to_rgb(img)
    except NicheloopError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(
            f"not an image in an accepted format; send one of {list(ALLOWED_FORMATS)}"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput(f"corrupt or truncated image: {exc}") from exc
    except Exception as exc:  # a decoder's own failure on crafted bytes is still the input's fault
        raise InvalidInput(f"the image could not be decoded ({type(exc).__name__})") from exc


def _check_size(img: Image.Image, data: bytes, max_pixels: int) -> None:
    """Refuse more than ``max_pixels`` pixels, or a JPEG of too many scans.

    The pixel bound is a bound in bytes too: Pillow decodes at most 4 bytes a pixel (RGBA, CMYK,
    32-bit integer or float grey; 16-bit grey is 2), and scaling deep grey to 8 bits adds one
    float32 copy.
    """
    width, height = img.size
    if width * height > max_pixels:
        mode = ImageMode.getmode(img.mode)
        decoded = width * height * len(mode.bands) * int(mode.typestr[-1])
        raise PayloadTooLarge(
            f"image is {width}x{height} pixels of {img.mode} ({decoded} bytes decoded); "
            f"the limit is {max_pixels} pixels"
        )
    # scans start with an SOS marker; entropy-coded data stuffs every 0xFF, so none hides there
    if img.format == "JPEG" and data.count(b"\xff\xda") > MAX_JPEG_SCANS:
        raise InvalidInput(f"JPEG has more than {MAX_JPEG_SCANS} scans; re-encode it")


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB of any pixel layout Pillow decodes: deep samples scaled, alpha composited."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return Image.fromarray(_to_8bit(np.asarray(img)), "L").convert("RGB")
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba).convert("RGB")
    return img.convert("RGB")


def _to_8bit(samples: np.ndarray) -> np.ndarray:
    """Deep grey samples as 0..255: floats in 0..1 scaled (else clipped), integers over 255 read as
    16-bit (PNG and TIFF store 16-bit grey as Pillow's ``I`` too)."""
    values = np.nan_to_num(samples.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
    if samples.dtype.kind == "f" and values.size and values.max() <= 1.0:
        values *= 255.0
    elif samples.dtype.kind != "f" and values.size and values.max() > 255:
        values /= 257.0
    return np.clip(values + 0.5, 0, 255).astype(np.uint8)


STAT_SIDE = 128  # texture statistics are taken at 128-255 pixels a side, whatever the image's size
MOMENT_SIDE = 64  # brightness and colour moments: from a nearest-neighbour sample of >= 64 px a side


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


def _moments(*images: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation of the images' bands, from their histograms (C), not
    their pixels."""
    hist = np.asarray(sum((img.histogram() for img in images), []), dtype=np.float64).reshape(-1, 256)
    n = hist.sum(1)
    mean = hist @ LEVELS / n
    return mean, np.sqrt(np.maximum(hist @ (LEVELS * LEVELS) / n - mean * mean, 0.0))


def _sample(img: Image.Image) -> Image.Image:
    """Every k-th pixel each way, k the largest that keeps MOMENT_SIDE pixels a side: means and
    spreads of a sample that size are as good for drift and several times cheaper."""
    step = max(1, min(img.size) // MOMENT_SIDE)
    if step == 1:
        return img
    return img.resize((img.width // step, img.height // step), Image.Resampling.NEAREST)


def _centre_luma(img: Image.Image) -> np.ndarray:
    """The central STAT_SIDE x STAT_SIDE pixels' luma (float32), starting on the 8-pixel grid:
    texture statistics are as good on them and several times cheaper than on the whole image."""
    left, top = ((max(0, side - STAT_SIDE) // 2) // 8 * 8 for side in img.size)
    box = (left, top, min(img.width, left + STAT_SIDE), min(img.height, top + STAT_SIDE))
    return np.asarray(img.crop(box).convert("L"), dtype=np.float32)


def _texture(luma: np.ndarray, native: np.ndarray) -> tuple[float, float]:
    """(variance of the Laplacian of ``luma``, Immerkær's noise estimate on ``native``).

    Immerkær's mask (4·centre - 2·edge neighbours + corners) cancels smooth image structure and
    leaves Gaussian noise, measured at the pixels' own scale (resizing would average the noise
    away). Where both are the same pixels the two filters share their sums; in-place arithmetic
    because at this size each numpy call's overhead is most of its cost.
    """
    if min(luma.shape) < 3 or min(native.shape) < 3:
        return 0.0, 0.0
    centre, edges = _neighbours(luma)
    laplacian = centre * -4.0
    laplacian += edges
    flat = laplacian.ravel()
    mean = flat.mean()
    sharpness = float(np.dot(flat, flat) / flat.size - mean * mean)
    if native is not luma:
        centre, edges = _neighbours(native)
        laplacian = centre * -4.0
        laplacian += edges
    # 4·centre - 2·edges + corners = corners - edges - (edges - 4·centre)
    mask = native[:-2, :-2] + native[:-2, 2:]
    mask += native[2:, :-2]
    mask += native[2:, 2:]
    mask -= edges
    mask -= laplacian
    np.abs(mask, out=mask)
    return sharpness, float(mask.mean() * np.sqrt(np.pi / 2) / 6)


def _neighbours(luma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each inner pixel, and the sum of its four edge neighbours."""
    edges = luma[:-2, 1:-1] + luma[2:, 1:-1]
    edges += luma[1:-1, :-2]
    edges += luma[1:-1, 2:]
    return luma[1:-1, 1:-1], edges


def image_statistics(img: Image.Image) -> dict[str, float]:
    """The input-drift features of one decoded RGB image, in :data:`IMAGE_STATS` order.

    Brightness and contrast are the mean and standard deviation of the luma (0..255) and the
    colour moments those of each channel, all over a nearest-neighbour sample of the image;
    sharpness is the variance of the Laplacian of the luma, the image reduced by a whole factor to
    128-255 pixels a side (falls with blur, rises with noise); noise is Immerkær's estimate of its
    standard deviation; blockiness compares steps across and inside 8×8 blocks on the image as
    sent (JPEG quality); the three texture statistics on a central 128-pixel square; width and
    height in pixels. About 0.25 ms for a 200 px image (docs/drift.md).
    """
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    width, height = rgb.size
    factor = max(1, min(width, height) // STAT_SIDE)  # integer box reduction: cheap, keeps 128..255 px
    small = rgb.reduce(factor) if factor > 1 else rgb
    sample = _sample(small)
    (*colour_mean, light_mean), (*colour_std, light_std) = _moments(sample, sample.convert("L"))
    luma = _centre_luma(small)
    # noise and JPEG blocks live at the pixels' own scale: a native crop, on the 8x8 grid
    native = _centre_luma(rgb) if factor > 1 else luma
    sharpness, noise = _texture(luma, native)
    values = (
        light_mean,
        light_std,
        sharpness,
        noise,
        _blockiness(native),
        width,
        height,
        *colour_mean,
        *colour_std,
    )
    return dict(zip(IMAGE_STATS, map(float, values)))
