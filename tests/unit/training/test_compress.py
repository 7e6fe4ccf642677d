"""The compiled network: ONNX export that computes what the PyTorch network does, int8 quantisation
that leaves TF-style padding arithmetic in float, and a compiled model that saves, loads and copies."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from nicheloop.errors import InvalidInput
from nicheloop.model import NicheModel, build_model, load_model, save_model
from nicheloop.runtime import ONNX_FILE, OnnxNet
from nicheloop.synthetic import SyntheticStream
from training.compress import (
    CompressConfig,
    calibration_set,
    compile_model,
    export_onnx,
    quantize_int8,
    shape_nodes,
)
from training.data import Example

CLASSES = ["a", "b", "c"]


def _batches(model: NicheModel, count: int, seed: int) -> list[np.ndarray]:
    images = [img for img, _ in SyntheticStream(seed=seed, size=64).take(count)]
    return [model.preprocess([img]).numpy() for img in images]


@pytest.fixture(scope="module")
def lite() -> NicheModel:
    """The default backbone (TF "same" padding) from its ImageNet weights, at 64 px."""
    torch.manual_seed(0)
    model = build_model("tf_efficientnet_lite0", CLASSES, 64, weights="package")
    model.net.eval()
    return model


@pytest.fixture(scope="module")
def fp32_graph(lite: NicheModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(lite, tmp_path_factory.mktemp("onnx") / "fp32.onnx")


@pytest.mark.parametrize("n", [1, 3])
def test_the_exported_graph_computes_the_three_outputs_at_any_batch_size(
    lite: NicheModel, fp32_graph: Path, n: int
) -> None:
    x = torch.from_numpy(np.concatenate(_batches(lite, n, seed=n)))
    want = lite.forward(x)
    got = OnnxNet(fp32_graph.read_bytes()).run(x.numpy())
    for name, w, g in zip(want._fields, want, got):
        assert g.shape == tuple(w.shape), name
        np.testing.assert_allclose(g, w.detach().numpy(), rtol=1e-4, atol=1e-4, err_msg=name)


def test_padding_arithmetic_is_found_and_stays_float_in_the_int8_graph(
    lite: NicheModel, fp32_graph: Path, tmp_path: Path
) -> None:
    graph = onnx.load(str(fp32_graph)).graph
    found = set(shape_nodes(graph))
    ops = {n.name: n.op_type for n in graph.node}
    assert {n for n, op in ops.items() if op == "Shape"} <= found
    assert {"Ceil", "Div"} <= {ops[n] for n in found}
    assert not {n for n in found if ops[n] in ("Conv", "Gemm", "Pad")}  # the activations' path is not
    out = quantize_int8(fp32_graph, tmp_path / "int8.onnx", _batches(lite, 8, seed=1))
    q = onnx.load(str(out)).graph
    producer = {o: n.name for n in q.node for o in n.output}
    quantize = [n for n in q.node if n.op_type == "QuantizeLinear"]
    assert len(quantize) > 20  # the convolutions' inputs are quantised ...
    assert not [n.name for n in quantize if producer.get(n.input[0]) in found]  # ... the padding amounts not


def test_the_int8_graph_stays_close_to_the_network(
    lite: NicheModel, fp32_graph: Path, tmp_path: Path
) -> None:
    """The recipe's int8 arithmetic (ranges, per-channel weights, what stays float) keeps the
    embeddings close. It is read with ONNX Runtime's basic optimisations, which run each
    quantise-dequantise pair as written: the fused int8 kernels' own precision depends on the CPU
    (on x86 without VNNI it is lower, docs/serving.md), and the compression gate judges what a
    compiled version may serve on the hold-out (tests/unit/rollout/test_compression_gate.py)."""
    import onnxruntime as ort

    out = quantize_int8(fp32_graph, tmp_path / "int8.onnx", _batches(lite, 16, seed=1))
    x = np.concatenate(_batches(lite, 16, seed=9))
    want = lite.forward(torch.from_numpy(x)).embeddings.detach().numpy()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[1]
    cosine = (want * got).sum(1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1))
    assert cosine.min() > 0.95, cosine
    assert OnnxNet(out.read_bytes()).run(x)[1].shape == want.shape  # and it serves as compiled


@pytest.fixture(scope="module")
def small() -> NicheModel:
    torch.manual_seed(1)
    model = build_model("test_resnet", CLASSES, 32)
    model.net.eval()
    return model


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_a_compiled_model_serves_through_forward_and_survives_save_load_copy(
    small: NicheModel, precision: str, tmp_path: Path
) -> None:
    cal = [small.preprocess([img]).numpy() for img, _ in SyntheticStream(seed=3, size=32).take(8)]
    compiled = compile_model(small, cal, CompressConfig(precision=precision))  # type: ignore[arg-type]
    assert small.runtime is None and compiled.runtime is not None and compiled.net is small.net
    assert compiled.extra["compression"]["precision"] == precision
    x = torch.from_numpy(np.concatenate(cal))
    probs = compiled.infer(x).probs
    if precision == "fp32":
        np.testing.assert_allclose(probs, small.infer(x).probs, atol=1e-5)
    loaded = load_model(save_model(compiled, tmp_path / "m"))
    assert (tmp_path / "m" / ONNX_FILE).is_file() and loaded.runtime is not None
    np.testing.assert_array_equal(loaded.infer(x).probs, probs)
    assert loaded.extra["compression"] == compiled.extra["compression"]
    for twin in (copy.deepcopy(compiled), pickle.loads(pickle.dumps(compiled))):
        assert twin.runtime is not None
        np.testing.assert_array_equal(twin.infer(x).probs, probs)
    with pytest.raises(InvalidInput, match="already compiled"):
        export_onnx(compiled, tmp_path / "again.onnx")
    plain = load_model(save_model(small, tmp_path / "plain"))
    assert plain.runtime is None and not (tmp_path / "plain" / ONNX_FILE).exists()


def test_calibration_images_are_class_balanced_and_stable() -> None:
    examples = [Example(f"{i:064x}", "a" if i % 4 else "b") for i in range(100)]  # 75 a, 25 b
    chosen = calibration_set(examples, 20, seed=0)
    assert sorted(e.label for e in chosen) == ["a"] * 10 + ["b"] * 10
    assert calibration_set(list(reversed(examples)), 20, seed=0) == chosen
    assert len(calibration_set(examples, 1000, seed=0)) == 100
