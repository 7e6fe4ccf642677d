"""The covered-set index: embeddings of labeled and queued images, for novelty and near-duplicates.

Exact (``IndexFlatL2``) while small; past ``approx_after`` vectors it is rebuilt once as HNSW
(``IndexHNSWFlat``: incremental adds, no training), and its recall@1 against exact search is
measured on a sample at that moment and whenever it is loaded. Keys (prediction ids) make adds
idempotent, so a replayed event is not indexed twice. The whole index persists as one ``.npz``
file, written to a temporary name and renamed, so a crash never leaves half an index.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from monitoring.strategies import normalize

log = logging.getLogger(__name__)

HNSW_M = 32
RECALL_QUERIES = 500


class EmbeddingIndex:
    """Unit-normalised embeddings with string keys; squared-L2 nearest-neighbour search.

    Raw embeddings go through :meth:`prepare` (minus ``center``, then unit length) before they
    are added or searched: pre-logits features share a large common component, and cosine
    distances between centred vectors tell images apart far better (docs/sampling.md).

    Args:
        dim: embedding dimension D.
        approx_after: size past which the exact index is replaced by HNSW.
        ef_search: HNSW search breadth (higher: better recall, slower).
        center: (D,) vector subtracted from every raw embedding, e.g. the mean of the model
            version's reference embeddings; None for no centring.
    """

    def __init__(
        self, dim: int, approx_after: int = 50_000, ef_search: int = 128, center: np.ndarray | None = None
    ) -> None:
        if dim <= 0 or approx_after <= 0:
            raise ValueError(f"need dim > 0 and approx_after > 0, got dim={dim}, approx_after={approx_after}")
        if center is not None and np.shape(center) != (dim,):
            raise ValueError(f"center must have shape ({dim},), got {np.shape(center)}")
        self.dim, self.approx_after, self.ef_search = dim, approx_after, ef_search
        self.center = np.zeros(dim, np.float32) if center is None else np.asarray(center, np.float32)
        self.index: Any = faiss.IndexFlatL2(dim)  # flat or HNSW; faiss's SWIG types hide .hnsw
        self.keys: list[str] = []
        self._key_set: set[str] = set()
        self.recall: float | None = None  # recall@1 of the approximate index; None while exact

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def approximate(self) -> bool:
        return not isinstance(self.index, faiss.IndexFlat)

    def __contains__(self, key: str) -> bool:
        return key in self._key_set

    def prepare(self, raw: np.ndarray) -> np.ndarray:
        """(n, D) raw embeddings → centred unit rows, ready for :meth:`add`, :meth:`nearest` and a Pool."""
        return normalize(np.atleast_2d(np.asarray(raw, np.float32)) - self.center)

    def add(self, vectors: np.ndarray, keys: list[str]) -> int:
        """Add (n, D) prepared vectors under ``keys``; keys already present are skipped. Returns how
        many were new.

        Raises:
            ValueError: on a dimension or length mismatch.
        """
        vectors = np.atleast_2d(vectors)
        if vectors.shape[1] != self.dim or len(vectors) != len(keys):
            raise ValueError(f"expected ({len(keys)}, {self.dim}) vectors, got {vectors.shape}")
        fresh, batch = [], set()
        for i, key in enumerate(keys):
            if key not in self._key_set and key not in batch:
                fresh.append(i)
                batch.add(key)
        if not fresh:
            return 0
        self.index.add(normalize(vectors[fresh]))
        self.keys.extend(keys[i] for i in fresh)
        self._key_set |= batch
        if not self.approximate and len(self) > self.approx_after:
            self._to_hnsw()
        return len(fresh)

    def nearest(self, queries: np.ndarray) -> np.ndarray:
        """Squared L2 distance of each prepared query to its nearest indexed vector, shape (n,);
        4.0 if empty."""
        if len(self) == 0:
            return np.full(len(queries), 4.0, dtype=np.float32)
        dist, _ = self.index.search(normalize(queries), 1)
        return np.clip(dist[:, 0], 0.0, 4.0)

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` nearest indexed keys of each prepared query, nearest first, with their squared
        L2 distance (0: the same direction, 4: opposite)."""
        if len(self) == 0 or k <= 0:
            return [[] for _ in range(len(queries))]
        dist, idx = self.index.search(normalize(np.atleast_2d(queries)), min(k, len(self)))
        return [
            [(self.keys[j], float(np.clip(d, 0.0, 4.0))) for d, j in zip(row_d, row_i) if j >= 0]
            for row_d, row_i in zip(dist, idx)
        ]

    def memory_bytes(self) -> int:
        """Bytes the index holds: vectors, plus HNSW's neighbour lists once approximate."""
        vectors = len(self) * self.dim * 4
        if not self.approximate:
            return vectors
        links = faiss.vector_to_array(self.index.hnsw.neighbors).nbytes
        return vectors + links + faiss.vector_to_array(self.index.hnsw.offsets).nbytes

    def _vectors(self) -> np.ndarray:
        return self.index.reconstruct_n(0, len(self)) if len(self) else np.zeros((0, self.dim), np.float32)

    def _to_hnsw(self) -> None:
        vectors = self._vectors()
        hnsw = faiss.IndexHNSWFlat(self.dim, HNSW_M)
        hnsw.hnsw.efSearch = self.ef_search
        hnsw.add(vectors)
        self.index = hnsw
        self.recall = self.measure_recall(vectors)
        log.info("covered-set index now HNSW at %d vectors; recall@1 vs exact %.3f", len(self), self.recall)

    def measure_recall(
        self, vectors: np.ndarray | None = None, queries: int = RECALL_QUERIES, seed: int = 0
    ) -> float:
        """Recall@1 of this index against exact search, on perturbed copies of stored vectors."""
        vectors = self._vectors() if vectors is None else vectors
        if len(vectors) == 0:
            return 1.0
        rng = np.random.default_rng(seed)
        picked = vectors[rng.choice(len(vectors), min(queries, len(vectors)), replace=False)]
        q = normalize(picked + rng.normal(0, 0.05, picked.shape).astype(np.float32))
        _, exact = faiss.knn(q, vectors, 1)
        _, approx = self.index.search(q, 1)
        return float(np.mean(exact[:, 0] == approx[:, 0]))

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: Path) -> Path:
        """Write the index and its keys to ``path`` (one .npz) atomically; returns ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                index=faiss.serialize_index(self.index),
                keys=np.asarray(self.keys, dtype=str),
                meta=np.asarray([self.dim, self.approx_after, self.ef_search]),
                center=self.center,
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path) -> EmbeddingIndex:
        """Read an index written by :meth:`save`.

        Raises:
            ValueError: if the file is not a saved index (the message names it; delete it to rebuild).
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                dim, approx_after, ef_search = (int(v) for v in data["meta"])
                index, keys = faiss.deserialize_index(data["index"]), [str(k) for k in data["keys"]]
                center = np.asarray(data["center"], np.float32)
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise ValueError(
                f"{path} is not a readable covered-set index ({exc}); delete it to rebuild"
            ) from exc
        out = cls(dim, approx_after, ef_search, center)
        out.index, out.keys, out._key_set = index, keys, set(keys)
        if out.approximate:
            out.index.hnsw.efSearch = ef_search
            out.recall = out.measure_recall()
        return out
