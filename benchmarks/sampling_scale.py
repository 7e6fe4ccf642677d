"""Goal: the default sampler picks 1,000 of 100,000 embeddings in ≤ 10 s and of 1,000,000 in ≤ 120 s
(dimension 512, 2 cores), never holding an n×n matrix.

Embeddings are a seeded mixture of 64 Gaussian clusters on the unit sphere (real embeddings
cluster; uniform noise is HNSW's worst case and no model's output); class probabilities come
from a random linear head over them. The covered set is 10,000 labeled embeddings (exact index).
Selection time covers everything :func:`monitoring.selection.select_batch` does: uncertainty,
FAISS novelty, clustering for diversity, class quotas, duplicate suppression.

It also measures the covered-set index lifecycle: 100,000 vectors pushed past the exact→HNSW
threshold, recall@1 against exact search and memory.

Last line: JSON with select_1k_from_100k_s, select_1k_from_1m_s, peak_rss_mb and the index figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import faiss
import numpy as np

from monitoring.index import EmbeddingIndex
from monitoring.selection import select_batch
from monitoring.strategies import Context, Pool, normalize

DIM, CLASSES, CLUSTERS, COVERED = 512, 6, 64, 10_000


def embeddings(n: int, rng: np.random.Generator, centres: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    """(n, DIM) unit float32 rows around ``centres``, generated in chunks (no float64 copy of it all)."""
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        rows = (
            centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, DIM), dtype=np.float32) * 0.04
        )
        out[start : start + m] = normalize(rows)
    return out


def probabilities(x: np.ndarray, head: np.ndarray) -> np.ndarray:
    logits = x @ head
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_selection(
    n: int, k: int, rng: np.random.Generator, centres: np.ndarray, head: np.ndarray, covered: EmbeddingIndex
) -> tuple[float, int]:
    x = embeddings(n, rng, centres)
    pool = Pool(probabilities(x, head), x)
    start = time.perf_counter()
    sel = select_batch(pool, k, Context(covered=covered, seed=0), "default")
    return time.perf_counter() - start, len(sel.indices)


def index_lifecycle(
    rng: np.random.Generator, centres: np.ndarray, n: int, approx_after: int
) -> dict[str, float]:
    index = EmbeddingIndex(DIM, approx_after=approx_after)
    start = time.perf_counter()
    for s in range(0, n, 10_000):
        index.add(embeddings(10_000, rng, centres), [f"v{i}" for i in range(s, s + 10_000)])
    build = time.perf_counter() - start
    queries = embeddings(2_000, rng, centres)
    start = time.perf_counter()
    index.nearest(queries)
    search = time.perf_counter() - start
    return {
        "index_vectors": len(index),
        "index_approximate": index.approximate,
        "index_recall_at_1": round(index.recall or 1.0, 4),
        "index_memory_mb": round(index.memory_bytes() / 2**20, 1),
        "index_build_s": round(build, 2),
        "index_search_ms_per_query": round(1000 * search / len(queries), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-n", type=int, default=1_000_000, help="largest pool (default 1,000,000)")
    args = parser.parse_args()
    faiss.omp_set_num_threads(2)
    rng = np.random.default_rng(0)
    centres = normalize(rng.standard_normal((CLUSTERS, DIM), dtype=np.float32))
    head = rng.standard_normal((DIM, CLASSES), dtype=np.float32) * 8.0
    covered = EmbeddingIndex(DIM)
    covered.add(embeddings(COVERED, rng, centres), [f"c{i}" for i in range(COVERED)])
    figures: dict[str, object] = {"benchmark": "sampling_scale", "dim": DIM, "covered": COVERED}
    for n, key in ((100_000, "select_1k_from_100k_s"), (args.max_n, "select_1k_from_1m_s")):
        seconds, chosen = time_selection(n, 1_000, rng, centres, head, covered)
        figures[key], figures[f"{key}_chosen"] = round(seconds, 2), chosen
        print(f"n={n}: {seconds:.2f}s for {chosen} items; peak RSS {peak_rss_mb():.0f} MB", flush=True)
    figures["pool_embeddings_mb"] = round(args.max_n * DIM * 4 / 2**20, 1)
    figures["peak_rss_mb"] = round(peak_rss_mb(), 1)
    figures.update(index_lifecycle(rng, centres, 100_000, approx_after=50_000))
    figures["goals_met"] = figures["select_1k_from_100k_s"] <= 10 and figures["select_1k_from_1m_s"] <= 120
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
