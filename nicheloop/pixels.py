"""What a model sees, in two halves: geometry (resize, crop) to uint8 pixels, then normalisation.

A model's evaluation transform (timm's, from its data config) is split where the image becomes a
tensor: :func:`to_pixels` runs the PIL half and gives a compact ``(H, W, 3)`` uint8 array (49 KB
for 128 px, whatever the upload's size), :func:`normalise` runs the tensor half on a whole batch.
Serving does the first on the gateway and ships the array; the predictor does the second. Both
halves together equal the evaluation transform exactly, so serving and training cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torchvision import transforms as T

TENSOR_STEPS = ("ToTensor", "MaybeToTensor", "PILToTensor", "MaybePILToTensor")


@dataclass(frozen=True)
class InputSpec:
    """The parts of a data config that decide a model's input pixels (hashable, JSON-able)."""

    input_size: tuple[int, int, int]
    interpolation: str
    crop_pct: float
    crop_mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, data_config: dict[str, Any]) -> InputSpec:
        """The spec of a timm data config (``NicheModel.data_config``)."""
        c = data_config
        return cls(
            input_size=tuple(int(v) for v in c["input_size"]),  # type: ignore[arg-type]
            interpolation=str(c.get("interpolation", "bilinear")),
            crop_pct=float(c.get("crop_pct", 1.0)),
            crop_mode=str(c.get("crop_mode", "center")),
            mean=tuple(float(v) for v in c["mean"]),
            std=tuple(float(v) for v in c["std"]),
        )

    @cached_property
    def key(self) -> str:
        """A short digest: pixels made for one spec are only fed to a model with the same key.
        Computed once per spec (it is checked for every image served)."""
        blob = json.dumps(self._fields(), sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def config(self) -> dict[str, Any]:
        """Keyword arguments of timm's ``create_transform``."""
        return {k: v for k, v in self._fields().items() if k != "crop_mode"}

    def _fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@lru_cache(maxsize=16)
def _halves(spec: InputSpec) -> tuple[T.Compose, torch.Tensor, torch.Tensor]:
    """(the PIL steps of the evaluation transform, mean and std shaped (1, 3, 1, 1))."""
    steps = create_transform(**spec.config(), is_training=False).transforms
    cut = next(i for i, step in enumerate(steps) if type(step).__name__ in TENSOR_STEPS)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    return T.Compose(steps[:cut]), mean, std


def to_pixels(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """The model's input geometry of one image (converted to RGB): ``(H, W, 3)`` uint8, C-contiguous."""
    img = img if img.mode == "RGB" else img.convert("RGB")
    geometry, _, _ = _halves(spec)
    return np.ascontiguousarray(np.asarray(geometry(img), dtype=np.uint8))


def normalise(pixels: Sequence[np.ndarray] | np.ndarray, spec: InputSpec) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` (or a list of ``(H, W, 3)``) -> float32 ``(N, 3, H, W)``, as
    ToTensor then Normalize compute it (divide by 255, subtract the mean, divide by the std)."""
    batch = np.stack(pixels) if not isinstance(pixels, np.ndarray) else pixels
    _, mean, std = _halves(spec)
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255)
    return x.sub_(mean).div_(std).contiguous()
