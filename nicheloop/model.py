"""The only place that builds models.

A :class:`NicheModel` is a timm backbone with a classification head, the class names it
predicts and the data config its transforms come from (timm's ``resolve_model_data_config``),
so serving and training preprocess images identically.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config

from nicheloop.errors import InvalidInput

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.pt"
META_FILE = "meta.json"


@dataclass
class NicheModel:
    """A classifier plus everything needed to use it on raw images."""

    backbone: str
    class_names: list[str]
    data_config: dict[str, Any]
    net: torch.nn.Module
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def transform(self, training: bool = False) -> Any:
        """timm's transform for this model's data config (train-time augmentation if asked)."""
        cfg = {k: v for k, v in self.data_config.items() if k != "crop_mode"}
        if training:
            return create_transform(**cfg, is_training=True, hflip=0.5, vflip=0.5, scale=(0.6, 1.0))
        return create_transform(**cfg, is_training=False)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> float tensor of shape (N, 3, H, W) ready for :meth:`infer`."""
        tf = self.transform(training=False)
        return torch.stack([tf(img.convert("RGB")) for img in images])

    @torch.inference_mode()
    def infer(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Run the model once.

        Args:
            batch: (N, 3, H, W) preprocessed images.

        Returns:
            probs of shape (N, num_classes) and embeddings of shape (N, D), both float32.
        """
        self.net.eval()
        device = next(self.net.parameters()).device
        feats = self.net.forward_features(batch.to(device))
        emb = self.net.forward_head(feats, pre_logits=True)
        logits = self.net.get_classifier()(emb)
        probs = torch.softmax(logits.float(), dim=1)
        return probs.cpu().numpy().astype(np.float32), emb.float().cpu().numpy().astype(np.float32)


def build_model(
    backbone: str,
    class_names: list[str],
    image_size: int,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
) -> NicheModel:
    """Create a timm backbone with a fresh head for ``class_names``.

    Args:
        backbone: any ``timm.list_models()`` name, optionally with a pretrained tag.
        class_names: labels, in head order; at least two, unique.
        image_size: square input side in pixels (overrides the model's default).
        pretrained: load hub weights (needs network access to the model hub).
        checkpoint_path: a local backbone checkpoint (timm/torch state dict) to start from.

    Raises:
        InvalidInput: on fewer than two or duplicate class names, or an unknown backbone.
    """
    if len(class_names) < 2 or len(set(class_names)) != len(class_names):
        raise InvalidInput(f"need at least two unique class names, got {class_names!r}")
    if not timm.is_model(backbone.split(".")[0]):
        raise InvalidInput(f"unknown timm backbone {backbone!r}; see timm.list_models()")
    net = timm.create_model(
        backbone,
        pretrained=pretrained,
        num_classes=len(class_names),
        checkpoint_path=str(checkpoint_path) if checkpoint_path else "",
    )
    cfg = resolve_model_data_config(net)
    cfg["input_size"] = (3, image_size, image_size)
    cfg["crop_pct"] = 1.0
    return NicheModel(backbone=backbone, class_names=list(class_names), data_config=cfg, net=net)


def margin_uncertainty(probs: np.ndarray) -> np.ndarray:
    """1 - (top1 - top2) per row of an (N, K) probability matrix; in [0, 1]."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    return np.clip(1.0 - (top2[:, 1] - top2[:, 0]), 0.0, 1.0)


def save_model(model: NicheModel, directory: Path) -> Path:
    """Write weights and metadata into ``directory`` (created); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.net.state_dict(), directory / WEIGHTS_FILE)
    meta = {
        "backbone": model.backbone,
        "class_names": model.class_names,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in model.data_config.items()},
        "extra": model.extra,
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    return directory


def load_model(directory: Path, device: str = "cpu") -> NicheModel:
    """Rebuild a model written by :func:`save_model`.

    Raises:
        InvalidInput: if the folder lacks the weights or metadata files.
    """
    meta_path, weights_path = directory / META_FILE, directory / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise InvalidInput(f"{directory} is not a saved nicheloop model (needs {META_FILE} and {WEIGHTS_FILE})")
    meta = json.loads(meta_path.read_text())
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["data_config"].items()}
    net = timm.create_model(meta["backbone"], pretrained=False, num_classes=len(meta["class_names"]))
    net.load_state_dict(torch.load(weights_path, map_location=device, weights_only=True))
    net.to(device).eval()
    return NicheModel(meta["backbone"], meta["class_names"], cfg, net, meta.get("extra", {}))
