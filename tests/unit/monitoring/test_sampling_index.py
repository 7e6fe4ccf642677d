"""The covered-set FAISS index: exact search, idempotent adds, the HNSW switch, persistence."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from monitoring.index import EmbeddingIndex


def clustered(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d))
    return (centres[rng.integers(0, 20, n)] + rng.normal(0, 0.1, (n, d))).astype(np.float32)


def test_nearest_is_the_exact_squared_distance_between_prepared_vectors() -> None:
    x, q = clustered(200), clustered(30, seed=1)
    index = EmbeddingIndex(32, center=x.mean(axis=0))
    index.add(index.prepare(x), [f"k{i}" for i in range(200)])
    xp, qp = index.prepare(x), index.prepare(q)
    brute = ((qp[:, None, :] - xp[None, :, :]) ** 2).sum(-1).min(axis=1)
    np.testing.assert_allclose(index.nearest(qp), brute, atol=1e-4)
    assert np.allclose(np.linalg.norm(xp, axis=1), 1.0, atol=1e-5)


def test_adds_are_idempotent_by_key_and_an_empty_index_is_far_from_everything() -> None:
    index = EmbeddingIndex(32)
    assert np.all(index.nearest(index.prepare(clustered(3))) == 4.0)
    x = index.prepare(clustered(10))
    assert index.add(x, [f"k{i}" for i in range(10)]) == 10
    assert index.add(x, [f"k{i}" for i in range(10)]) == 0  # a replayed event
    assert index.add(x[:2], ["new", "new"]) == 1 and len(index) == 11 and "new" in index
    with pytest.raises(ValueError, match="expected"):
        index.add(x[:2], ["only-one"])


def test_past_the_threshold_it_turns_hnsw_with_measured_recall_and_memory(tmp_path: Path) -> None:
    x, queries = np.split(clustered(3100), [3000])  # queries from the same distribution
    index = EmbeddingIndex(32, approx_after=1000)
    index.add(index.prepare(x[:1000]), [f"k{i}" for i in range(1000)])
    exact_memory = index.memory_bytes()
    assert not index.approximate and exact_memory == 1000 * 32 * 4
    index.add(index.prepare(x[1000:]), [f"k{i}" for i in range(1000, 3000)])
    assert index.approximate and isinstance(index.index, faiss.IndexHNSWFlat)
    assert index.recall is not None and index.recall >= 0.9
    assert index.memory_bytes() > 3000 * 32 * 4  # vectors plus the graph
    q = index.prepare(queries)
    _, exact = faiss.knn(q, index.prepare(x), 1)
    true = ((q - index.prepare(x)[exact[:, 0]]) ** 2).sum(1)
    approx = index.nearest(q)
    assert np.all(approx >= true - 1e-4)  # never nearer than the true nearest
    assert np.mean(approx <= true * 1.1 + 1e-4) >= 0.95  # novelty off by < 10 % almost always


def test_save_and_load_round_trip_keeps_keys_center_and_answers(tmp_path: Path) -> None:
    x = clustered(1500)
    index = EmbeddingIndex(32, approx_after=1000, center=x.mean(axis=0))
    index.add(index.prepare(x), [f"k{i}" for i in range(1500)])
    path = index.save(tmp_path / "sampling" / "covered.npz")
    again = EmbeddingIndex.load(path)
    q = clustered(20, seed=3)
    assert again.keys == index.keys and again.approximate and again.recall is not None
    np.testing.assert_allclose(again.prepare(q), index.prepare(q))
    np.testing.assert_allclose(again.nearest(again.prepare(q)), index.nearest(index.prepare(q)), atol=1e-5)
    assert again.add(again.prepare(x[:5]), [f"k{i}" for i in range(5)]) == 0
    assert not list(path.parent.glob(".*tmp"))  # the temporary file was renamed into place


def test_a_corrupt_index_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    bad = tmp_path / "covered.npz"
    bad.write_bytes(b"not an index")
    with pytest.raises(ValueError, match="delete it to rebuild"):
        EmbeddingIndex.load(bad)
    with pytest.raises(ValueError, match="center"):
        EmbeddingIndex(4, center=np.zeros(3))
