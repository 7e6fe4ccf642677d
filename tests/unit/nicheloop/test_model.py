from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nicheloop.errors import InvalidInput
from nicheloop.model import build_model, load_model, margin_uncertainty, save_model
from nicheloop.synthetic import SyntheticStream

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("test_resnet", CLASSES, image_size=32)


def test_infer_shapes_and_probabilities(model) -> None:
    images = [img for img, _ in SyntheticStream(seed=0, size=32).take(5)]
    probs, emb = model.infer(model.preprocess(images))
    assert probs.shape == (5, 3) and emb.shape[0] == 5 and emb.ndim == 2
    assert np.isfinite(probs).all() and np.isfinite(emb).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


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
