"""The ``embedding`` monitor: pre-logits features on the reference's principal components, tested
by default with Evidently's ``distance`` method (its bootstrap drawn once per window size), or with
Evidently's ``mmd`` or ``model``, or the way the image statistics are (``novelty``)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
from evidently.legacy.metrics.data_drift.embedding_drift_methods import MMDDriftMethod, ModelDriftMethod

from monitoring.drift import monitor as plugin
from monitoring.drift.twosample import MeanDistance, MeanShift, Novelty, bonferroni, ks_columns
from nicheloop.reference import Reference
from nicheloop.settings import EmbeddingMethod


@plugin.register_monitor
class EmbeddingDrift:
    """Embedding drift against one reference: its principal components are fitted once.

    ``distance`` (the default) is Evidently's distance between mean embeddings
    (:class:`MeanDistance`); ``mmd`` and ``model`` are Evidently's other embedding methods, run on
    the projected window and reference; all three decide at their bootstrap's ``1 - alpha``
    quantile. ``novelty`` tests the k-NN novelty of each row in the (robustly scaled) components,
    each component (K-S) and their mean (Hotelling), Bonferroni-combined.
    """

    name: ClassVar[str] = "embedding"
    feeds: ClassVar[plugin.Feed] = "inputs"

    def __init__(
        self,
        reference: np.ndarray,
        method: EmbeddingMethod = "distance",
        *,
        components: int = 16,
        alpha: float = 0.01,
        min_samples: int = 30,
    ) -> None:
        ref = np.asarray(reference, np.float64)
        self.method, self.alpha, self.min_samples = method, alpha, min_samples
        self.dim = ref.shape[1] if ref.ndim == 2 else 0
        self.ready = ref.ndim == 2 and len(ref) >= plugin.MIN_REFERENCE
        if not self.ready:
            return
        fit = ref[0::2]  # the components come from Novelty's neighbour half: the other half stays unseen
        self.mean = fit.mean(0)
        _, _, vt = np.linalg.svd(fit - self.mean, full_matrices=False)
        # a handful of reference rows per component, or the held-out covariance is singular
        self.basis = vt[: max(1, min(components, len(vt), len(fit) // 10))].T  # (D, k)
        self.reference = self.project(ref)
        held = self.project(ref[1::2])
        self.held_out = np.sort(held, axis=0)
        self.held_shift = MeanShift(held)
        self.novelty = Novelty(self.features(ref)) if method == "novelty" else None
        self.distance = MeanDistance(self.reference, 1 - alpha) if method == "distance" else None
        self._evidently = {
            "mmd": MMDDriftMethod(bootstrap=True, quantile_probability=1 - alpha),
            "model": ModelDriftMethod(bootstrap=True, quantile_probability=1 - alpha),
        }.get(method)

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        return (np.asarray(embeddings, np.float64) - self.mean) @ self.basis

    def features(self, embeddings: np.ndarray) -> np.ndarray:
        """The components and the distance off their subspace (what the reference never varied in)."""
        centred = np.asarray(embeddings, np.float64) - self.mean
        proj = centred @ self.basis
        residual = np.linalg.norm(centred - proj @ self.basis.T, axis=1, keepdims=True)
        return np.hstack([proj, residual])

    def __call__(self, embeddings: np.ndarray) -> plugin.MonitorResult:
        cur = np.asarray(embeddings, np.float64)
        if not self.ready or len(cur) < self.min_samples or cur.ndim != 2 or cur.shape[1] != self.dim:
            return plugin.MonitorResult.insufficient("embedding", len(cur))
        proj = self.project(cur)
        if self.novelty is not None:
            components = dict(
                zip((f"pc{j}" for j in range(proj.shape[1])), map(float, ks_columns(self.held_out, proj)))
            )
            p = self.novelty.p_values(self.features(cur)) | {
                "components": bonferroni(components),
                "mean_shift": self.held_shift.p_value(proj),
            }
            return plugin.MonitorResult.combined("embedding", len(cur), p, self.alpha)
        if self.distance is not None:
            distance, drifted, p_value, threshold = self.distance(proj)
            return plugin.MonitorResult(
                "embedding",
                "ok",
                len(cur),
                drifted,
                p_value,
                distance,
                {"distance": distance, "threshold": threshold},
            )
        if self._evidently is None:
            raise ValueError(f"unknown embedding drift method {self.method!r}; use one of {EmbeddingMethod}")
        cols = [f"pc{j}" for j in range(proj.shape[1])]
        score, drifted, _ = self._evidently(
            pd.DataFrame(proj, columns=cols), pd.DataFrame(self.reference, columns=cols)
        )
        return plugin.MonitorResult("embedding", "ok", len(cur), bool(drifted), None, float(score))

    @classmethod
    def for_reference(cls, reference: Reference, config: plugin.MonitorConfig) -> EmbeddingDrift:
        return cls(
            reference.embeddings, config.embedding_method, alpha=config.alpha, min_samples=config.min_samples
        )

    def evaluate(self, window: plugin.Inputs | plugin.Outcomes) -> plugin.MonitorResult:
        return self(plugin.inputs_of(window, self.name).embeddings)
