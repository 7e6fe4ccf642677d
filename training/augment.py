"""Training augmentation with one intensity knob, chosen so that a defect stays the same defect.

Allowed: mild crops that keep most of the image (a defect is rarely in one corner only), flips
and right-angle turns (surface textures have no up or down), brightness and contrast jitter
(lighting varies between lines) and a slight blur (focus varies). Left out on purpose: hue and
saturation shifts (colour can be the defect), random erasing and cutout (they can erase the
defect itself), strong crops and elastic warps (they change a defect's shape).
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2

from nicheloop.model import eval_transform

_INTERP = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}


class _RightAngle(v2.Transform):
    """Turn by 0, 90, 180 or 270 degrees, each equally likely."""

    def __init__(self) -> None:
        super().__init__()
        self.choices = [v2.RandomRotation((a, a)) for a in (0, 90, 180, 270)]

    def forward(self, *inputs: Any) -> Any:
        return v2.RandomChoice(self.choices)(*inputs)


def train_transform(data_config: dict[str, Any], intensity: float) -> v2.Compose:
    """PIL image -> normalised float tensor (3, H, W), augmented with strength ``intensity`` in [0, 1].

    At intensity 0 it equals the evaluation transform (resize, centre crop, normalise).
    """
    size = tuple(data_config["input_size"][-2:])
    interp = _INTERP.get(str(data_config.get("interpolation", "bilinear")), v2.InterpolationMode.BILINEAR)
    i = float(intensity)
    if i <= 0:
        return v2.Compose([v2.RGB(), eval_transform(data_config)])
    ops: list[Any] = [v2.ToImage(), v2.RGB()]
    if i > 0:
        ops += [
            v2.RandomResizedCrop(
                size,
                scale=(1 - 0.4 * i, 1.0),
                ratio=(1 - 0.2 * i, 1 + 0.2 * i),
                interpolation=interp,
                antialias=True,
            ),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.5),
            v2.RandomApply([_RightAngle()], p=i),
            v2.ColorJitter(brightness=0.3 * i, contrast=0.3 * i),
            v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 0.1 + 0.9 * i))], p=0.2 * i),
        ]
    ops += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(data_config["mean"]), std=list(data_config["std"])),
    ]
    return v2.Compose(ops)


def ssl_transform(data_config: dict[str, Any]) -> v2.Compose:
    """One view for self-supervised pretraining: the SimSiam recipe's crops, flips, jitter and blur,
    without hue or saturation changes (grey-level surfaces)."""
    size = tuple(data_config["input_size"][-2:])
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RGB(),
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.5),
            v2.RandomApply([_RightAngle()], p=0.5),
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.5),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(data_config["mean"]), std=list(data_config["std"])),
        ]
    )
