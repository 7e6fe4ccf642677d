"""Saliency on the gateway: a stored image's Grad-CAM by the served version, drawn over the pixels
the model saw, computed by a predictor replica once and then cached per version and image.

A reviewer who doubts the model asks where it looked; the answer must be the served model's, and
cheap the second time (the page asks again whenever the image comes back on screen).
"""

from __future__ import annotations

import asyncio
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from nicheloop.errors import NotReady
from services.deps import GatewayResources
from services.inference import Saliency
from services.limits import within
from services.predict import prepare

VERSION = re.compile(r"^[A-Za-z0-9._-]{1,32}$")  # a version names a cache folder: nothing else may
ALPHA = 0.55  # how much of the strongest evidence's colour covers the image


@dataclass(frozen=True)
class Explained:
    png: bytes
    model_version: str
    class_name: str


def overlay_png(s: Saliency) -> bytes:
    """The pixels with the heat laid over them (transparent where there is no evidence, red-yellow
    where it is strongest), as a PNG."""
    h = s.heat.astype(np.float32) / 255.0
    colour = np.stack([np.ones_like(h), h, np.zeros_like(h)], axis=-1) * 255.0  # red, then yellow
    alpha = (ALPHA * h)[..., None]
    blended = s.pixels.astype(np.float32) * (1 - alpha) + colour * alpha
    out = io.BytesIO()
    Image.fromarray(blended.round().clip(0, 255).astype(np.uint8), "RGB").save(out, format="PNG")
    return out.getvalue()


def _cached(folder: Path, version: str, sha256: str) -> Path:
    if not VERSION.match(version):
        raise NotReady(f"the served version {version!r} cannot name a cache folder; saliency unavailable")
    return folder / version / f"{sha256}.png"


def _read(path: Path) -> tuple[bytes, str] | None:
    """The cached PNG and the class it explains (kept beside it), or None."""
    try:
        return path.read_bytes(), path.with_suffix(".class").read_text()
    except OSError:
        return None


def _write(path: Path, png: bytes, class_name: str) -> None:
    """Both files, each written whole (a reader never sees half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, data in ((path.with_suffix(".class"), class_name.encode()), (path, png)):
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(target)


async def explain(res: GatewayResources, sha256: str) -> Explained:
    """The stored image ``sha256``'s Grad-CAM overlay by the served version (cached).

    Raises:
        NotFound: no such image. NotReady: no model serves. UpstreamTimeout: the blob store or the
        predictor did not answer in time. InvalidInput: a backbone without a spatial feature map.
    """
    s = res.settings
    state = await res.model.served()
    folder = s.home.resolve() / "saliency"
    if state.model_version is not None and (hit := _read(_cached(folder, state.model_version, sha256))):
        return Explained(hit[0], state.model_version, hit[1])
    data = await within(
        asyncio.to_thread(res.blobs.get, sha256),
        s.storage_timeout_s,
        part="blob store",
        knob="storage_timeout_s",
    )
    upload = await asyncio.to_thread(
        prepare, data, state.spec(), max_bytes=s.max_upload_bytes, max_pixels=s.max_image_pixels
    )
    saliency = await within(
        res.predictor.saliency(upload.pixels), s.predict_timeout_s, part="predictor", knob="predict_timeout_s"
    )
    png = await asyncio.to_thread(overlay_png, saliency)
    await asyncio.to_thread(_write, _cached(folder, saliency.model_version, sha256), png, saliency.class_name)
    return Explained(png, saliency.model_version, saliency.class_name)
