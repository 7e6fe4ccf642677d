"""Two-sample tests the monitors share: vectorised K-S, chi-square, Fisher's tail test, k-NN
novelty, Hotelling's mean shift (overall and within class), Evidently's mean distance."""

from __future__ import annotations

import numpy as np
from evidently.legacy.metrics.data_drift.embedding_drift_methods import N_BOOTSTRAP
from scipy.special import chdtrc, kolmogorov
from scipy.stats import f as f_dist
from scipy.stats import fisher_exact


def ks_columns(ref_sorted: np.ndarray, cur: np.ndarray, alternative: str = "two-sided") -> np.ndarray:
    """Asymptotic two-sample K-S p-values of every column at once (ref: (m, J) sorted per column).

    The test of Evidently's ``ks`` (scipy's ``ks_2samp``) in its asymptotic form, vectorised:
    through Evidently each column costs about a millisecond of pandas and scipy wrapping, which
    at 30 columns an evaluation is more than the monitors' whole CPU budget. ``greater``: the
    window's values are larger than the reference's (one-sided).
    """
    ref_sorted, cur = (
        np.atleast_2d(ref_sorted.T).T,
        np.sort(np.atleast_2d(np.asarray(cur, np.float64).T).T, axis=0),
    )
    m, n = len(ref_sorted), len(cur)
    d = np.empty(ref_sorted.shape[1])
    for j in range(ref_sorted.shape[1]):
        pooled = np.concatenate([ref_sorted[:, j], cur[:, j]])
        f_ref = np.searchsorted(ref_sorted[:, j], pooled, side="right") / m
        f_cur = np.searchsorted(cur[:, j], pooled, side="right") / n
        d[j] = (f_ref - f_cur).max() if alternative == "greater" else np.abs(f_ref - f_cur).max()
    en = m * n / (m + n)
    if alternative == "greater":
        return np.clip(np.exp(-2.0 * en * d * d), 0.0, 1.0)
    # Kolmogorov's limit with Stephens' small-sample correction (scipy's exact-n form costs ~1 ms)
    return np.clip(kolmogorov((np.sqrt(en) + 0.12 + 0.11 / np.sqrt(en)) * d), 0.0, 1.0)


def ks(ref: np.ndarray, cur: np.ndarray) -> float:
    return float(ks_columns(np.sort(np.asarray(ref, np.float64)), cur)[0])


def chi2(ref: np.ndarray, cur: np.ndarray) -> float:
    """Two-sample chi-square test of two samples of class indices (a contingency table).

    Not Evidently's ``chisquare``: that is a goodness-of-fit test taking the reference's shares as
    exact, which with a reference of a few dozen images raises false alarms on unshifted traffic
    (docs/drift.md). scipy's ``chi2_contingency`` without Yates' correction, computed directly
    (its wrapping costs a millisecond an evaluation).
    """
    ref, cur = np.asarray(ref, np.int64), np.asarray(cur, np.int64)
    k = int(max(ref.max(initial=0), cur.max(initial=0))) + 1
    table = np.vstack([np.bincount(ref, minlength=k), np.bincount(cur, minlength=k)]).astype(np.float64)
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2 or (table.sum(1) == 0).any():
        return 1.0
    expected = np.outer(table.sum(1), table.sum(0)) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    return float(chdtrc(table.shape[1] - 1, statistic))


def tail(null_exceeds: np.ndarray, cur_exceeds: np.ndarray) -> float:
    """One-sided Fisher's exact test: do more of the window's rows lie beyond the threshold than the
    null's? (scipy's: Evidently's Fisher test is two-sided and wants samples of equal size.)"""
    a, b = int(cur_exceeds.sum()), int(null_exceeds.sum())
    table = [[a, len(cur_exceeds) - a], [b, len(null_exceeds) - b]]
    return float(fisher_exact(table, alternative="greater").pvalue)


class Novelty:
    """How unlike the reference each row is: mean distance to its ``k`` nearest reference rows.

    The reference is split in two halves by row parity: the first is the neighbour set, the
    second gives the null distribution of scores (its rows scored against the first), so a window
    of rows like the reference's is exchangeable with it and the tests are exact. Features are
    centred on the medians and scaled by the interquartile ranges of the neighbour half.
    """

    def __init__(self, reference: np.ndarray, k: int = 5, tail_quantile: float = 0.95) -> None:
        ref = np.asarray(reference, np.float64)
        base, held = ref[0::2], ref[1::2]
        self.center = np.median(base, axis=0)
        iqr = np.subtract(*np.percentile(base, [75, 25], axis=0))
        self.scale = np.where(iqr > 1e-12, iqr, 1.0)
        self.base, self.k = (base - self.center) / self.scale, min(k, len(base))
        self.null = self.scores(held)
        self.null_sorted = np.sort(self.null)[:, None]
        self.threshold = float(np.quantile(self.null, tail_quantile))

    def scores(self, rows: np.ndarray) -> np.ndarray:
        x = (np.asarray(rows, np.float64) - self.center) / self.scale
        d2 = (x * x).sum(1)[:, None] - 2 * x @ self.base.T + (self.base * self.base).sum(1)[None, :]
        nearest = np.partition(np.maximum(d2, 0.0), self.k - 1, axis=1)[:, : self.k]
        return np.sqrt(nearest).mean(1)

    def p_values(self, rows: np.ndarray) -> dict[str, float]:
        """``novelty_ks``: the window's scores against the null's (two-sided K-S); ``novelty_tail``: more
        rows beyond the null's 95th percentile than 5% (Fisher's exact test)."""
        s = self.scores(rows)
        # two-sided: a shift can also pull images together (darker, flatter images embed closer)
        return {
            "novelty_ks": float(ks_columns(self.null_sorted, s[:, None])[0]),
            "novelty_tail": tail(self.null > self.threshold, s > self.threshold),
        }


class MeanShift:
    """Hotelling's two-sample test of a window's mean against reference rows.

    Columns are standardised, then whitened along the reference's non-degenerate directions:
    statistics that move together (a darker image is also flatter and less noisy) add their
    evidence, and duplicated or constant columns (R, G and B of grey images) cost no degrees of
    freedom. A mixture moves the mean in proportion to its share, which this sees before any
    single column's distribution or any tail does.
    """

    def __init__(self, reference: np.ndarray) -> None:
        ref = np.asarray(reference, np.float64)
        self.m, self.mean = len(ref), ref.mean(0)
        sd = ref.std(0)
        scale = np.where(sd > 1e-12, sd, 1.0)
        eigval, eigvec = np.linalg.eigh(np.atleast_2d(np.cov(ref / scale, rowvar=False)))
        keep = eigval > max(float(eigval.max(initial=0.0)), 1e-12) * 1e-6
        self.whiten = (eigvec[:, keep] / np.sqrt(eigval[keep])) / scale[:, None]  # (J, k)
        self.k = int(keep.sum())

    def p_value(self, rows: np.ndarray) -> float:
        """The p-value of "the window's mean is the reference's" (1.0 where it cannot be tested)."""
        m, n, k = self.m, len(rows), self.k
        if k == 0 or m <= k + 1 or n == 0:
            return 1.0
        z = (np.asarray(rows, np.float64).mean(0) - self.mean) @ self.whiten
        t2 = float(z @ z) / (1.0 / n + 1.0 / m)
        # Hotelling's T² with the covariance estimated from m rows: an F law, not chi-square
        return float(f_dist.sf(t2 * (m - k) / (k * (m - 1)), k, m - k))


class SubspaceShift:
    """Hotelling's mean-shift test of high-dimensional rows on the reference's top principal components.

    The centre and components come from the reference's even rows, the test's covariance and mean
    from its odd rows projected on them, so the null never sees the rows that chose its axes.
    At most one component per ten fitting rows, or the covariance would be singular.
    """

    def __init__(self, reference: np.ndarray, components: int) -> None:
        ref = np.asarray(reference, np.float64)
        fit = ref[0::2]
        self.mean = fit.mean(0)
        _, _, vt = np.linalg.svd(fit - self.mean, full_matrices=False)
        self.basis = vt[: max(1, min(components, len(vt), len(fit) // 10))].T  # (D, k)
        self.held = self.project(ref[1::2])
        self.shift = MeanShift(self.held)

    def project(self, rows: np.ndarray) -> np.ndarray:
        return (np.asarray(rows, np.float64) - self.mean) @ self.basis

    def p_value(self, rows: np.ndarray) -> float:
        return self.shift.p_value(self.project(rows))


class WithinClass:
    """Image statistics standardised within the class the model predicted, then tested for a mean shift.

    Steel classes differ in brightness and contrast far more than a changed lamp moves one image,
    so across classes a darker, flatter fifth of the traffic hides in the spread; within a class it
    stands out (docs/drift.md). Per-class means and spreads come from one half of the
    reference (classes with fewer than ``min_rows`` rows there use the whole half's), the null from
    the other half standardised the same way, so the test stays exact under unshifted traffic,
    whatever the class mix.
    """

    def __init__(self, reference: np.ndarray, predicted: np.ndarray, classes: int, min_rows: int = 8) -> None:
        ref, predicted = np.asarray(reference, np.float64), np.asarray(predicted, np.int64)
        base, base_pred = ref[0::2], predicted[0::2]
        # one row per class, then the whole half's row (for small classes and unknown indices)
        self.means = np.tile(base.mean(0), (classes + 1, 1))
        sds = np.tile(base.std(0), (classes + 1, 1))
        for c in range(classes):
            members = base[base_pred == c]
            if len(members) >= min_rows:
                self.means[c], sds[c] = members.mean(0), members.std(0)
        self.sds = np.where(sds > 1e-12, sds, 1.0)
        self.shift = MeanShift(self.residuals(ref[1::2], predicted[1::2]))

    def residuals(self, rows: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Each row minus its predicted class's mean, over its spread (a class index beyond the
        reference's: the whole half's)."""
        predicted, overall = np.asarray(predicted, np.int64), len(self.means) - 1
        idx = np.where((predicted >= 0) & (predicted < overall), predicted, overall)
        return (np.asarray(rows, np.float64) - self.means[idx]) / self.sds[idx]

    def p_value(self, rows: np.ndarray, predicted: np.ndarray) -> float:
        return self.shift.p_value(self.residuals(rows, predicted))


def bonferroni(p_values: dict[str, float]) -> float:
    """The smallest p-value times the number of tests (capped at 1): one family, one alpha."""
    return min(1.0, min(p_values.values()) * len(p_values)) if p_values else 1.0


def macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Mean F1 over the classes present in either array (0.0 when both are empty)."""
    f1 = []
    for k in np.union1d(truth, predicted):
        tp = int(((predicted == k) & (truth == k)).sum())
        wrong = int(((predicted == k) & (truth != k)).sum()) + int(((predicted != k) & (truth == k)).sum())
        f1.append(2 * tp / (2 * tp + wrong))
    return float(np.mean(f1)) if f1 else 0.0


class MeanDistance:
    """Evidently's ``distance`` embedding method, its bootstrap drawn once per window size.

    Evidently measures the Euclidean distance between the reference's and the window's mean
    embeddings and calls drift when it exceeds the ``quantile`` of 100 seeded bootstrap distances
    between resamples of the reference. That null depends only on the reference and the window's
    size, yet Evidently redraws it on every call; here it is drawn with the same seeds and sizes
    once per size, so the decisions are Evidently's (a unit test checks them against it) at a
    fraction of the cost. The p-value is
    the share of bootstrap distances at least as large as the window's (plus one, over 101).
    """

    def __init__(self, reference: np.ndarray, quantile: float, cache_sizes: int = 256) -> None:
        self.reference = np.asarray(reference, np.float64)
        self.mean, self.quantile, self.cache_sizes = self.reference.mean(0), quantile, cache_sizes
        self._null: dict[int, np.ndarray] = {}

    def null(self, n: int) -> np.ndarray:
        """The bootstrap distances for windows of ``n`` rows (Evidently's draws: the same seeds and sizes)."""
        if n not in self._null:
            m = len(self.reference)
            b_ref, b_cur = int(m * m / (m + n)), int(n * m / (m + n))
            weights, rs = np.empty((N_BOOTSTRAP, m)), np.random.RandomState()
            for i in range(N_BOOTSTRAP):
                rs.seed(i)  # the stream of Evidently's np.random.seed(i), without touching the global one
                a, b = rs.choice(m, b_ref), rs.choice(m, b_cur)
                # mean of the resample a minus mean of the resample b, as weights on the reference's rows
                weights[i] = np.bincount(a, minlength=m) / max(1, b_ref) - np.bincount(b, minlength=m) / max(
                    1, b_cur
                )
            if len(self._null) >= self.cache_sizes:  # time windows vary in size: keep the cache bounded
                self._null.pop(next(iter(self._null)))
            self._null[n] = np.linalg.norm(weights @ self.reference, axis=1)
        return self._null[n]

    def __call__(self, rows: np.ndarray) -> tuple[float, bool, float, float]:
        """(distance, drifted, p-value, threshold) of one window."""
        distance = float(np.linalg.norm(np.asarray(rows, np.float64).mean(0) - self.mean))
        null = self.null(len(rows))
        threshold = float(np.percentile(null, 100 * self.quantile))
        return (
            distance,
            distance > threshold,
            float((1 + (null >= distance).sum()) / (1 + len(null))),
            threshold,
        )
