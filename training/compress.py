"""`nicheloop compress`: a registered version compiled for ONNX Runtime, registered as a candidate.

The network is exported to ONNX with the three outputs serving reads (logits, embeddings, early
features) and, at ``int8``, quantised statically (QDQ, weights per channel) with activation ranges
calibrated on the source's own training images. Both versions are evaluated on the same held-out
labels and the figures land with the new version; the ``compression_fidelity`` rollout gate then
lets it serve only within the operator's tolerances (docs/serving.md, "Compressed variant").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader

from nicheloop.blobs import BlobStore
from nicheloop.contracts import CANDIDATE, CHAMPION
from nicheloop.errors import InvalidInput
from nicheloop.model import NicheModel
from nicheloop.registry import MANIFEST, Registry, VersionInfo
from nicheloop.runtime import INPUT, OUTPUTS, OnnxNet
from nicheloop.settings import Settings
from nicheloop.store import Store
from training.data import BlobImageDataset, Example, parse_manifest, replay_buffer, snapshot
from training.evaluate import drift_reference, evaluate
from training.finetune import code_version

log = logging.getLogger(__name__)

Precision = Literal["int8", "fp32"]
CalibrationMethod = Literal["minmax", "entropy", "percentile"]


class CompressConfig(BaseModel):
    """How a version is compiled (saved with the new version as its parameters)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: Precision = Field(
        "int8", description="int8: quantised weights and activations; fp32: the same graph, unquantised."
    )
    calibration_images: int = Field(
        512, ge=1, description="Training images whose activations set the int8 ranges (class-balanced)."
    )
    calibration_method: CalibrationMethod = Field(
        "minmax", description="How ranges are read from them (minmax measured best on NEU, docs/serving.md)."
    )
    opset: int = Field(17, ge=13, description="ONNX opset of the exported graph.")
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class CompressResult:
    version: VersionInfo
    metrics: dict[str, float]


class _Outputs(torch.nn.Module):
    """The model's :meth:`~nicheloop.model.NicheModel.forward` as a module with a tuple of outputs."""

    def __init__(self, model: NicheModel) -> None:
        super().__init__()
        self.model, self.net = model, model.net  # `net` registered: export sees its parameters

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.forward(x))


def export_onnx(model: NicheModel, path: Path, *, opset: int = 17) -> Path:
    """Write the model's network to ``path`` as ONNX: input :data:`~nicheloop.runtime.INPUT`
    (N×3×H×W float32, N free), outputs :data:`~nicheloop.runtime.OUTPUTS`."""
    if model.runtime is not None:
        raise InvalidInput("this model is already compiled; export its source version instead")
    example = torch.zeros(2, *model.data_config["input_size"])
    free_batch = {name: {0: "n"} for name in (INPUT, *OUTPUTS)}
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            _Outputs(model).eval(),  # the exporter restores this mode afterwards: the net stays in eval
            (example,),
            str(path),
            dynamo=False,  # the TorchScript exporter: no onnxscript, and timm's nets trace cleanly
            opset_version=opset,
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_axes=free_batch,
        )
    return path


def shape_nodes(graph: Any) -> list[str]:
    """Names of the nodes of an ONNX graph that compute shapes, not activations.

    TF-style "same" padding (timm's ``tf_*`` models, the default backbone among them) pads by
    amounts computed from the input's shape at run time. Quantising that arithmetic rounds the
    padding (measured on NEU: 1.4 points of accuracy lost, 0.98 against 0.994), so it stays in
    float. A node computes activations when one of its inputs does, a ``Shape`` node never.
    """
    data = {i.name for i in graph.input}
    found = []
    for node in graph.node:  # ONNX keeps nodes in topological order
        if node.op_type != "Shape" and any(name in data for name in node.input):
            data.update(node.output)
        else:
            found.append(node.name)
    return found


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over an iterable of input arrays."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self.batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT: batch}


def quantize_int8(
    fp32: Path, out: Path, calibration: Iterable[np.ndarray], *, method: CalibrationMethod = "minmax"
) -> Path:
    """Quantise an exported graph to int8: QDQ, activations uint8 per tensor, weights int8 per channel,
    ranges from running ``calibration`` (batches of the graph's input); shape arithmetic stays float."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod as Method
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_name(out.stem + ".prepared.onnx")
    # fold BatchNorm and constants first; symbolic shape inference cannot follow "same" padding
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(out),
        _Batches(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(Method, {"minmax": "MinMax"}.get(method, method.title())),
        nodes_to_exclude=shape_nodes(onnx.load(str(prepared)).graph),
    )
    prepared.unlink()
    return out


def compile_model(model: NicheModel, calibration: Iterable[np.ndarray], cfg: CompressConfig) -> NicheModel:
    """The model with its network compiled to ONNX (quantised at ``int8``, from ``calibration``:
    float32 batches of preprocessed images). It shares ``model``'s weights, which it keeps as the
    full-precision source; ``extra["compression"]`` says how it was made."""
    with tempfile.TemporaryDirectory(prefix="nicheloop-compress-") as tmp:
        graph = export_onnx(model, Path(tmp) / "fp32.onnx", opset=cfg.opset)
        if cfg.precision == "int8":
            graph = quantize_int8(graph, Path(tmp) / "int8.onnx", calibration, method=cfg.calibration_method)
        data = graph.read_bytes()
    how = {"runtime": "onnxruntime", **cfg.model_dump(), "graph_bytes": len(data)}
    return dataclasses.replace(
        model,
        extra={**model.extra, "compression": how},
        runtime=OnnxNet(data, threads=torch.get_num_threads()),
    )


def pixel_batches(
    model: NicheModel, blobs: BlobStore, examples: list[Example], *, batch_size: int = 1
) -> Iterator[np.ndarray]:
    """Float32 N×3×H×W batches of ``examples`` through the model's evaluation transform.

    Batches of one by default: every batch then has one shape, which the histogram calibrators need.
    """
    ds = BlobImageDataset(blobs, examples, model.class_names, model.transform(training=False))
    for x, _ in DataLoader(ds, batch_size=batch_size):
        yield x.numpy()


def images_per_second(model: NicheModel, batch: np.ndarray, *, seconds: float = 2.0) -> float:
    """Forward passes of ``batch`` by ``model`` per second of wall time, in images (after one warm-up)."""
    x = torch.from_numpy(batch)
    model.infer(x)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.infer(x)
        done += len(batch)
    return done / (time.perf_counter() - start)


def calibration_set(examples: tuple[Example, ...] | list[Example], count: int, seed: int) -> list[Example]:
    """About ``count`` of ``examples``, the same number of every class (stable from run to run)."""
    classes = {e.label for e in examples}
    return replay_buffer(examples, max(1, math.ceil(count / max(1, len(classes)))), seed)


def compress(settings: Settings, cfg: CompressConfig, *, version: str | None = None) -> CompressResult:
    """Compile registered ``version`` (default: the champion), evaluate it against its source on the
    labeled store's held-out side, and register it as ``candidate`` with lineage to its source.

    Raises:
        InvalidInput: the version is already compressed, or there are no held-out labels.
        NotFound / NotReady: no such version, or no champion.
    """
    registry = Registry(settings.tracking_uri, settings.model_name)
    info = registry.resolve(CHAMPION) if version is None else registry.version(version)
    if "compressed_from" in info.tags:
        raise InvalidInput(
            f"version {info.version} is already compressed (from version {info.tags['compressed_from']}); "
            f"compress version {info.tags['compressed_from']} instead"
        )
    source = registry.load(info.version).model
    manifest = registry.artifact_text(info.run_id, MANIFEST)
    snap = snapshot(Store(settings.db_url))
    held_out = snap.holdout
    if not held_out:
        raise InvalidInput("the labeled store has no held-out labels to compare the two versions on")
    # ranges from the images its weights learnt from; the store's training side if no manifest says
    trained_on = parse_manifest(manifest).train if manifest else ()
    blobs = BlobStore(str(settings.blob_dir))
    chosen = calibration_set(trained_on or snap.train, cfg.calibration_images, cfg.seed)
    if cfg.precision == "int8" and not chosen:
        raise InvalidInput("no training images to set the int8 ranges from; label some, or use fp32")
    log.info("compiling version %s to %s on %d calibration images", info.version, cfg.precision, len(chosen))
    compiled = compile_model(source, pixel_batches(source, blobs, chosen), cfg)
    before, _ = evaluate(source, blobs, held_out)
    after, reference = evaluate(compiled, blobs, held_out)
    reference = drift_reference(reference, snap, compiled.class_names)  # as train() does
    probe = next(pixel_batches(source, blobs, chosen, batch_size=settings.batch_max_size))
    speed = {
        "img_per_s": images_per_second(compiled, probe),
        "parent_img_per_s": images_per_second(source, probe),
    }
    metrics = (
        {f"holdout_{k}": v for k, v in after.metrics.items()}
        | {f"parent_holdout_{k}": v for k, v in before.metrics.items()}
        | {
            "accuracy_drop_points": 100.0 * (before.metrics["accuracy"] - after.metrics["accuracy"]),
            "ece_increase": after.metrics["ece"] - before.metrics["ece"],
            "calibration_images": float(len(chosen)),
            "speedup": speed["img_per_s"] / speed["parent_img_per_s"],
            **speed,
        }
    )
    lineage = {
        "parent_version": info.version,
        "compressed_from": info.version,
        "runtime": "onnxruntime",
        "precision": cfg.precision,
        "backbone": source.backbone,
        "weights": f"mlflow:{info.version}",
        "start_weights": info.tags.get("start_weights", "{}"),
        "snapshot_digest": info.tags.get("snapshot_digest", "none"),  # the data its weights learnt from
        "code_version": code_version(),
        "compress_config": cfg.model_dump_json(),
    }
    confusion = {"classes": source.class_names, "matrix": after.confusion}
    artifacts = {"confusion_matrix.json": json.dumps(confusion)}
    if manifest:
        artifacts[MANIFEST] = manifest  # training continues from these weights: replay their labels
    registered = registry.register(
        compiled,
        reference,
        params=cfg.model_dump(),
        metrics=metrics,
        lineage=lineage,
        alias=CANDIDATE,
        artifacts=artifacts,
    )
    return CompressResult(registered, metrics)
