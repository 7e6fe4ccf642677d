import threading
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nicheloop.errors import InvalidInput
from nicheloop.model import (
    NicheModel,
    build_model,
    early_modules,
    load_model,
    margin_uncertainty,
    pool_channels,
    save_model,
)
from nicheloop.synthetic import SyntheticStream

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("test_resnet", CLASSES, image_size=32)


def test_infer_shapes_and_probabilities(model) -> None:
    images = [img for img, _ in SyntheticStream(seed=0, size=32).take(5)]
    probs, emb, early = model.infer(model.preprocess(images))
    assert probs.shape == (5, 3) and emb.shape[0] == 5 and emb.ndim == 2
    assert early.shape == (5, 32 + 48)  # test_resnet's layer1 and layer2, pooled
    assert np.isfinite(probs).all() and np.isfinite(emb).all() and np.isfinite(early).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_early_features_are_the_pooled_stride_4_and_8_maps(model) -> None:
    x = model.preprocess([img for img, _ in SyntheticStream(seed=2, size=32).take(2)])
    maps: list[torch.Tensor] = []
    hooks = [
        getattr(model.net, n).register_forward_hook(lambda _m, _i, o: maps.append(o))
        for n in ("layer1", "layer2")
    ]
    out = model.infer(x)
    for h in hooks:
        h.remove()
    want = torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1).numpy()
    np.testing.assert_allclose(out.early, want, rtol=1e-5, atol=1e-6)
    assert not model.net.layer1._forward_hooks  # the hooks are gone after the pass


def test_a_forward_in_another_thread_does_not_leak_into_this_ones_early_features(tmp_path: Path) -> None:
    """A replica runs its answers and its shadow calls in two threads; the early-feature hooks sit
    on the shared modules, so each forward must keep only its own outputs (a batch of 2 once took
    a concurrent batch of 1's: "Sizes of tensors must match")."""
    torch.manual_seed(0)
    model = build_model("test_resnet", CLASSES, image_size=32)
    mine = model.preprocess([img for img, _ in SyntheticStream(seed=3, size=32).take(2)])
    other = model.preprocess([img for img, _ in SyntheticStream(seed=4, size=32).take(1)])
    alone = model.infer(mine)
    features = model.net.forward_features

    def interleaved(x: torch.Tensor) -> torch.Tensor:
        out = features(x)  # this thread's hooks have fired; now another thread's forward runs
        if x.shape[0] == 2:
            thread = threading.Thread(target=model.infer, args=(other,))
            thread.start()
            thread.join()
        return out

    model.net.forward_features = interleaved  # type: ignore[method-assign]
    together = model.infer(mine)
    np.testing.assert_allclose(together.early, alone.early, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("backbone", "kwargs", "want"),
    [
        ("tf_efficientnet_lite0", {}, [("blocks.1", 24), ("blocks.2", 40)]),
        ("convnext_atto", {}, [("stages.0", 40), ("stages.1", 80)]),
        ("vit_small_patch14_dinov2", {"img_size": 56}, [("blocks.0", 384), ("blocks.1", 384)]),
    ],
)
def test_early_modules_pick_the_texture_levels_of_each_family(backbone, kwargs, want) -> None:
    net = timm.create_model(backbone, pretrained=False, **kwargs)
    assert early_modules(net) == want
    x = torch.zeros(2, 3, 56, 56)
    early = NicheModel(backbone, ["a", "b"], {}, net).forward(x).early
    assert early.shape == (2, sum(c for _, c in want))


def test_pool_channels_finds_the_channel_axis() -> None:
    nchw, nhwc, tokens = torch.rand(2, 5, 3, 4), torch.rand(2, 3, 4, 5), torch.rand(2, 7, 5)
    np.testing.assert_allclose(pool_channels(nchw, 5), nchw.mean(dim=(2, 3)))
    np.testing.assert_allclose(pool_channels(nhwc, 5), nhwc.mean(dim=(1, 2)))
    np.testing.assert_allclose(pool_channels((tokens,), 5), tokens.mean(dim=1))


def test_data_config_comes_from_the_model(model) -> None:
    assert model.data_config["input_size"] == (3, 32, 32)
    assert len(model.data_config["mean"]) == 3
    x = model.preprocess([SyntheticStream(size=50).take(1)[0][0]])
    assert x.shape == (1, 3, 32, 32)


def test_save_load_roundtrip_gives_identical_outputs(model, tmp_path: Path) -> None:
    x = model.preprocess([img for img, _ in SyntheticStream(seed=1, size=32).take(3)])
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert loaded.class_names == CLASSES and loaded.data_config == model.data_config
    np.testing.assert_allclose(loaded.infer(x)[0], model.infer(x)[0], atol=1e-6)


def test_load_refuses_a_folder_that_is_no_model(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not a saved nicheloop model"):
        load_model(tmp_path)


@pytest.mark.parametrize("classes", [["only"], ["a", "a"], []])
def test_build_refuses_bad_class_names(classes) -> None:
    with pytest.raises(InvalidInput):
        build_model("test_resnet", classes, image_size=32)


def test_build_refuses_unknown_backbone() -> None:
    with pytest.raises(InvalidInput, match="unknown timm backbone"):
        build_model("no_such_net_v9", CLASSES, image_size=32)


def test_build_loads_a_local_checkpoint(tmp_path: Path) -> None:
    src = build_model("test_resnet", CLASSES, image_size=32)
    torch.save(src.net.state_dict(), tmp_path / "ckpt.pt")
    dst = build_model("test_resnet", CLASSES, image_size=32, weights=f"file:{tmp_path / 'ckpt.pt'}")
    for a, b in zip(src.net.state_dict().values(), dst.net.state_dict().values()):
        assert torch.equal(a, b)


probs_matrices = arrays(
    np.float64, st.tuples(st.integers(1, 8), st.integers(2, 6)), elements=st.floats(0.001, 1.0)
).map(lambda a: a / a.sum(axis=1, keepdims=True))


@given(probs_matrices)
def test_margin_uncertainty_is_bounded(probs: np.ndarray) -> None:
    u = margin_uncertainty(probs)
    assert u.shape == (len(probs),) and ((u >= 0) & (u <= 1)).all()


def test_margin_uncertainty_extremes() -> None:
    np.testing.assert_allclose(margin_uncertainty(np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])), [0.0, 1.0])


def test_a_transformer_is_built_for_the_configured_size_and_reloads(tmp_path: Path) -> None:
    # ViTs (the DINOv2 hub path) size their position embeddings at construction: 28 px = 2x2 patches of 14
    src = build_model("vit_small_patch14_dinov2", CLASSES, image_size=28)
    images = [img for img, _ in SyntheticStream(seed=0, size=40).take(2)]
    batch = src.preprocess(images)
    assert batch.shape[-1] == 28
    again = load_model(save_model(src, tmp_path / "vit"))
    np.testing.assert_allclose(again.infer(batch)[0], src.infer(batch)[0], atol=1e-6)


def test_grad_cam_of_an_average_pooled_linear_head_is_its_class_activation_map() -> None:
    # For global average pooling then a linear layer, the logit's gradient is the class's weights
    # spread evenly over the map, so Grad-CAM must equal CAM: relu(sum_k w_ck A_k), normalised.
    model = build_model("test_resnet", ["a", "b", "c"], image_size=96)
    model.net.eval()
    image = SyntheticStream(seed=2, size=96).take(1)[0][0]
    batch = model.preprocess([image])
    with torch.no_grad():
        feats = model.net.forward_features(batch)  # (1, C, 3, 3): a map to look at
        logits = model.net.forward_head(feats)
    assert feats.shape[-1] > 1
    for c in range(3):
        heat, explained = model.saliency(batch, class_index=c)
        weights = model.net.get_classifier().weight[c].detach()
        cam = torch.relu((weights[:, None, None] * feats[0]).sum(0))[None, None]
        cam = torch.nn.functional.interpolate(cam, size=(96, 96), mode="bilinear", align_corners=False)[0, 0]
        expected = (cam / cam.max()).numpy() if cam.max() > 0 else cam.numpy()
        assert explained == c and heat.shape == (96, 96) and heat.dtype == np.float32
        np.testing.assert_allclose(heat, expected, atol=1e-4)
    assert model.saliency(batch)[1] == int(logits.argmax())  # by default, the class it picks
    with pytest.raises(InvalidInput, match="not one of this model's 3 classes"):
        model.saliency(batch, class_index=3)


def test_grad_cam_refuses_a_backbone_without_a_feature_map() -> None:
    model = build_model("test_vit", ["a", "b"], image_size=32)
    with pytest.raises(InvalidInput, match="convolutional backbone"):
        model.saliency(model.preprocess([SyntheticStream(size=32).take(1)[0][0]]))
