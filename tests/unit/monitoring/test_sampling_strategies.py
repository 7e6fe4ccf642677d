"""The scoring maths of the active sampler: property tests (hypothesis) and selection behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from monitoring.index import EmbeddingIndex
from monitoring.selection import select_batch
from monitoring.strategies import (
    STRATEGIES,
    Context,
    Pool,
    calibrate,
    entropy,
    k_center_greedy,
    least_confidence,
    margin,
    rank,
    strategy,
)

scores = arrays(
    np.float64,
    st.integers(0, 60),
    elements=st.one_of(st.floats(-1e6, 1e6), st.just(np.nan), st.just(np.inf), st.just(-np.inf)),
)


@st.composite
def prob_matrices(draw: st.DrawFn) -> np.ndarray:
    n, k = draw(st.integers(1, 30)), draw(st.integers(2, 8))
    raw = draw(arrays(np.float64, (n, k), elements=st.floats(1e-3, 1.0)))
    return raw / raw.sum(axis=1, keepdims=True)


@given(scores, st.one_of(st.none(), st.integers(0, 80)))
def test_rank_orders_finite_scores_and_never_ranks_the_others(values: np.ndarray, limit: int | None) -> None:
    order = rank(values, limit)
    finite = np.flatnonzero(np.isfinite(values))
    assert len(order) == (len(finite) if limit is None else min(limit, len(finite)))
    assert len(set(order.tolist())) == len(order) and set(order.tolist()) <= set(finite.tolist())
    assert np.all(np.diff(values[order]) <= 0)  # best first
    if len(order):  # what is left out is never better than what is in
        left = np.setdiff1d(finite, order)
        assert not len(left) or values[left].max() <= values[order].min()


@given(prob_matrices())
def test_uncertainties_lie_in_the_unit_interval_and_ignore_class_order(p: np.ndarray) -> None:
    perm = np.random.default_rng(0).permutation(p.shape[1])
    for fn in (least_confidence, margin, entropy):
        u = fn(p)
        assert u.shape == (len(p),) and np.all((u >= -1e-9) & (u <= 1 + 1e-9))
        np.testing.assert_allclose(fn(p[:, perm]), u, atol=1e-9)


@given(st.integers(2, 10))
def test_uncertainty_is_zero_when_sure_and_highest_when_uniform(k: int) -> None:
    sure, uniform = np.eye(k)[:1], np.full((1, k), 1.0 / k)
    for fn in (least_confidence, margin, entropy):
        assert fn(sure)[0] == pytest.approx(0.0, abs=1e-6)
        assert fn(uniform)[0] > fn(np.array([[0.9] + [0.1 / (k - 1)] * (k - 1)]))[0]
    assert margin(uniform)[0] == pytest.approx(1.0) and entropy(uniform)[0] == pytest.approx(1.0)


@given(prob_matrices(), st.floats(0.2, 5.0))
def test_temperature_keeps_the_argmax_and_softens_as_it_grows(p: np.ndarray, t: float) -> None:
    q = calibrate(p, t)
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-6)
    decisive = np.sort(p, axis=1)[:, -1] - np.sort(p, axis=1)[:, -2] > 1e-6
    assert np.array_equal(q.argmax(1)[decisive], p.argmax(1)[decisive])
    assert np.all(entropy(calibrate(p, t * 2)) >= entropy(q) - 1e-9)
    with pytest.raises(ValueError, match="temperature"):
        calibrate(p, 0.0)


@settings(deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 25))
def test_k_center_greedy_picks_distinct_points_ever_closer_to_the_chosen(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    x[5] = x[4]  # duplicates must not be picked twice
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    picks = k_center_greedy(x, k)
    assert len(picks) == len(set(picks.tolist())) == min(k, 40)
    gaps = [np.min(2 - 2 * x[picks[:i]] @ x[picks[i]]) for i in range(1, len(picks))]
    assert all(a >= b - 1e-5 for a, b in zip(gaps, gaps[1:]))  # the greedy radius never grows


def _pool(n: int = 300, k: int = 4, d: int = 16, seed: int = 0) -> tuple[Pool, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 3
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return Pool(p, rng.normal(size=(n, d)).astype(np.float32)), p


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_returns_distinct_pool_indices(name: str) -> None:
    pool, _ = _pool()
    covered = EmbeddingIndex(16)
    covered.add(covered.prepare(np.random.default_rng(9).normal(size=(20, 16))), [f"c{i}" for i in range(20)])
    for ctx in (Context(), Context(covered=covered)):
        sel = select_batch(pool, 25, ctx, name)
        assert 0 < len(sel.indices) <= 25 and len(set(sel.indices.tolist())) == len(sel.indices)
        assert sel.indices.max() < len(pool) and np.all((sel.priorities >= 0) & (sel.priorities <= 1))


def test_uncertainty_strategies_prefer_uncertain_candidates() -> None:
    pool, p = _pool()
    chosen = select_batch(pool, 20, Context(), "margin", class_quota=0.0).indices
    assert margin(p[chosen]).min() >= np.sort(margin(p))[-20] - 1e-12


def test_non_finite_probabilities_are_never_chosen() -> None:
    pool, p = _pool()
    p = p.copy()
    p[:10] = np.nan
    chosen = select_batch(Pool(p, pool.embeddings), 50, Context(), "margin").indices
    assert not set(chosen.tolist()) & set(range(10))


def test_exact_and_near_duplicates_are_suppressed() -> None:
    pool, p = _pool(n=60)
    emb = pool.embeddings.copy()
    emb[1] = emb[0]  # same picture, re-encoded: a near duplicate under another hash
    hashes = [f"h{i}" for i in range(60)]
    hashes[3] = hashes[2]  # the same bytes twice
    p = np.full_like(p, 1 / p.shape[1])  # all equally uncertain: only duplicates decide
    sel = select_batch(
        Pool(p, emb),
        60,
        Context(),
        "margin",
        hashes=hashes,
        covered_hashes=frozenset({"h7"}),
        class_quota=0.0,
    )
    chosen = set(sel.indices.tolist())
    assert 7 not in chosen and not {0, 1} <= chosen and not {2, 3} <= chosen
    assert sel.exact_duplicates == 2 and sel.near_duplicates == 1 and len(chosen) == 57


def test_near_duplicates_of_covered_embeddings_are_suppressed() -> None:
    pool, _ = _pool(n=50)
    covered = EmbeddingIndex(16)
    covered.add(pool.embeddings[:5], [f"c{i}" for i in range(5)])
    chosen = select_batch(pool, 50, Context(covered=covered), "random").indices
    assert not set(chosen.tolist()) & set(range(5))


def test_class_quotas_keep_a_rare_predicted_class_in_the_batch() -> None:
    rng = np.random.default_rng(1)
    n = 400
    p = np.tile([0.45, 0.45, 0.10], (n, 1)) + rng.uniform(0, 0.02, (n, 3))
    p[:8] = [0.05, 0.05, 0.90]  # 8 confident predictions of the rare class
    p /= p.sum(axis=1, keepdims=True)
    pool = Pool(p, rng.normal(size=(n, 8)).astype(np.float32))
    without = select_batch(pool, 30, Context(), "margin", class_quota=0.0).indices
    with_quota = select_batch(pool, 30, Context(), "margin", class_quota=0.3).indices
    assert (pool.predicted[without] == 2).sum() == 0
    assert (pool.predicted[with_quota] == 2).sum() == 3  # 30 · 0.3 / 3 classes


def test_unknown_strategy_and_bad_arguments_say_what_to_do() -> None:
    pool, _ = _pool(n=10)
    with pytest.raises(ValueError, match="choose one of"):
        strategy("best")
    with pytest.raises(ValueError, match="class_quota"):
        select_batch(pool, 3, class_quota=2.0)
    with pytest.raises(ValueError, match="hashes"):
        select_batch(pool, 3, hashes=["a"])
    with pytest.raises(ValueError, match="same n"):
        Pool(np.ones((3, 2)) / 2, np.ones((4, 5)))
