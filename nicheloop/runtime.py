"""A model's network compiled for a faster CPU runtime: an ONNX graph run by ONNX Runtime.

`nicheloop compress` (training/compress.py) writes the graph; serving runs it in place of the
PyTorch network through :meth:`nicheloop.model.NicheModel.forward`, which knows nothing else of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ONNX_FILE = "model.onnx"
INPUT = "pixels"
OUTPUTS = ("logits", "embeddings", "early")  # the fields of nicheloop.model.Forward, in order


class OnnxNet:
    """An ONNX graph (input ``pixels`` N×3×H×W float32; outputs :data:`OUTPUTS`) on ONNX Runtime's CPU.

    Immutable once built: copies share the session (ONNX Runtime runs a session from many threads),
    and pickling carries the graph's bytes, not the session.
    """

    def __init__(self, graph: bytes, *, threads: int = 1) -> None:
        import onnxruntime as ort  # only processes that serve a compressed version pay for it

        self.graph, self.threads = graph, threads
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        # no spinning between batches: on a small machine the gateway needs those cycles
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits, embeddings, early) float32 arrays for a float32 N×3×H×W batch."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        logits, embeddings, early = self.session.run(list(OUTPUTS), {INPUT: x})
        return logits, embeddings, early

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxNet:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.graph, self.threads))


def _rebuild(graph: bytes, threads: int) -> OnnxNet:
    return OnnxNet(graph, threads=threads)
